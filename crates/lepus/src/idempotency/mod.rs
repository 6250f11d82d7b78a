//! Remembering which messages were already handled, so a redelivery is skipped.
//!
//! At-least-once delivery means duplicates: a publisher republishes after a lost confirm,
//! a broker redelivers after a lost ack. A store keyed by `message_id` turns those into
//! no-ops. Entries expire, so the store stays bounded.
//!
//! A store may block (a file, a database across the network). The consumer asks
//! [`IdempotencyStore::is_blocking`] and makes such a store's calls on tokio's blocking
//! pool, never on the task that receives deliveries, so a slow disk or a locked database
//! delays the messages that wait on it, not the consumer's acks and heartbeats.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Result;

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Where handled message ids are kept.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `id` was recorded and has not expired.
    fn contains(&self, id: &str) -> Result<bool>;
    /// Records `id` as handled.
    fn insert(&self, id: &str) -> Result<()>;
    /// Whether calls may block the thread (disk or network I/O). The consumer runs the
    /// calls of a blocking store with `tokio::task::spawn_blocking`. Default: false.
    fn is_blocking(&self) -> bool {
        false
    }
}

/// Entries kept by default in [`MemoryStore`].
pub const DEFAULT_MEMORY_CAPACITY: usize = 100_000;
/// How long an id is remembered by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A bounded in-memory store: at most `capacity` ids, each for at most `ttl`; the oldest
/// go first. Lost on restart (the `sqlite` feature's `SqliteStore` survives one).
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Memory {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MEMORY_CAPACITY, DEFAULT_TTL)
    }
}

impl MemoryStore {
    /// A store of at most `capacity` ids, each remembered for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Memory::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IdempotencyStore for MemoryStore {
    fn contains(&self, id: &str) -> Result<bool> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(m.seen.get(id).is_some_and(|at| at.elapsed() < self.ttl))
    }

    fn insert(&self, id: &str) -> Result<()> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some((at, old)) = m.order.front() {
            let expired = at.elapsed() >= self.ttl;
            if !expired && m.seen.len() < self.capacity {
                break;
            }
            // Only drop the map entry if it was not refreshed since.
            if m.seen.get(old.as_str()) == Some(at) {
                let old = old.clone();
                m.seen.remove(&old);
            }
            m.order.pop_front();
        }
        m.seen.insert(id.to_owned(), now);
        m.order.push_back((now, id.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_is_bounded_and_expires() {
        let store = MemoryStore::new(3, Duration::from_secs(3600));
        for id in ["a", "b", "c", "d"] {
            store.insert(id).unwrap();
        }
        assert_eq!(store.len(), 3);
        assert!(!store.contains("a").unwrap());
        assert!(store.contains("d").unwrap());
        let short = MemoryStore::new(10, Duration::ZERO);
        short.insert("x").unwrap();
        assert!(!short.contains("x").unwrap());
    }
}
