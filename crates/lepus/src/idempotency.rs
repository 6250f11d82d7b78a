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
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

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
/// go first. Lost on restart (use [`SqliteStore`] to survive one).
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

/// A store in a SQLite file: survives restarts. Expired ids are deleted as new ones come.
pub struct SqliteStore {
    conn: Mutex<rusqlite::Connection>,
    ttl: Duration,
    inserts: Mutex<u64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A failed SQL call: a storage error (a locked or busy database, a full disk, a
/// damaged file), not a mistake in the configuration.
fn sql(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Storage, format!("idempotency store: {e}"))
}

fn now_secs() -> i64 {
    crate::consumer::retry::now_ms() / 1000
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`; ids are remembered for `ttl`.
    pub fn open(path: impl AsRef<Path>, ttl: Duration) -> Result<Self> {
        let path = path.as_ref();
        // Failing to open the file at all is the caller's path being wrong.
        let conn = rusqlite::Connection::open(path).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("idempotency store {}: {e}", path.display()),
            )
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS lepus_handled (
                 id TEXT PRIMARY KEY,
                 handled_at INTEGER NOT NULL
             );",
        )
        .map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
            ttl,
            inserts: Mutex::new(0),
        })
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }
}

impl IdempotencyStore for SqliteStore {
    fn is_blocking(&self) -> bool {
        true
    }

    fn contains(&self, id: &str) -> Result<bool> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = now_secs().saturating_sub(self.ttl_secs());
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM lepus_handled WHERE id = ?1 AND handled_at >= ?2")
            .map_err(sql)?;
        stmt.exists(rusqlite::params![id, oldest]).map_err(sql)
    }

    fn insert(&self, id: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached(
            "INSERT INTO lepus_handled (id, handled_at) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET handled_at = excluded.handled_at",
        )
        .and_then(|mut s| s.execute(rusqlite::params![id, now_secs()]))
        .map_err(sql)?;
        let mut n = self.inserts.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if (*n).is_multiple_of(1000) {
            let oldest = now_secs().saturating_sub(self.ttl_secs());
            conn.execute("DELETE FROM lepus_handled WHERE handled_at < ?1", [oldest])
                .map_err(sql)?;
        }
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

    #[test]
    fn sqlite_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.db");
        {
            let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
            store.insert("m-1").unwrap();
            store.insert("m-1").unwrap();
        }
        let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
        assert!(store.contains("m-1").unwrap());
        assert!(!store.contains("m-2").unwrap());
    }

    #[test]
    fn sqlite_errors_are_storage_errors_worth_retrying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.db");
        let store = SqliteStore::open(&path, Duration::from_secs(3600)).unwrap();
        assert!(store.is_blocking());
        // Someone else drops the table under the store: its SQL now fails.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE lepus_handled")
            .unwrap();
        let err = store.contains("m-1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
        assert!(err.is_recoverable());
        let err = store.insert("m-1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
        // A path that cannot be opened is a configuration error.
        let bad = SqliteStore::open(dir.path().join("no/such/dir/x.db"), DEFAULT_TTL).unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::Config, "{bad}");
        assert!(!MemoryStore::default().is_blocking());
    }
}
