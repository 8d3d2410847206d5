//! The short account of a finished backup that the agent leaves in its pod's termination
//! message, where the operator reads it into the backup object's status. Kubernetes keeps
//! at most 4096 bytes of it, so it carries the manifest's facts, not its object list.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::BackupSummary;

/// Bytes of a termination message Kubernetes keeps.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// What the operator needs to know of a finished backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// The backup id.
    pub backup_id: String,
    /// Where the manifest is.
    pub location: String,
    /// SHA-256 of the manifest.
    pub manifest_sha256: String,
    /// Bytes read from the database.
    pub size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// Server version, e.g. `16.4`.
    pub server_version: String,
    /// System identifier of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Timeline (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Start LSN (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_lsn: Option<String>,
    /// End LSN (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    /// First WAL segment needed (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_wal: Option<String>,
    /// Last WAL segment needed (physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_wal: Option<String>,
    /// When the backup started.
    pub begin_time: Timestamp,
    /// When its manifest was written.
    pub end_time: Timestamp,
    /// Databases (logical); cut short when the list would not fit the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// How many databases were left out of `databases` for lack of room.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub databases_omitted: usize,
    /// `logical`, `physical` (full) or `incremental`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The backup an incremental one builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Backups a restore of this one reads (physical): 1 for a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_length: Option<u32>,
    /// Why a full backup was taken where an incremental one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
    /// The server read from and its role, e.g. `pg-1.pg.shop.svc (standby)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Longest `full_because` carried: the reason, not every line the server wrote.
const REASON_LIMIT: usize = 1000;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BackupReport {
    /// The report of a backup summary.
    pub fn of(summary: &BackupSummary) -> Self {
        let m = &summary.manifest;
        Self {
            backup_id: summary.backup_id.clone(),
            location: summary.location.clone(),
            manifest_sha256: summary.manifest_sha256.clone(),
            size: summary.size,
            stored_size: summary.stored_size,
            server_version: m.server_version.clone(),
            system_identifier: m.system_identifier.clone(),
            timeline: m.timeline,
            begin_lsn: m.begin_lsn.clone(),
            end_lsn: m.end_lsn.clone(),
            begin_wal: m.begin_wal.clone(),
            end_wal: m.end_wal.clone(),
            begin_time: m.begin_time,
            end_time: m.end_time,
            databases: m.databases.clone(),
            databases_omitted: 0,
            kind: Some(m.kind_label().to_string()),
            parent: m.parent().map(str::to_string),
            chain_length: (m.kind == crate::repository::BackupKind::Physical)
                .then(|| m.chain.len() as u32 + 1),
            full_because: summary.full_because.as_ref().map(|why| {
                let mut end = why.len().min(REASON_LIMIT);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                why[..end].to_string()
            }),
            source: Some(summary.source.clone()),
        }
    }

    /// One line of JSON that fits a termination message (databases dropped from the end
    /// until it does).
    pub fn to_message(&self) -> String {
        let mut report = self.clone();
        loop {
            let text = serde_json::to_string(&report).unwrap_or_default();
            if text.len() < TERMINATION_MESSAGE_LIMIT || report.databases.is_empty() {
                return text;
            }
            report.databases.pop();
            report.databases_omitted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(databases: usize) -> BackupReport {
        BackupReport {
            backup_id: "20261121T101500Z".into(),
            location: "s3://bucket/prefix/ns-pg/logical/20261121T101500Z/manifest.json".into(),
            manifest_sha256: "ab".repeat(32),
            size: 10,
            stored_size: 5,
            server_version: "16.4".into(),
            system_identifier: Some("7301234567890123456".into()),
            timeline: None,
            begin_lsn: None,
            end_lsn: None,
            begin_wal: None,
            end_wal: None,
            begin_time: "2026-11-21T10:15:00Z".parse().expect("time"),
            end_time: "2026-11-21T10:16:00Z".parse().expect("time"),
            databases: (0..databases).map(|i| format!("database_{i:04}")).collect(),
            databases_omitted: 0,
            kind: Some("logical".into()),
            parent: None,
            chain_length: None,
            full_because: None,
            source: Some("pg-1.pg.shop.svc (standby)".into()),
        }
    }

    #[test]
    fn a_small_report_is_kept_whole() {
        let text = report(3).to_message();
        let back: BackupReport = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, report(3));
    }

    #[test]
    fn a_long_database_list_is_cut_to_fit_and_says_how_much_is_missing() {
        let text = report(1000).to_message();
        assert!(text.len() < TERMINATION_MESSAGE_LIMIT);
        let back: BackupReport = serde_json::from_str(&text).expect("parse");
        assert!(back.databases.len() > 10);
        assert_eq!(back.databases.len() + back.databases_omitted, 1000);
        assert_eq!(back.backup_id, "20261121T101500Z");
    }
}
