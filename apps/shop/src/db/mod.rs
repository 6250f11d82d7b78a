//! Each service's store: SQLite (the embedded default, one file per service) or
//! PostgreSQL (replicated runs: replicas of a service in several zones share one
//! database), behind one API.
//!
//! Why not one crate for both: lepus's `sqlite` feature links rusqlite's libsqlite3-sys,
//! and a second SQLite driver (sqlx's) links another version of it, which cargo refuses
//! (`links = "sqlite3"` admits one). So SQLite stays on rusqlite, PostgreSQL is reached
//! with tokio-postgres, and this module is the seam: statements are written once with
//! `$1, $2, ...` placeholders (SQLite reads `$1` as a named parameter, bound here by
//! name), values are [`Value`]s, rows are [`Row`]s, and a [`Session`] is a connection
//! held for a sequence of statements, usually a transaction ([`Db::begin`]). The few
//! statements the two dialects disagree on ask [`Db::is_postgres`]. Schemas are
//! versioned migrations per backend ([`migrate`]).
//!
//! SQLite: one connection behind an async mutex, each statement on tokio's blocking
//! pool; a service's writes are serialized, WAL lets readers in, `synchronous = FULL`
//! makes a committed order survive a crash of the machine (the API promises that when
//! it answers 201). PostgreSQL: a small pool; every statement has a deadline.

pub mod migrate;
pub mod pg_server;
mod postgres;
mod sqlite;
mod value;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};

pub use migrate::Migration;
pub use value::{Row, Value};

/// Milliseconds since the Unix epoch: lepus's clock, the one its failure headers use.
pub use lepus::failure::now_ms;

/// How long one PostgreSQL statement, or the wait for a connection, may take.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a `&[Value]` from expressions: `args![order_id, 3_i64, None::<String>]`.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::db::Value::from($v)),*][..]
    };
}

/// A store call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no (or the connection failed).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Anything else: a deadline passed, a value of an unexpected type, a lost task.
    #[error("{0}")]
    Other(String),
}

impl DbError {
    /// Whether a unique key refused the row: another replica (or an earlier delivery)
    /// got there first.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            DbError::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            DbError::Sqlite(_) | DbError::Other(_) => false,
        }
    }
}

/// A store call's result.
pub type DbResult<T> = Result<T, DbError>;

#[derive(Debug)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Pool>),
}

/// A service's store: cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    backend: std::sync::Arc<Backend>,
    name: String,
}

/// What a database URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL).
    Postgres(String),
}

impl Location {
    /// `postgres://...` / `postgresql://...`, else a SQLite path (an optional
    /// `sqlite://` or `sqlite:` prefix is dropped).
    pub fn parse(url: &str) -> Location {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Location::Postgres(url.to_string());
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Location::Sqlite(PathBuf::from(path))
    }
}

impl Db {
    /// Opens the store at `url` (see [`Location::parse`]) and applies `migrations` not
    /// yet applied.
    pub async fn open(url: &str, migrations: &[Migration]) -> anyhow::Result<Db> {
        let db = Db::connect(url)?;
        migrate::apply(&db, migrations)
            .await
            .with_context(|| format!("migrating {}", db.name))?;
        Ok(db)
    }

    /// Opens the store at `url` as it is, without migrating (readers: reports,
    /// dashboards). PostgreSQL connections are made when first needed.
    pub fn connect(url: &str) -> anyhow::Result<Db> {
        let location = Location::parse(url);
        let (backend, name) = match &location {
            Location::Sqlite(path) => (
                Backend::Sqlite(sqlite::Sqlite::open(path)?),
                path.display().to_string(),
            ),
            Location::Postgres(url) => {
                let pool = postgres::Pool::new(url)?;
                let name = pool.describe();
                (Backend::Postgres(Box::new(pool)), name)
            }
        };
        Ok(Db {
            backend: std::sync::Arc::new(backend),
            name,
        })
    }

    /// Opens the SQLite file at `path` (the single-instance default).
    pub async fn open_path(path: &Path, migrations: &[Migration]) -> anyhow::Result<Db> {
        Db::open(&path.display().to_string(), migrations).await
    }

