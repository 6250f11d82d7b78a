//! Versioned schema migrations: numbered SQL files per service and backend
//! (`apps/shop/migrations/<service>/<NNNN>_<name>.<backend>.sql`), each applied once and
//! recorded in `schema_migrations`.
//!
//! All pending migrations apply in one transaction, so a store is never left half
//! migrated. On PostgreSQL the transaction first takes an advisory lock: replicas that
//! start together queue there instead of racing to create the same tables. A store whose
//! recorded version is newer than this binary knows is refused (an old replica must not
//! write to a schema it does not understand).

use anyhow::{Context as _, bail};

use super::{Db, now_ms};
use crate::args;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number: applied in increasing order, once.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// Its SQL for SQLite.
    pub sqlite: &'static str,
    /// Its SQL for PostgreSQL.
    pub postgres: &'static str,
}

macro_rules! migration {
    ($service:literal, $version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!(
                "../../migrations/",
                $service,
                "/",
                $file,
                ".sqlite.sql"
            )),
            postgres: include_str!(concat!(
                "../../migrations/",
                $service,
                "/",
                $file,
                ".postgres.sql"
            )),
        }
    };
}

/// The order service's migrations.
pub const ORDER: &[Migration] = &[migration!(
    "order",
    1,
    "0001_init",
    "orders, outbox, idempotency keys"
)];

/// The inventory service's migrations.
pub const INVENTORY: &[Migration] = &[
    migration!(
        "inventory",
        1,
        "0001_init",
        "stock, decisions, snapshot, checks, outbox"
    ),
    migration!("inventory", 2, "0002_handled", "shared dedupe store"),
    migration!(
        "inventory",
        3,
        "0003_compensation",
        "the stock service's stock"
    ),
];

/// The notification service's migrations.
pub const NOTIFY: &[Migration] = &[
    migration!("notify", 1, "0001_init", "notifications, dead letters"),
    migration!("notify", 2, "0002_handled", "shared dedupe store"),
    migration!("notify", 3, "0003_cancellations", "cancellation notices"),
];

/// A lock id of the shop's migrations (any constant; one per database).
const LOCK: i64 = 0x5e0_0001;

/// Applies the migrations of `migrations` that `db` has not recorded.
pub async fn apply(db: &Db, migrations: &[Migration]) -> anyhow::Result<()> {
    if migrations.windows(2).any(|w| match w {
        [a, b] => a.version >= b.version,
        _ => false,
    }) {
        bail!("migrations must be in increasing order of version");
    }
    let mut tx = db.begin().await?;
    if db.is_postgres() {
        tx.execute("SELECT pg_advisory_xact_lock($1)", args![LOCK])
            .await?;
    }
    tx.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_ms BIGINT NOT NULL
         )",
    )
    .await?;
    let applied: Vec<i64> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_, _>>()?;
    let known = migrations.last().map_or(0, |m| m.version);
    if let Some(newest) = applied.iter().max().filter(|v| **v > known) {
        bail!("the store is at schema version {newest}, newer than this program's {known}");
    }
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let sql = if db.is_postgres() {
            m.postgres
        } else {
            m.sqlite
        };
        tx.batch(sql)
            .await
            .with_context(|| format!("migration {} ({})", m.version, m.name))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
            args![m.version, m.name, now_ms()],
        )
        .await?;
        tracing::info!(
            store = db.name(),
            version = m.version,
            name = m.name,
            "migration applied"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// The versions recorded in `db`, in order.
pub async fn applied(db: &Db) -> anyhow::Result<Vec<i64>> {
    Ok(db
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<_, _>>()?)
}
