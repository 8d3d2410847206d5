//! PostgreSQL's low-level backup mode, for volume snapshots taken while the server runs:
//! `pg_backup_start`/`pg_backup_stop` on 15 and later, `pg_start_backup`/`pg_stop_backup`
//! (non-exclusive) on 13 and 14. Both are scoped to the session that started the backup:
//! keep the same client open from start to stop. Also `CHECKPOINT` for crash-consistent
//! snapshots, and the backup label's parser.

use tokio_postgres::Client;

use super::{ConnectionError, ServerInfo, parse_lsn};

/// Backup mode could not be entered or left.
#[derive(Debug, thiserror::Error)]
pub enum BackupModeError {
    /// The server could not be asked.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A standby cannot take a backup for a volume snapshot of the primary's volumes.
    #[error("the server is in recovery (a standby); online snapshots need the primary")]
    InRecovery,
    /// The label the server returned does not read as a backup label.
    #[error("unreadable backup label: {0}")]
    BadLabel(String),
}

/// What `pg_backup_stop` returns: the end of the backup, the label and the tablespace map
/// to put into the data directory of the snapshot's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedBackup {
    /// Where the backup ends (recovery must replay at least this far), e.g. `0/3000100`.
    pub end_lsn: String,
    /// The `backup_label` file's content.
    pub label_file: String,
    /// The `tablespace_map` file's content (empty without tablespaces).
    pub tablespace_map: String,
    /// The label, parsed.
    pub label: BackupLabel,
}

/// The facts of a backup label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`, e.g. `0/2000028`.
    pub start_lsn: String,
    /// The WAL segment it lies in.
    pub start_wal: String,
    /// `CHECKPOINT LOCATION`, where recovery starts.
    pub checkpoint_lsn: String,
    /// `START TIMELINE`.
    pub timeline: u32,
    /// `LABEL`.
    pub label: String,
}

/// Parses a `backup_label` file.
pub fn parse_backup_label(text: &str) -> Result<BackupLabel, BackupModeError> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let bad = |what: &str| BackupModeError::BadLabel(format!("no valid {what}"));
    // `0/2000028 (file 000000010000000000000002)`
    let start = field("START WAL LOCATION").ok_or_else(|| bad("START WAL LOCATION"))?;
    let (start_lsn, file) = start
        .split_once(" (file ")
        .ok_or_else(|| bad("START WAL LOCATION"))?;
    let start_wal = file.trim_end_matches(')');
    let checkpoint_lsn = field("CHECKPOINT LOCATION").ok_or_else(|| bad("CHECKPOINT LOCATION"))?;
    let timeline = field("START TIMELINE")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("START TIMELINE"))?;
    if parse_lsn(start_lsn).is_none()
        || parse_lsn(checkpoint_lsn).is_none()
        || start_wal.len() != 24
    {
        return Err(bad("location"));
    }
    Ok(BackupLabel {
        start_lsn: start_lsn.to_string(),
        start_wal: start_wal.to_string(),
        checkpoint_lsn: checkpoint_lsn.to_string(),
        timeline,
        label: field("LABEL").unwrap_or_default().to_string(),
    })
}

fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> BackupModeError {
    move |source| BackupModeError::Connection(ConnectionError::Query { what, source })
}

/// Enters backup mode on this session (after an immediate checkpoint when `fast`);
/// returns where the backup starts. Refused on a standby.
pub async fn start_backup(
    client: &Client,
    label: &str,
    fast: bool,
) -> Result<String, BackupModeError> {
    let server = ServerInfo::query(client).await?;
    if server.in_recovery {
        return Err(BackupModeError::InRecovery);
    }
    let sql = if server.major() >= 15 {
        "SELECT pg_backup_start($1, $2)::text"
    } else {
        "SELECT pg_start_backup($1, $2, false)::text"
    };
    let row = client
        .query_one(sql, &[&label, &fast])
        .await
        .map_err(query("starting backup mode"))?;
    Ok(row.get(0))
}

/// Leaves backup mode on the session that entered it. Does not wait for WAL archiving:
/// the WAL archiver streams it, and `archive_command` may not be set at all.
pub async fn stop_backup(client: &Client) -> Result<StoppedBackup, BackupModeError> {
    let server = ServerInfo::query(client).await?;
    let sql = if server.major() >= 15 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(query("stopping backup mode"))?;
    let label_file: String = row.get(1);
    Ok(StoppedBackup {
        end_lsn: row.get(0),
        label: parse_backup_label(&label_file)?,
        label_file,
        tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
    })
}

/// `CHECKPOINT`: everything committed so far is in the data files, for a crash-consistent
/// snapshot that recovers quickly.
pub async fn checkpoint(client: &Client) -> Result<(), BackupModeError> {
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(query("CHECKPOINT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2026-11-21 05:20:00 UTC\n\
        LABEL: pgbackup nightly-20261121\n\
        START TIMELINE: 1\n";

    #[test]
    fn a_label_is_read() {
        let label = parse_backup_label(LABEL).expect("label");
        assert_eq!(label.start_lsn, "0/2000028");
        assert_eq!(label.start_wal, "000000010000000000000002");
        assert_eq!(label.checkpoint_lsn, "0/2000060");
        assert_eq!(label.timeline, 1);
        assert_eq!(label.label, "pgbackup nightly-20261121");
    }

    #[test]
    fn a_damaged_label_is_refused() {
        assert!(parse_backup_label("LABEL: x\n").is_err());
        let bad = LABEL.replace("START TIMELINE: 1", "START TIMELINE: one");
        assert!(parse_backup_label(&bad).is_err());
    }
}
