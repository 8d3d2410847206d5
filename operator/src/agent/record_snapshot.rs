//! `pgbackup record-snapshot`: records a VolumeSnapshotBackup in a repository's catalog
//! (`<server>/snapshots/<id>/manifest.json`): the VolumeSnapshots' names, the backup label
//! and the WAL positions, so that `pgbackup list` shows the snapshot beside the other
//! backups and `pgbackup prune` keeps the WAL it needs. The data stays in the snapshots.
//! Runs in a short Job the operator starts once the snapshots are ready; for an `offline`
//! snapshot, whose positions no running server could tell, the Job mounts a volume made
//! from the data snapshot and reads them from its control file.

use std::path::{Path, PathBuf};

use clap::Args;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{
    AgentError, process::PgBin, repository_args::RepositoryArgs,
    restore::snapshot_copy::read_control,
};
use crate::{
    api::CompressionAlgorithm,
    postgres::{lsn_to_wal_file, parse_lsn},
    repository::{
        BackupDir, BackupKind, FORMAT_VERSION, MANIFEST_FILE, Manifest, ObjectStore,
        SnapshotDetails, WalArchive, format_lsn,
    },
};

/// Options of `pgbackup record-snapshot`.
#[derive(Debug, Clone, Args)]
pub struct RecordSnapshotArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    /// What to record: a JSON [`SnapshotRecord`] (the operator sets it).
    #[arg(long, env = "PGBACKUP_SNAPSHOT_RECORD", value_name = "JSON")]
    pub record: String,

    /// The data directory of a copy made from the snapshot (an `offline` snapshot's, whose
    /// server was stopped): the timeline, the WAL position recovery starts from, the WAL
    /// segment size, the cluster's identity and major version are read from its control
    /// file and `PG_VERSION` instead of the record.
    #[arg(long, env = "PGBACKUP_CONTROL_DATA", value_name = "DIR")]
    pub control_data: Option<PathBuf>,

    /// Directory of `pg_controldata` of the copy's major version. Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// A snapshot backup as the operator knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// The backup id (the backup's UTC start time).
    pub backup_id: String,
    /// When the backup started.
    pub begin_time: Timestamp,
    /// When the snapshots were cut and the database released.
    pub end_time: Timestamp,
    /// `server_version`, e.g. `16.4`.
    pub server_version: String,
    /// `server_version_num`.
    pub server_version_num: u32,
    /// The cluster's system identifier, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// WAL segment size in bytes (0 when `--control-data` reads it).
    #[serde(default)]
    pub wal_segment_size: u64,
    /// Timeline at the backup (0 when `--control-data` reads it).
    #[serde(default)]
    pub timeline: u32,
    /// Where WAL replay starts (empty when `--control-data` reads it).
    #[serde(default)]
    pub begin_lsn: String,
    /// Where the copy is consistent (`online`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    /// The snapshots and the label.
    pub details: SnapshotDetails,
}

/// What `record-snapshot` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordReport {
    /// The backup id recorded.
    pub backup_id: String,
    /// Where the manifest is.
    pub location: String,
    /// What was read from the copy's control file (`--control-data`): the positions,
    /// version and cluster recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_from_copy: Option<CopyFacts>,
}

/// An offline snapshot's facts, as its copy's control file gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyFacts {
    pub timeline: u32,
    pub begin_lsn: String,
    pub server_version: String,
    pub system_identifier: Option<String>,
    pub wal_segment_size: u64,
}

/// The manifest of `record`, checked.
pub fn manifest(record: &SnapshotRecord, server: &str) -> Result<Manifest, AgentError> {
    let segment = |what: &str, lsn: &str| {
        parse_lsn(lsn)
            .map(|at| lsn_to_wal_file(record.timeline, at, record.wal_segment_size))
            .ok_or_else(|| AgentError::Invalid(format!("{what} {lsn:?} is not a WAL location")))
    };
    if record.wal_segment_size == 0 || !record.wal_segment_size.is_power_of_two() {
        return Err(AgentError::Invalid(format!(
            "WAL segment size {} is not a power of two",
            record.wal_segment_size
        )));
    }
    let begin_wal = segment("begin LSN", &record.begin_lsn)?;
    let end_wal = record
        .end_lsn
        .as_deref()
        .map(|lsn| segment("end LSN", lsn))
        .transpose()?;
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        kind: BackupKind::Snapshot,
        backup_id: record.backup_id.clone(),
        server: server.to_string(),
        server_version: record.server_version.clone(),
        server_version_num: record.server_version_num,
        system_identifier: record.system_identifier.clone(),
        timeline: Some(record.timeline),
        begin_lsn: Some(record.begin_lsn.clone()),
        end_lsn: record.end_lsn.clone(),
        begin_wal: Some(begin_wal.clone()),
        end_wal: Some(end_wal.unwrap_or(begin_wal)),
        begin_time: record.begin_time,
        end_time: record.end_time,
        compression: CompressionAlgorithm::None,
        compression_level: 0,
        encrypted: false,
        chain: Vec::new(),
        row_counts: Vec::new(),
        tool_version: format!("pgbackup {}", env!("CARGO_PKG_VERSION")),
        databases: Vec::new(),
        objects: Vec::new(),
        snapshot: Some(record.details.clone()),
        mac: None,
    })
}

