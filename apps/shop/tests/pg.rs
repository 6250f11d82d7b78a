//! The project's own PostgreSQL cluster (shop::db::pg_server): started from Debian's
//! binaries under target/, one database per service, password on TCP, extra listen
//! addresses, data kept across a restart, stopped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr};

use shop::db::pg_server::{PgServer, SERVICE_DATABASES};

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn cluster_serves_each_service_database_and_keeps_data_across_a_restart() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let extra = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let server = {
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || PgServer::start(&path, &[extra], 0))
            .await
            .unwrap()
            .unwrap()
    };
    for db in SERVICE_DATABASES {
        let client = connect(&server.url(db)).await.unwrap();
        let name: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, db);
    }
    // Reachable on the extra address too, and only with the password.
    let client = connect(&server.url_on(extra, "order")).await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (v TEXT); INSERT INTO kept VALUES ('survives');")
        .await
        .unwrap();
    let wrong = format!("postgres://shop:wrong@127.0.0.1:{}/order", server.port());
    assert!(
        connect(&wrong).await.is_err(),
        "a wrong password was let in"
    );
    drop(client);

    let url = server.url("order");
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(connect(&url).await.is_err(), "still answering after stop");

    let server = {
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || PgServer::start(&path, &[], 0))
            .await
            .unwrap()
            .unwrap()
    };
    let client = connect(&server.url("order")).await.unwrap();
    let kept: String = client
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "survives");
    let port = server.port();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    let gone = format!("postgres://shop:x@127.0.0.1:{port}/order");
    assert!(connect(&gone).await.is_err(), "dropping did not stop it");
}
