//! `verify --restore`: restore a backup into a scratch PostgreSQL and check it as a user
//! would. Physical: lay the backup down, recover to its end point and promote, then the
//! server must come up out of recovery. Logical: a fresh cluster takes the globals and
//! every dump. Either way, the rows of every table are counted and compared with the
//! counts recorded at backup time.

use std::{path::Path, time::Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};

use super::scratch::{self, ScratchServer};
use crate::{
    agent::{
        AgentError,
        process::PgBin,
        repository_args::RepositoryArgs,
        restore::{self, RestoreArgs},
    },
    postgres::{Comparison, Difference, TableRows, count_rows},
    repository::{BackupKind, Manifest, ObjectRole},
};

/// Differences listed in the report (the rest are counted): it must fit a termination
/// message.
const LISTED: usize = 5;

/// The outcome of a restore test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTest {
    /// The backup tested.
    pub backup_id: String,
    /// `logical` or `physical`.
    pub kind: String,
    /// Whether it passed.
    pub verified: bool,
    /// Seconds the restore took (download, unpack or pg_restore, recovery).
    pub restore_seconds: f64,
    /// Seconds for the whole test.
    pub seconds: f64,
    /// Where recovery ended (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_lsn: Option<String>,
    /// Databases whose tables were counted.
    pub databases: usize,
    /// Tables compared.
    pub tables: usize,
    /// Rows found in them.
    pub rows: u64,
    /// Tables whose count is the recorded one.
    pub matched: usize,
    /// Tables that took writes while the backup ran and differ (first few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_during_backup: Vec<Difference>,
    /// How many tables took writes while the backup ran and differ (all of them).
    #[serde(default)]
    pub changed_count: usize,
    /// Tables that differ without a reason, or are missing (first few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatched: Vec<Difference>,
    /// Whether the backup recorded row counts at all.
    pub counts_recorded: bool,
    /// One line for people.
    pub summary: String,
}

/// Restores into a scratch server under `scratch` and checks it.
pub(super) async fn run(
    repository: &RepositoryArgs,
    manifest: &Manifest,
    pg_bin: &PgBin,
    scratch: &Path,
) -> Result<RestoreTest, AgentError> {
    let started = Instant::now();
    let pgdata = scratch.join("pgdata");
    let (server, reached_lsn) = match manifest.kind {
        BackupKind::Physical => {
            let reached = restore_physical(repository, manifest, pg_bin, &pgdata).await?;
            let restore_seconds = started.elapsed().as_secs_f64();
            let server = ScratchServer::start(&pgdata, scratch, pg_bin).await?;
            let client = server.connect("template1").await?;
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| AgentError::Invalid(format!("the restored server: {e}")))?
                .get(0);
            if in_recovery {
                server.stop().await;
                return Err(AgentError::Verification(
                    "the restored server is still in recovery after promotion".into(),
                ));
            }
            ((server, restore_seconds), reached)
        }
        BackupKind::Logical => {
            scratch::init(&pgdata, pg_bin).await?;
            let server = ScratchServer::start(&pgdata, scratch, pg_bin).await?;
            if let Err(err) = restore_logical(repository, manifest, pg_bin, &server).await {
                server.stop().await;
                return Err(err);
            }
            ((server, started.elapsed().as_secs_f64()), None)
        }
        BackupKind::Snapshot => {
            return Err(AgentError::Invalid(format!(
                "backup {} is a volume snapshot: its data is in the VolumeSnapshots, not the repository; test it with a PointInTimeRestore in clone mode",
                manifest.backup_id
            )));
        }
    };
    let (server, restore_seconds) = server;
    let counted = count_all(&server, manifest).await;
    server.stop().await;
    let (databases, found) = counted?;
    let comparison = Comparison::of(&manifest.row_counts, &found);
    let counts_recorded = !manifest.row_counts.is_empty();
    let summary = if counts_recorded {
        comparison.summary()
    } else {
        format!(
            "{} tables, {} rows restored (the backup recorded no row counts to compare with)",
            found.len(),
            found.iter().map(|t| t.rows).sum::<u64>()
        )
    };
    let verified = comparison.mismatched.is_empty();
    let mut test = RestoreTest {
        backup_id: manifest.backup_id.clone(),
        kind: manifest.kind.as_str().to_string(),
        verified,
        restore_seconds: round(restore_seconds),
        seconds: round(started.elapsed().as_secs_f64()),
        reached_lsn,
        databases,
        tables: if counts_recorded {
            comparison.tables
        } else {
            found.len()
        },
        rows: if counts_recorded {
            comparison.rows
        } else {
            found.iter().map(|t| t.rows).sum()
        },
        matched: comparison.matched,
        changed_count: comparison.changed_during_backup.len(),
        changed_during_backup: comparison.changed_during_backup,
        mismatched: comparison.mismatched,
        counts_recorded,
        summary,
    };
    test.changed_during_backup.truncate(LISTED);
    test.mismatched.truncate(LISTED);
    Ok(test)
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// Lays the backup down in `pgdata` and recovers it to its end point; returns where
/// recovery ended.
async fn restore_physical(
    repository: &RepositoryArgs,
    manifest: &Manifest,
    pg_bin: &PgBin,
    pgdata: &Path,
) -> Result<Option<String>, AgentError> {
    let pgdata_arg = pgdata.display().to_string();
    let mut args = restore_args(&[
        "--backup",
        &manifest.backup_id,
        "--pgdata",
        &pgdata_arg,
        "--target-immediate",
        "--recover",
        "--json",
    ])?;
    args.repository = repository.clone();
    args.pg_bin = pg_bin.0.clone();
    let report = restore::run(&args).await?;
    let reached = serde_json::from_str::<serde_json::Value>(&report)
        .ok()
        .and_then(|r| r["reachedLsn"].as_str().map(String::from));
    Ok(reached)
}

