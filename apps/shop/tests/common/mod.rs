//! Helpers shared by the shop's integration tests. Each test binary uses some of them.

#![allow(dead_code, unused_imports)]

pub use lepus_testkit::{blocking, wait_until};

/// The address a test's HTTP endpoint listens on: port 0, so the kernel picks a free
/// one and the service reports which.
pub fn any_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A PostgreSQL cluster of its own (under target/tmp), with the services' databases;
/// stopped when the returned values drop.
pub async fn postgres() -> (shop::db::pg_server::PgServer, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let path = dir.path().to_path_buf();
    let server = blocking(move || shop::db::pg_server::PgServer::start(&path, &[], 0))
        .await
        .expect("starting PostgreSQL (scripts/install-postgres installs it)");
    (server, dir)
}
