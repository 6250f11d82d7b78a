//! What the CLI tests share: running the `lepus` binary with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a run of the binary produced.
pub(crate) struct Run {
    pub ok: bool,
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args`, feeding `stdin`, killing it past `timeout`.
pub(crate) fn lepus(args: &[&str], stdin: &[u8], timeout: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args(args)
        .env_remove("LEPUS_AMQP_URL")
        .env_remove("LEPUS_MANAGEMENT_URL")
        .env_remove("LEPUS_PROFILE")
        .env_remove("LEPUS_CONFIG")
        .env_remove("LEPUS_TLS_CA")
        .env_remove("LEPUS_TLS_CERT")
        .env_remove("LEPUS_TLS_KEY")
        .env_remove("LEPUS_TLS_SERVER_NAME")
        // A config file of the machine's user must not change what a test connects to.
        .env("XDG_CONFIG_HOME", "/nonexistent/lepus-test-config")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lepus");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lepus {args:?} did not finish within {timeout:?}; stderr:\n{}",
                err_reader.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    feeder.join().unwrap();
    Run {
        ok: status.success(),
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}
