//! [`SqliteStore`], behind the `sqlite` feature: bundled SQLite is a large build, and its
//! `links = "sqlite3"` admits one rusqlite per application, so only those who want a
//! store that survives restarts take it on.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::IdempotencyStore;
use crate::error::{Error, ErrorKind, Result};

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
    Error::with_source(ErrorKind::Storage, "idempotency store", e)
}

fn now_secs() -> i64 {
    crate::clock::now_ms() / 1000
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
    use crate::idempotency::{DEFAULT_TTL, MemoryStore};

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
