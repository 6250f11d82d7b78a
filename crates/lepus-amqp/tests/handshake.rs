//! How handshake failures are classified, against a real node: what retrying can fix
//! (a cut socket, a connection limit) must say `is_recoverable`, what it cannot (a wrong
//! password, a vhost the user may not open) must not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use lepus_amqp::*;
use lepus_testkit::{Broker, blocking, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_are_recoverable_and_wrong_passwords_are_not() {
    let broker = std::sync::Arc::new(blocking(|| Broker::start().unwrap()).await);
    let vhost = unique_name("limited");
    let user = unique_name("capped");
    let b = broker.clone();
    let (v, u) = (vhost.clone(), user.clone());
    blocking(move || {
        b.rabbitmqctl(&["add_vhost", &v]).unwrap();
        b.rabbitmqctl(&["set_permissions", "-p", &v, "guest", ".*", ".*", ".*"])
            .unwrap();
        b.rabbitmqctl(&["set_vhost_limits", "-p", &v, r#"{"max-connections": 0}"#])
            .unwrap();
        b.rabbitmqctl(&["add_user", &u, "pw"]).unwrap();
        b.rabbitmqctl(&["set_permissions", "-p", "/", &u, ".*", ".*", ".*"])
            .unwrap();
        b.rabbitmqctl(&["set_user_limits", &u, r#"{"max-connections": 0}"#])
            .unwrap();
    })
    .await;
    let base = ConnectionOptions::from_uri(&broker.url()).unwrap();

    let err = Connection::connect(base.clone().with_vhost(vhost.as_str()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLimit, "{err:?}");
    assert_eq!(err.reply_code(), Some(530));
    assert!(err.is_connection_limit() && err.is_recoverable(), "{err:?}");
    assert!(
        !err.is_access_refused() && !err.is_auth_failure(),
        "{err:?}"
    );

    let err = Connection::connect(base.clone().credentials(user.as_str(), "pw"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLimit, "{err:?}");
    assert!(err.is_recoverable() && !err.is_access_refused(), "{err:?}");

    // The limit clears: the same options now connect.
    let (b, v) = (broker.clone(), vhost.clone());
    blocking(move || {
        b.rabbitmqctl(&["clear_vhost_limits", "-p", &v]).unwrap();
    })
    .await;
    let conn = Connection::connect(base.clone().with_vhost(vhost.as_str()))
        .await
        .unwrap();
    conn.close().await.unwrap();

    // What retrying cannot fix stays permanent.
    let err = Connection::connect(base.clone().credentials("guest", "wrong"))
        .await
        .unwrap_err();
    assert!(err.is_auth_failure() && !err.is_recoverable(), "{err:?}");
    assert_eq!(err.reply_code(), Some(403), "{err:?}");
    let err = Connection::connect(base.clone().with_vhost("no-such-vhost"))
        .await
        .unwrap_err();
    assert!(err.is_access_refused() && !err.is_recoverable(), "{err:?}");
    assert!(!err.is_connection_limit());
}

/// Relays one connection to `upstream`, but hangs up as soon as the broker sends anything
/// after its first frame (`connection.start`): the client has sent start-ok and waits for
/// `connection.tune`, and sees the socket end instead.
async fn cut_after_start(listener: TcpListener, upstream: String) {
    let (mut client, _) = listener.accept().await.unwrap();
    let mut broker = TcpStream::connect(upstream).await.unwrap();
    let (mut from_broker, mut to_broker) = broker.split();
    let (mut from_client, mut to_client) = client.split();
    let upload = tokio::io::copy(&mut from_client, &mut to_broker);
    let download = async {
        let mut frame = vec![0u8; 7];
        from_broker.read_exact(&mut frame).await.unwrap();
        let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; size + 1];
        from_broker.read_exact(&mut rest).await.unwrap();
        frame.extend_from_slice(&rest);
        to_client.write_all(&frame).await.unwrap();
        // connection.tune (or anything else) arrives: cut both sides.
        let mut more = [0u8; 1];
        let _ = from_broker.read(&mut more).await;
    };
    tokio::select! {
        _ = upload => {}
        () = download => {}
    }
}

#[tokio::test]
async fn a_socket_cut_after_login_is_recoverable_not_an_auth_failure() {
    let broker = lepus_testkit::shared_broker().unwrap();
    let opts = ConnectionOptions::from_uri(broker.url()).unwrap();
    let upstream = opts.address();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = tokio::spawn(cut_after_start(listener, upstream));
    let through = ConnectionOptions::new("127.0.0.1", port)
        .with_vhost(opts.vhost())
        .connection_timeout(Duration::from_secs(10));
    let err = Connection::connect(through).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
    assert!(err.is_recoverable(), "{err:?}");
    assert!(
        !err.is_auth_failure() && !err.is_access_refused(),
        "{err:?}"
    );
    proxy.await.unwrap();
}
