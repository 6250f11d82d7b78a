//! Helpers shared by the shop's integration tests. Each test binary uses some of them.

#![allow(dead_code, unused_imports)]

pub use lepus_testkit::{blocking, wait_until};

/// The address a test's HTTP endpoint listens on: port 0, so the kernel picks a free
/// one and the service reports which.
pub fn any_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A PostgreSQL cluster of its own in a temporary directory under target/tmp. The
/// server is stopped before its directory is removed (fields drop in order).
pub struct TestPg {
    /// The server.
    pub server: shop::db::pg_server::PgServer,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestPg {
    type Target = shop::db::pg_server::PgServer;

    fn deref(&self) -> &Self::Target {
        &self.server
    }
}

/// Starts a [`TestPg`] with the services' databases.
pub async fn postgres() -> TestPg {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    let path = dir.path().to_path_buf();
    let server = blocking(move || shop::db::pg_server::PgServer::start(&path, &[], 0))
        .await
        .expect("starting PostgreSQL (scripts/install-postgres installs it)");
    TestPg { server, _dir: dir }
}
