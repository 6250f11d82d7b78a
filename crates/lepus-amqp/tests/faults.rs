//! Faults only a node of our own can produce: a frozen broker (missed heartbeats), a
//! memory alarm (connection.blocked), and TLS with and without client certificates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use lepus_amqp::*;
use lepus_testkit::{Broker, blocking, shared_tls_broker, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_is_detected_by_missed_heartbeats() {
    let broker = std::sync::Arc::new(blocking(|| Broker::start().unwrap()).await);
    let opts = ConnectionOptions::from_uri(&broker.url())
        .unwrap()
        .heartbeat(1);
    let conn = Connection::connect(opts).await.unwrap();
    assert_eq!(conn.negotiated().heartbeat, 1);
    // Idle but healthy: heartbeats keep it open well past two intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(conn.is_open());
    let b = broker.clone();
    blocking(move || b.pause().unwrap()).await;
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    let b = broker.clone();
    blocking(move || b.resume().unwrap()).await;
    let reason = reason.expect("the connection noticed the silence");
    assert_eq!(reason.kind(), ErrorKind::MissedHeartbeat, "{reason:?}");
    assert!(reason.is_recoverable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_blocked_on_a_frozen_broker_ends_with_its_connection() {
    let broker = std::sync::Arc::new(blocking(|| Broker::start().unwrap()).await);
    let opts = ConnectionOptions::from_uri(&broker.url())
        .unwrap()
        .heartbeat(1)
        .operation_timeout(Duration::from_secs(60));
    let conn = Connection::connect(opts).await.unwrap();
    assert_eq!(conn.io_tasks_alive(), 2);
    // A second connection with the broker's long heartbeat (60 s), dropped while the node is
    // frozen: nothing notices the silence within the test, so the close deadline has to
    // end it.
    let quiet = Connection::connect(
        ConnectionOptions::from_uri(&broker.url())
            .unwrap()
            .heartbeat(600)
            .operation_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert!(quiet.negotiated().heartbeat >= 30);
    let quiet_tasks = quiet.io_task_counter();
    let ch = conn.open_channel().await.unwrap();
    let q = unique_name("frozen");
    ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let b = broker.clone();
    blocking(move || b.pause().unwrap()).await;
    drop(quiet);
    // Publish until the socket buffers on both sides are full and the writer is stuck in
    // a write the frozen node will never read; the publisher then waits for buffer space.
    let publisher = tokio::spawn({
        let ch = ch.clone();
        async move {
            let body = vec![0u8; 256 * 1024];
            let mut sent = 0usize;
            loop {
                let props = BasicProperties::default();
                match ch
                    .basic_publish("", &q, PublishOptions::default(), &props, &body)
                    .await
                {
                    Ok(_) => sent += body.len(),
                    Err(err) => return (sent, err),
                }
            }
        }
    });
    let reason = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
    // Everything that was waiting learns the connection is gone...
    let published = tokio::time::timeout(Duration::from_secs(5), publisher).await;
    // ...and the socket tasks end although the node still does not read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.io_tasks_alive() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive = conn.io_tasks_alive();
    while quiet_tasks.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quiet_alive = quiet_tasks.load(Ordering::Acquire);
    let b = broker.clone();
    blocking(move || b.resume().unwrap()).await;
    assert_eq!(
        quiet_alive, 0,
        "a dropped connection's tasks outlived the close deadline"
    );
    let reason = reason.expect("the silence was noticed");
    assert_eq!(reason.kind(), ErrorKind::MissedHeartbeat, "{reason:?}");
    let (sent, err) = published
        .expect("the waiting publisher was released")
        .unwrap();
    // The publisher filled the whole write buffer: the writer had stopped draining it.
    assert!(
        sent >= DEFAULT_WRITE_BUFFER,
        "only {sent} bytes queued: the writer never blocked"
    );
    assert!(err.is_closed(), "{err:?}");
    assert_eq!(
        alive, 0,
        "socket tasks still running after the connection died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_and_unblocks_the_connection() {
    let broker = std::sync::Arc::new(blocking(|| Broker::start().unwrap()).await);
    let conn = Connection::open(&broker.url()).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let q = unique_name("blocked");
    ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let mut blocked = conn.blocked();
    let b = broker.clone();
    blocking(move || {
        b.rabbitmqctl(&["set_vm_memory_high_watermark", "0"])
            .unwrap()
    })
    .await;
    // The broker blocks a connection once it publishes during the alarm.
    let confirm = ch
        .basic_publish(
            "",
            &q,
            PublishOptions::default(),
            &BasicProperties::default(),
            b"held",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), blocked.wait_for(|b| b.is_some()))
        .await
        .expect("connection.blocked arrived")
        .unwrap();
    assert!(
        blocked
            .borrow()
            .as_deref()
            .unwrap_or_default()
            .contains("memory")
    );
    let b = broker.clone();
    blocking(move || {
        b.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
            .unwrap()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(15), blocked.wait_for(|b| b.is_none()))
        .await
        .expect("connection.unblocked arrived")
        .unwrap();
    assert!(
        confirm
            .wait(Duration::from_secs(10))
            .await
            .unwrap()
            .is_ack()
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn tls_with_a_ca_file_and_plain_login() {
    let broker = blocking(|| shared_tls_broker().unwrap()).await;
    let files = broker.tls_files().unwrap();
    let opts = ConnectionOptions::from_uri(broker.amqps_url().unwrap())
        .unwrap()
        .tls(TlsOptions {
            ca_file: Some(files.ca()),
            ..TlsOptions::default()
        });
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = vec![42u8; 300_000];
    let c = ch
        .basic_publish(
            "",
            &q.name,
            PublishOptions::default(),
            &BasicProperties::default(),
            &body,
        )
        .await
        .unwrap();
    assert!(c.await.unwrap().is_ack());
    let got = ch.basic_get(&q.name).await.unwrap().unwrap();
    assert_eq!(got.delivery.body().len(), body.len());
    got.delivery.ack().unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_with_external_login() {
    let broker = blocking(|| shared_tls_broker().unwrap()).await;
    let files = broker.tls_files().unwrap();
    let url = broker.amqps_url().unwrap().replace("guest:guest@", "");
    let opts = ConnectionOptions::from_uri(&format!("{url}?auth_mechanism=external"))
        .unwrap()
        .tls(TlsOptions {
            ca_file: Some(files.ca()),
            cert_file: Some(files.client_cert()),
            key_file: Some(files.client_key()),
            server_name: Some("localhost".into()),
        });
    let conn = Connection::connect(opts).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_a_tls_error() {
    let broker = blocking(|| shared_tls_broker().unwrap()).await;
    // System roots do not include the test CA.
    let opts = ConnectionOptions::from_uri(broker.amqps_url().unwrap()).unwrap();
    let err = Connection::connect(opts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err:?}");
    assert_eq!(
        err.tls_failure(),
        Some(TlsFailure::UnknownIssuer),
        "{err:?}"
    );
    assert!(!err.is_recoverable());
}

#[tokio::test]
async fn external_login_without_a_certificate_is_a_config_error() {
    let opts =
        ConnectionOptions::from_uri("amqps://127.0.0.1:1/%2f?auth_mechanism=external").unwrap();
    let err = Connection::connect(opts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}
