//! The observed state of a PointInTimeRestore: its phase, the volumes it replaced, and
//! what it restored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::{Condition, LSN_PATTERN};

/// A claim an in-place snapshot restore replaced, and the volume it was bound to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedVolume {
    /// The claim (ordinal 0 of a volumeClaimTemplate).
    pub claim: String,
    /// The PersistentVolume it was bound to, kept until the restore is proven.
    pub persistent_volume: String,
    /// The volume's own reclaim policy, set to `Retain` meanwhile.
    pub reclaim_policy: String,
    /// The claim's storage class, to bind the volume back with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The claim's requested size, e.g. `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The VolumeSnapshot the new claim is made from.
    pub snapshot: String,
}

/// Observed state of a PointInTimeRestore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointInTimeRestoreStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Step of the restore: `Validating`, `ScalingDown`, `Restoring`, `ScalingUp`,
    /// `Verifying`, `Completed`, or `Failed` (nothing was changed) / `RollingBack` then
    /// `RolledBack` (the old data was put back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,

    /// `Ready` (restored and verified), `Progressing`, `Failed`, and warnings such as a
    /// StatefulSet managed by Argo CD or Flux.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The recovery target in words, e.g. `time 2026-11-20T12:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_target_description: Option<String>,

    /// Id of the base backup restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backup: Option<String>,

    /// The VolumeSnapshotBackup restored: the one `source.volumeSnapshotBackup` names, or
    /// the one picked from `source.backupSchedule` (a schedule of volume snapshots: the
    /// newest that reaches the target), kept for the rest of the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_backup: Option<String>,

    /// Replicas of the StatefulSet before the restore; it is always scaled back to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_replicas: Option<i32>,

    /// Name of the Job that restores the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_job_name: Option<String>,

    /// In place from a VolumeSnapshotBackup: the claims replaced by claims made from its
    /// snapshots, and the volumes they were bound to (recorded before anything changes;
    /// bound back on a rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced_volumes: Vec<ReplacedVolume>,

    /// The StatefulSet restored into (the target, or the clone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_stateful_set: Option<String>,

    /// How to reach the restored server, e.g. `pg-restore-1-0.pg-restore-1.ns.svc:5432`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,

    /// WAL location recovery stopped at.
    #[serde(
        default,
        rename = "reachedLSN",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub reached_lsn: Option<String>,

    /// Timeline of the restored server after promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_timeline: Option<i64>,

    /// Commit time of the last transaction replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transaction_time: Option<Time>,

    /// PostgreSQL version of the base backup (`serverVersion` of the plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,

    /// System identifier of the backed-up cluster: the restored server must answer with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,

    /// `true` once the operator found the backup to be of the cluster the StatefulSet
    /// runs (asked of its database, or of its completed backups): the restore Job then
    /// does not need the data it replaces to prove it (a wiped or re-initialised volume).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same_cluster_confirmed: bool,

    /// When the current phase began (its time limits count from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,

    /// Why the restore is being, or was, rolled back or failed (`PascalCase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,

    /// When the restored server was seen up and out of recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,

    /// When the restore started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the restore completed, failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// A human-readable account of the current phase or of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Step of a point-in-time restore. The phase is persisted so a restarted operator
/// resumes where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestorePhase {
    /// Checking source, recovery window, WAL continuity and versions; nothing changed yet.
    Validating,
    /// Scaling the StatefulSet to 0 and waiting for its pods to go.
    ScalingDown,
    /// The restore Job lays down the base backup and replays WAL to the target.
    Restoring,
    /// Scaling the StatefulSet back to its original replicas.
    ScalingUp,
    /// Checking that the restored server is up and out of recovery.
    Verifying,
    /// Restored and verified.
    Completed,
    /// Failed before anything was changed.
    Failed,
    /// Putting the old data back and scaling the StatefulSet back up after a failure.
    RollingBack,
    /// Failed after scaling down; the old data was put back and the StatefulSet scaled up.
    RolledBack,
}
