//! The PostgreSQL backend: a small pool of tokio-postgres connections. A lease holds
//! one for a session; a connection that failed, or whose statement ran past its deadline,
//! is dropped instead of returned. Statements are prepared once per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use super::value::from_postgres;
use super::{DbError, DbResult, Row, STATEMENT_TIMEOUT, Value};

/// Connections per pool: enough for a service's consumers, relay and API.
const POOL_SIZE: usize = 16;
/// Prepared statements kept per connection.
const MAX_STATEMENTS: usize = 256;

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Inside a transaction: roll back before anyone else uses it.
    in_tx: bool,
}

/// A pool of connections to one database.
pub(super) struct Pool {
    config: tokio_postgres::Config,
    idle: Arc<Mutex<Vec<Conn>>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn timed_out(what: &str) -> DbError {
    DbError::Other(format!("{what}: no answer within {STATEMENT_TIMEOUT:?}"))
}

impl Pool {
    pub(super) fn new(url: &str) -> anyhow::Result<Pool> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .with_context(|| "not a PostgreSQL URL".to_string())?;
        config.connect_timeout(STATEMENT_TIMEOUT);
        Ok(Pool {
            config,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
        })
    }

    /// `postgres://user@host:port/db`, without the password.
    pub(super) fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        format!(
            "postgres://{}@{}:{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            self.config.get_ports().first().map_or(5432, |p| *p),
            self.config.get_dbname().unwrap_or("")
        )
    }

    async fn connect(&self) -> DbResult<Conn> {
        let (client, connection) =
            tokio::time::timeout(STATEMENT_TIMEOUT, self.config.connect(NoTls))
                .await
                .map_err(|_| timed_out("connecting"))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a PostgreSQL connection ended");
            }
        });
        Ok(Conn {
            client,
            statements: HashMap::new(),
            in_tx: false,
        })
    }

    pub(super) async fn acquire(&self) -> DbResult<Lease> {
        let permit =
            tokio::time::timeout(STATEMENT_TIMEOUT, Arc::clone(&self.permits).acquire_owned())
                .await
                .map_err(|_| timed_out("waiting for a free connection"))?
                .map_err(|_| DbError::Other("the pool is closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.client.is_closed());
            idle.pop()
        };
        let conn = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut lease = Lease {
            conn: Some(conn),
            idle: Arc::clone(&self.idle),
            _permit: permit,
        };
        if lease.conn.as_ref().is_some_and(|c| c.in_tx) {
            lease.batch("ROLLBACK").await?;
        }
        Ok(lease)
    }
}

/// A connection, held; back to the pool on drop unless it broke.
pub(super) struct Lease {
    conn: Option<Conn>,
    idle: Arc<Mutex<Vec<Conn>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|c| !c.client.is_closed()) {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl Lease {
    fn conn(&mut self) -> DbResult<&mut Conn> {
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Other("the connection was lost".into()))
    }

    /// After a statement: a deadline passed or the connection failed, so nobody reuses
    /// it (its state is unknown).
    fn discard_on<T>(&mut self, result: &DbResult<T>) {
        if let Err(e) = result {
            let broken = match e {
                DbError::Postgres(e) => e.is_closed() || e.code().is_none(),
                _ => true,
            };
            if broken {
                self.conn = None;
            }
        }
    }

    pub(super) async fn batch(&mut self, sql: &str) -> DbResult<()> {
        let upper = sql.trim().to_ascii_uppercase();
        let conn = self.conn()?;
        // Pessimistic: a session dropped while BEGIN or COMMIT is on its way (a handler
        // timed out) leaves the connection marked, and the next user rolls back first
        // (a ROLLBACK outside a transaction only warns).
        if upper.starts_with("BEGIN") {
            conn.in_tx = true;
        }
        let result = tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.batch_execute(sql))
            .await
            .map_err(|_| timed_out(sql))
            .and_then(|r| r.map_err(DbError::from));
        let ends = upper.starts_with("COMMIT")
            || (upper.starts_with("ROLLBACK") && !upper.starts_with("ROLLBACK TO"));
        if let Ok(conn) = self.conn()
            && ends
            && result.is_ok()
        {
            conn.in_tx = false;
        }
        self.discard_on(&result);
        result
    }

    async fn statement(&mut self, sql: &str) -> DbResult<Statement> {
        let conn = self.conn()?;
        if let Some(stmt) = conn.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.prepare(sql))
            .await
            .map_err(|_| timed_out("preparing a statement"))??;
        // Statements built with their values in the text (lists of ids) are many: keep
        // a bounded number.
        if conn.statements.len() < MAX_STATEMENTS {
            conn.statements.insert(sql.to_string(), stmt.clone());
        }
        Ok(stmt)
    }

    pub(super) async fn execute(&mut self, sql: &str, args: &[Value]) -> DbResult<u64> {
        let result = async {
            let stmt = self.statement(sql).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let conn = self.conn()?;
            tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.execute(&stmt, &params))
                .await
                .map_err(|_| timed_out("a statement"))?
                .map_err(DbError::from)
        }
        .await;
        self.discard_on(&result);
        result
    }

    pub(super) async fn query(&mut self, sql: &str, args: &[Value]) -> DbResult<Vec<Row>> {
        let result = async {
            let stmt = self.statement(sql).await?;
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let conn = self.conn()?;
            let rows = tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.query(&stmt, &params))
                .await
                .map_err(|_| timed_out("a query"))??;
            rows.iter().map(from_postgres).collect()
        }
        .await;
        self.discard_on(&result);
        result
    }
}