    /// Whether this is PostgreSQL (for the few statements the dialects disagree on).
    pub fn is_postgres(&self) -> bool {
        matches!(*self.backend, Backend::Postgres(_))
    }

    /// The SQLite file, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// What it is, for logs (a PostgreSQL URL without its password).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection for a sequence of statements, each committing on its own.
    pub async fn session(&self) -> DbResult<Session> {
        let inner = match &*self.backend {
            Backend::Sqlite(s) => SessionInner::Sqlite(s.acquire().await?),
            Backend::Postgres(p) => SessionInner::Postgres(Box::new(p.acquire().await?)),
        };
        Ok(Session { inner })
    }

    /// A write transaction (SQLite: `BEGIN IMMEDIATE`, so writers queue at its start
    /// rather than fail at their first write). Rolled back unless committed.
    pub async fn begin(&self) -> DbResult<Session> {
        let mut session = self.session().await?;
        let begin = if self.is_postgres() {
            "BEGIN"
        } else {
            "BEGIN IMMEDIATE"
        };
        session.batch(begin).await?;
        Ok(session)
    }

    /// Runs one statement; returns the rows it changed.
    pub async fn execute(&self, sql: &str, args: &[Value]) -> DbResult<u64> {
        self.session().await?.execute(sql, args).await
    }

    /// Runs one query.
    pub async fn query(&self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        self.session().await?.query(sql, args).await
    }

    /// Runs one query expected to return at most one row.
    pub async fn query_opt(&self, sql: &str, args: &[Value]) -> DbResult<Option<Row>> {
        self.session().await?.query_opt(sql, args).await
    }

    /// Opens the SQLite file at `path` read-only (for reports and dashboards).
    pub fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }
}

enum SessionInner {
    Sqlite(sqlite::Lease),
    Postgres(Box<postgres::Lease>),
}

/// A connection held for a sequence of statements (a transaction after
/// [`Db::begin`]). Dropping it uncommitted rolls the transaction back.
pub struct Session {
    inner: SessionInner,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    /// Runs statements without arguments (`BEGIN`, DDL).
    pub async fn batch(&mut self, sql: &str) -> DbResult<()> {
        match &mut self.inner {
            SessionInner::Sqlite(l) => l.batch(sql).await,
            SessionInner::Postgres(l) => l.batch(sql).await,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        match &mut self.inner {
            SessionInner::Sqlite(l) => l.execute(sql, args).await,
            SessionInner::Postgres(l) => l.execute(sql, args).await,
        }
    }

    /// Runs one query.
    pub async fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        match &mut self.inner {
            SessionInner::Sqlite(l) => l.query(sql, args).await,
            SessionInner::Postgres(l) => l.query(sql, args).await,
        }
    }

    /// Runs one query expected to return at most one row (the first is taken).
    pub async fn query_opt(&mut self, sql: &str, args: &[Value]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }

    /// Commits the transaction.
    pub async fn commit(mut self) -> DbResult<()> {
        self.batch("COMMIT").await
    }

    /// Adds one to counter `name`.
    pub async fn bump(&mut self, name: &str) -> DbResult<()> {
        self.execute(
            "INSERT INTO counters (name, value) VALUES ($1, 1)
             ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
            args![name],
        )
        .await
        .map(drop)
    }

    /// Logs side effect `effect` of order `order_id` (the effect and its log row commit
    /// together).
    pub async fn log_effect(&mut self, order_id: &str, effect: &str) -> DbResult<()> {
        self.execute(
            "INSERT INTO effects (order_id, effect, at_ms) VALUES ($1, $2, $3)",
            args![order_id, effect, now_ms()],
        )
        .await
        .map(drop)
    }

    /// Counter `name`, 0 if never bumped.
    pub async fn counter(&mut self, name: &str) -> DbResult<i64> {
        match self
            .query_opt("SELECT value FROM counters WHERE name = $1", args![name])
            .await?
        {
            Some(row) => row.int(0),
            None => Ok(0),
        }
    }
}

/// Counter `name` of a SQLite store read directly (reports), 0 if never bumped.
pub fn counter(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<i64> {
    use rusqlite::OptionalExtension as _;
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}