/// Fills `record` from the control file and `PG_VERSION` of the copy at `pgdata`: the
/// checkpoint the copy recovers from (for a server shut down cleanly, its shutdown
/// checkpoint) and the cluster it belongs to.
async fn read_from_copy(
    record: &mut SnapshotRecord,
    pg_bin: &PgBin,
    pgdata: &Path,
) -> Result<(), AgentError> {
    let version_file = pgdata.join("PG_VERSION");
    let major = tokio::fs::read_to_string(&version_file)
        .await
        .map_err(|source| AgentError::Io {
            path: version_file.display().to_string(),
            source,
        })?;
    let major: u32 = major.trim().parse().map_err(|_| {
        AgentError::Corrupt(format!(
            "{} does not hold a major version: {major:?}",
            version_file.display()
        ))
    })?;
    let control = read_control(pg_bin, pgdata).await?;
    if control.state != "shut down" {
        tracing::warn!(
            state = %control.state,
            "the copy's server was not shut down cleanly ({}): it recovers from its last checkpoint as after a crash",
            control.state
        );
    }
    record.server_version = major.to_string();
    record.server_version_num = major * 10000;
    record.system_identifier = Some(control.system_identifier);
    record.wal_segment_size = control.segment_size;
    record.timeline = control.timeline;
    record.begin_lsn = format_lsn(control.redo);
    Ok(())
}

/// Writes the manifest; refused when the repository's WAL archive belongs to another
/// cluster (its WAL could never replay on these snapshots).
pub async fn run(args: &RecordSnapshotArgs) -> Result<String, AgentError> {
    let mut record: SnapshotRecord = serde_json::from_str(&args.record)
        .map_err(|e| AgentError::Invalid(format!("snapshot record: {e}")))?;
    if let Some(pgdata) = &args.control_data {
        read_from_copy(&mut record, &PgBin(args.pg_bin.clone()), pgdata).await?;
    }
    let server = &args.repository.server;
    let mut manifest = manifest(&record, server)?;
    if let Some(keys) = args.repository.keys()? {
        manifest.seal(&keys);
    }
    let store = args.repository.open().await?;
    let archive = WalArchive::new(&store, server);
    if let (Some(identity), Some(ours)) = (archive.identity().await?, &record.system_identifier)
        && identity.system_identifier != *ours
    {
        return Err(AgentError::Invalid(format!(
            "the WAL archive of server {server:?} in this repository belongs to cluster {}, the snapshot to cluster {ours}: set repository.serverName",
            identity.system_identifier
        )));
    }
    let dir = BackupDir {
        server: server.clone(),
        kind: BackupKind::Snapshot,
        backup_id: record.backup_id.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| AgentError::Invalid(format!("manifest: {e}")))?;
    store.put_bytes(&dir.key(MANIFEST_FILE), bytes).await?;
    tracing::info!(backup_id = %record.backup_id, "snapshot backup {} recorded", record.backup_id);
    let report = RecordReport {
        read_from_copy: args.control_data.as_ref().map(|_| CopyFacts {
            timeline: record.timeline,
            begin_lsn: record.begin_lsn.clone(),
            server_version: record.server_version.clone(),
            system_identifier: record.system_identifier.clone(),
            wal_segment_size: record.wal_segment_size,
        }),
        backup_id: record.backup_id,
        location: format!("{}/{}", store.describe(), dir.key(MANIFEST_FILE)),
    };
    serde_json::to_string(&report).map_err(|e| AgentError::Invalid(e.to_string()))
}
