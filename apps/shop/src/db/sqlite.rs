//! The SQLite backend: one connection behind an async mutex; a lease holds it for a
//! session, and each statement runs on tokio's blocking pool (rusqlite is synchronous).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::Connection;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::value::from_sqlite;
use super::{DbError, DbResult, Row, Value};

/// A SQLite store.
#[derive(Debug)]
pub(super) struct Sqlite {
    conn: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> anyhow::Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory of {}", path.display()))?;
        }
        let conn = connect(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(Some(conn))),
            path: path.to_path_buf(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for one session: reopened if a task lost it, and with any
    /// transaction an earlier session dropped uncommitted rolled back.
    pub(super) async fn acquire(&self) -> DbResult<Lease> {
        let guard = Arc::clone(&self.conn).lock_owned().await;
        let mut lease = Lease {
            guard,
            path: self.path.clone(),
        };
        let stale = lease.guard.as_ref().is_none_or(|c| !c.is_autocommit());
        if stale {
            lease
                .run(|c| {
                    if !c.is_autocommit() {
                        c.execute_batch("ROLLBACK")?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(lease)
    }
}

/// The connection, held.
pub(super) struct Lease {
    guard: OwnedMutexGuard<Option<Connection>>,
    path: PathBuf,
}

/// Binds `args` to `$1, $2, ...` by name (SQLite numbers named parameters in order of
/// first appearance, so binding by position would be wrong when `$2` comes first).
fn bind(stmt: &mut rusqlite::CachedStatement<'_>, args: &[Value]) -> rusqlite::Result<()> {
    for (i, value) in args.iter().enumerate() {
        if let Some(index) = stmt.parameter_index(&format!("${}", i + 1))? {
            stmt.raw_bind_parameter(index, value)?;
        }
    }
    Ok(())
}

impl Lease {
    async fn run<T, F>(&mut self, f: F) -> DbResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let taken = self.guard.take();
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let mut conn = match taken {
                Some(c) => c,
                None => match connect(&path) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&mut conn);
            (Some(conn), result)
        })
        .await
        .map_err(|e| DbError::Other(format!("database task failed: {e}")))?;
        *self.guard = conn;
        result.map_err(DbError::from)
    }

    pub(super) async fn batch(&mut self, sql: &str) -> DbResult<()> {
        let sql = sql.to_string();
        self.run(move |c| c.execute_batch(&sql)).await
    }

    pub(super) async fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        let (sql, args) = (sql.to_string(), args.to_vec());
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            bind(&mut stmt, &args)?;
            stmt.raw_execute().map(|n| n as u64)
        })
        .await
    }

    pub(super) async fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        let (sql, args) = (sql.to_string(), args.to_vec());
        self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            bind(&mut stmt, &args)?;
            let columns = stmt.column_count();
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(columns);
                for i in 0..columns {
                    values.push(from_sqlite(row.get_ref(i)?)?);
                }
                out.push(Row(values));
            }
            Ok(out)
        })
        .await
    }
}
