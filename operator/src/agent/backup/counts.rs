//! The row counts a backup records for its restore test (`verify --restore`).
//!
//! Logical: each database is counted in a repeatable-read transaction whose snapshot
//! `pg_dump` then uses (`--snapshot`), so the counts are exactly the dump's. Physical:
//! there is no snapshot at the backup's end point, so every database is counted right after
//! the backup ends, and a table whose insert/delete statistics moved between the backup's
//! start and the count is marked `changing`: its count may differ from the restored one
//! without anything being wrong.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::BackupContext;
use crate::{
    agent::AgentError,
    postgres::{ConnectionError, ServerInfo, TableRows, count_rows, write_counters},
};

/// A database's open transaction whose snapshot `pg_dump --snapshot` uses, and its counts.
pub(super) struct DumpSnapshot {
    client: Client,
    /// The exported snapshot's id.
    pub id: String,
    /// Rows per table in that snapshot.
    pub rows: Vec<TableRows>,
}

impl DumpSnapshot {
    /// Opens the transaction in `database` and counts.
    pub async fn take(ctx: &BackupContext<'_>, database: &str) -> Result<Self, AgentError> {
        let client = ctx.connection.connect(Some(database)).await?;
        let query = |what: &'static str| move |source| ConnectionError::Query { what, source };
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(query("starting the snapshot transaction"))?;
        let id: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(query("exporting the snapshot for pg_dump"))?
            .get(0);
        let rows = count_rows(&client, database).await?;
        Ok(Self { client, id, rows })
    }

    /// Ends the transaction once the dump is done.
    pub async fn release(self) {
        let _ = self.client.batch_execute("COMMIT").await;
    }
}

/// Write statistics per database, read before a physical backup starts.
pub(super) type Before = BTreeMap<String, BTreeMap<String, i64>>;

/// Reads the write statistics of every database the role may connect to.
pub(super) async fn before_physical(ctx: &BackupContext<'_>) -> Before {
    let mut before = Before::new();
    for database in databases(ctx).await {
        if let Ok(client) = ctx.connection.connect(Some(&database)).await
            && let Ok(counters) = write_counters(&client).await
        {
            before.insert(database, counters);
        }
    }
    before
}

/// Counts every database after a physical backup; tables whose statistics moved since
/// `before` are marked `changing`. A database that cannot be counted is left out (logged).
pub(super) async fn after_physical(ctx: &BackupContext<'_>, before: &Before) -> Vec<TableRows> {
    let mut all = Vec::new();
    for database in databases(ctx).await {
        match count_database(ctx, &database, before.get(&database)).await {
            Ok(rows) => all.extend(rows),
            Err(err) => tracing::warn!(
                database = %database,
                "rows of database {database} not counted for the restore test: {}",
                crate::agent::error_chain(&err)
            ),
        }
    }
    all
}

async fn count_database(
    ctx: &BackupContext<'_>,
    database: &str,
    before: Option<&BTreeMap<String, i64>>,
) -> Result<Vec<TableRows>, AgentError> {
    let client = ctx.connection.connect(Some(database)).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|source| ConnectionError::Query {
            what: "starting the counting transaction",
            source,
        })?;
    let mut rows = count_rows(&client, database).await?;
    let _ = client.batch_execute("COMMIT").await;
    let after = write_counters(&client).await?;
    for table in &mut rows {
        let was = before.and_then(|b| b.get(&table.table));
        table.changing = was.is_none() || was != after.get(&table.table);
    }
    Ok(rows)
}

async fn databases(ctx: &BackupContext<'_>) -> Vec<String> {
    ServerInfo::databases(ctx.client).await.unwrap_or_default()
}
