//! The consumers' dedupe store (lepus's [`IdempotencyStore`]) in the service's own
//! database, so every replica of a service sees the message ids any replica handled.
//!
//! A per-process memory store lets a redelivery that lands on another replica (after a
//! replica died before its ack, or a publisher re-sent after a lost confirm) through to
//! the handler; the handlers' unique keys still make that harmless, but each such pass
//! costs a stock check. With the ids in the shared store the redelivery is skipped
//! whichever replica gets it. lepus calls a blocking store from tokio's blocking pool,
//! so the async store calls are driven from there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Arc;

use lepus::{IdempotencyStore, MemoryStore};

use crate::args;
use crate::db::{Db, now_ms};

/// How long an id is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// Expired ids are deleted once per this many inserts.
const SWEEP_EVERY: u64 = 1000;

/// The dedupe store for a service on `db`: shared in the database on PostgreSQL (where
/// replicas run); on SQLite (one instance) lepus's memory store, which costs the
/// service's one connection nothing; the handlers' unique keys make either exact.
pub fn for_store(db: &Db) -> Arc<dyn IdempotencyStore> {
    if db.is_postgres() {
        Arc::new(SharedStore::new(db.clone()))
    } else {
        Arc::new(MemoryStore::default())
    }
}

/// Handled message ids in the `handled` table of a service's store.
#[derive(Debug)]
pub struct SharedStore {
    db: Db,
    ttl_ms: i64,
    inserts: AtomicU64,
}

impl SharedStore {
    /// A store in `db` (whose migrations made the `handled` table), remembering ids for
    /// [`TTL`].
    pub fn new(db: Db) -> SharedStore {
        SharedStore {
            db,
            ttl_ms: i64::try_from(TTL.as_millis()).unwrap_or(i64::MAX),
            inserts: AtomicU64::new(0),
        }
    }

    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, crate::db::DbError>>,
    ) -> lepus::Result<T> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| lepus::Error::storage(format!("dedupe store: no runtime: {e}")))?;
        handle
            .block_on(f)
            .map_err(|e| lepus::Error::storage(format!("dedupe store: {e}")))
    }
}

impl IdempotencyStore for SharedStore {
    fn is_blocking(&self) -> bool {
        true
    }

    fn contains(&self, id: &str) -> lepus::Result<bool> {
        let oldest = now_ms().saturating_sub(self.ttl_ms);
        self.block_on(async {
            self.db
                .query_opt(
                    "SELECT 1 FROM handled WHERE id = $1 AND handled_ms >= $2",
                    args![id, oldest],
                )
                .await
                .map(|r| r.is_some())
        })
    }

    fn insert(&self, id: &str) -> lepus::Result<()> {
        let n = self.inserts.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let oldest = now.saturating_sub(self.ttl_ms);
        self.block_on(async {
            self.db
                .execute(
                    "INSERT INTO handled (id, handled_ms) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET handled_ms = excluded.handled_ms",
                    args![id, now],
                )
                .await?;
            if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
                self.db
                    .execute("DELETE FROM handled WHERE handled_ms < $1", args![oldest])
                    .await?;
            }
            Ok(())
        })
    }
}