/// Restores the globals and every database of the backup into the scratch server.
async fn restore_logical(
    repository: &RepositoryArgs,
    manifest: &Manifest,
    pg_bin: &PgBin,
    server: &ScratchServer,
) -> Result<(), AgentError> {
    let host = server.socket_dir().display().to_string();
    let mut args = restore_args(&[
        "--backup",
        &manifest.backup_id,
        "--logical",
        "--pg-host",
        &host,
        "--pg-port",
        "5432",
        "--pg-user",
        server.user(),
        // Not `postgres`: the backup's `postgres` database replaces the new cluster's.
        "--pg-database",
        "template1",
        "--pg-sslmode",
        "disable",
        // The new cluster's own `postgres` database is replaced by the backup's.
        "--clean",
    ])?;
    args.repository = repository.clone();
    args.pg_bin = pg_bin.0.clone();
    args.connection.pg_options = Some(server.session_options().to_string());
    // Without the backup's roles, owners and grants cannot be restored: the rows can.
    args.no_owner = manifest.object(ObjectRole::Globals, None).is_none();
    restore::run(&args).await.map(|_| ())
}

/// Counts the tables of every database the backup recorded counts for (else every
/// database of the restored server).
async fn count_all(
    server: &ScratchServer,
    manifest: &Manifest,
) -> Result<(usize, Vec<TableRows>), AgentError> {
    let mut databases: Vec<String> = manifest
        .row_counts
        .iter()
        .map(|t| t.database.clone())
        .collect();
    databases.dedup();
    if databases.is_empty() {
        let client = server.connect("template1").await?;
        databases = crate::postgres::ServerInfo::databases(&client).await?;
    }
    let mut found = Vec::new();
    let mut present = 0;
    for database in &databases {
        // A database missing after the restore shows as its tables missing.
        let Ok(client) = server.connect(database).await else {
            continue;
        };
        present += 1;
        found.extend(count_rows(&client, database).await?);
    }
    Ok((present, found))
}

/// Restore options from words, as if given on the command line.
fn restore_args(words: &[&str]) -> Result<RestoreArgs, AgentError> {
    #[derive(Parser)]
    struct Words {
        #[command(flatten)]
        args: RestoreArgs,
    }
    let mut all = vec!["restore", "--repository", "file:///unused"];
    all.extend_from_slice(words);
    Words::try_parse_from(all)
        .map(|w| w.args)
        .map_err(|e| AgentError::Invalid(format!("restore options: {e}")))
}
