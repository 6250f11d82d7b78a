//! Helpers shared by the shop's integration tests. Each test binary uses some of them.

#![allow(dead_code, unused_imports)]

pub(crate) use lepus_testkit::{blocking, wait_until};

/// The address a test's HTTP endpoint listens on: port 0, so the kernel picks a free
/// one and the service reports which.
pub(crate) fn any_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}
