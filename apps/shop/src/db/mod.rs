//! One SQLite database per service, used from async code.
//!
//! rusqlite is synchronous, so every access runs on tokio's blocking pool behind one
//! mutex: a service's writes are serialized, which is what its invariants want anyway
//! (a reservation and its outbox row commit together, and two copies of one event never
//! interleave). WAL lets the demo's report and the dashboard read while services write;
//! `synchronous = FULL` makes a committed order survive a crash of the machine, not only
//! of the process, because the order API promises exactly that when it answers 201.

pub mod pg_server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

/// A service's database: cheap to clone, one connection behind a mutex.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies `schema` (idempotent
    /// `CREATE ... IF NOT EXISTS` statements).
    pub fn open(path: &Path, schema: &str) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory of {}", path.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
        )
        .context("setting pragmas")?;
        conn.execute_batch(schema)
            .with_context(|| format!("applying the schema to {}", path.display()))?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` read-only (for reports and dashboards).
    pub fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .context("database task failed")?
        .context("database error")
    }
}

/// Milliseconds since the Unix epoch: lepus's clock, the one its failure headers use.
pub use lepus::failure::now_ms;

/// A table of named counters (duplicates suppressed, and the like).
pub const COUNTERS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// Adds one to counter `name` (inside the caller's transaction, if any).
pub fn bump(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, 1)
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        [name],
    )
    .map(drop)
}

/// An append-only log of side effects, one row per effect and order, with no unique key:
/// the row keyed by order id (a decision, a notification) cannot show a duplicate, this
/// log can. Tests count its rows per order.
pub const EFFECTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS effects (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    effect   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);
";

/// Logs side effect `effect` of order `order_id` (inside the caller's transaction: the
/// effect and its log row commit together).
pub fn log_effect(
    conn: &rusqlite::Connection,
    order_id: &str,
    effect: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO effects (order_id, effect, at_ms) VALUES (?1, ?2, ?3)",
        rusqlite::params![order_id, effect, now_ms()],
    )
    .map(drop)
}

/// Counter `name`, 0 if never bumped.
pub fn counter(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<i64> {
    use rusqlite::OptionalExtension as _;
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}
