//! Helpers shared by lepus's integration tests. Each test binary uses some of them.

#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lepus::{Client, ReconnectPolicy, Topology};

pub(crate) use lepus_testkit::blocking;

/// A client of `url` that declares `topology` and reconnects quickly (50 ms to 500 ms).
pub(crate) fn client(url: &str, topology: Topology) -> Client {
    Client::builder()
        .endpoint(url)
        .unwrap()
        .reconnect(
            ReconnectPolicy::default()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        )
        .topology(topology)
        .build()
        .unwrap()
}

/// Waits until `f` (a plain condition) holds, failing the test with `what` after
/// `timeout`: [`lepus_testkit::wait_until`] for conditions that need no `.await`.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    lepus_testkit::wait_until(what, timeout, async || f()).await;
}

/// A log writer that keeps what it is given.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
