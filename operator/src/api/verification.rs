//! The result of a restore test (`pgbackup verify --restore`), as backups and schedules
//! record it in their status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The last restore test: the backup was restored into a scratch PostgreSQL and the rows
/// of every table compared with the counts recorded at backup time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// The Job that ran the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The backup id tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// When the test started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Whether the restored data was what the backup recorded; unset while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Seconds the restore took (download, unpack or pg_restore, recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
    /// Where recovery ended (physical backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_lsn: Option<String>,
    /// Tables compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<i64>,
    /// Rows found in them after the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// Tables whose row count is the one recorded at backup time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<i64>,
    /// Tables written while a physical backup ran, whose counts may differ without
    /// anything being wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_during_backup: Option<i64>,
    /// The test's result or failure, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
