//! Watch a supervised connection reconnect.
//!
//! ```text
//! scripts/broker start
//! cargo run -p lepus --example reconnect -- amqp://guest:guest@127.0.0.1:5672/%2f
//! # in another terminal: scripts/broker stop; scripts/broker start
//! ```
//!
//! Every state change is printed on its own line, starting with the state's name and a
//! UTC timestamp. Ctrl-C closes the client gracefully.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lepus::{Client, ConnectionState, ReconnectPolicy, Role};

fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        now.subsec_millis()
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        eprintln!("usage: reconnect AMQP_URL [AMQP_URL ...]");
        std::process::exit(2);
    }
    let mut builder = Client::builder()
        .name("reconnect-example")
        .reconnect(ReconnectPolicy::default().max_delay(Duration::from_secs(2)));
    for url in &urls {
        builder = builder.endpoint(url)?;
    }
    let client = builder.build()?;
    let mut states = client.watch_state(Role::Publish);
    loop {
        let state = states.borrow_and_update().clone();
        println!("{} {} {}", state.name(), timestamp(), detail(&state));
        if state.is_terminal() {
            break;
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { break },
            _ = tokio::signal::ctrl_c() => {
                client.close(Duration::from_secs(5)).await?;
                println!("Closed {}", timestamp());
                break;
            }
        }
    }
    Ok(())
}

fn detail(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Connected { host } => format!("host={host}"),
        ConnectionState::Reconnecting {
            attempt,
            last_error,
        } => format!("attempt={attempt} last_error=\"{last_error}\""),
        ConnectionState::Failed(err) => format!("error=\"{err}\""),
        _ => String::new(),
    }
}
