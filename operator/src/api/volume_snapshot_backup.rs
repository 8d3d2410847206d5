//! `VolumeSnapshotBackup`: CSI VolumeSnapshots of the database's volumes, taken inside
//! `pg_backup_start`/`pg_backup_stop`, after a checkpoint, or with the database stopped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DURATION_PATTERN, DatabaseTarget, DeletionPolicy, LSN_PATTERN, Repository};

/// CSI snapshots of the data volume (and any extra volumes) of a PostgreSQL StatefulSet's
/// primary. The spec cannot be changed after creation.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "pgbackup.io",
    version = "v1alpha1",
    kind = "VolumeSnapshotBackup",
    namespaced,
    status = "VolumeSnapshotBackupStatus",
    shortname = "vsb",
    category = "pgbackup",
    doc = "CSI volume snapshots of a PostgreSQL StatefulSet's data, taken the consistent way.",
    derive = "PartialEq",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.statefulSet"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "End LSN",
        type_ = "string",
        json_path = ".status.endLSN",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("the spec of a VolumeSnapshotBackup cannot change; create a new one instead"))]
pub struct VolumeSnapshotBackupSpec {
    /// The database whose volumes are snapshotted. Credentials are needed for `online` and
    /// `checkpoint` modes.
    pub target: DatabaseTarget,

    /// How the snapshots are taken and kept.
    #[serde(flatten)]
    pub snapshot: VolumeSnapshotOptions,

    /// `Retain` keeps the VolumeSnapshots when this object is deleted; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Repository in which to record the snapshot's backup label, snapshots and WAL
    /// positions once the snapshots are ready (`pgbackup list` shows it, `pgbackup prune`
    /// keeps the WAL it needs), so that WAL archived there can replay on top of the
    /// snapshot for point-in-time restore. An `offline` snapshot's positions are read from
    /// the control file of a copy of its data snapshot (a short-lived volume made for the
    /// record Job). The data itself stays in the VolumeSnapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,

    /// Where the agent pods that record the snapshot in the repository, and forget it
    /// there, run: `nodeSelector`, `tolerations`, `affinity`, `priorityClassName`.
    #[serde(default, skip_serializing_if = "crate::api::AgentPlacement::is_empty")]
    pub placement: crate::api::AgentPlacement,

    /// CPU and memory of those agent containers. Default: requests of 50m CPU and 64Mi
    /// memory, a 256Mi memory limit (they write one small record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// How volume snapshots are taken; shared by VolumeSnapshotBackup and the template of a
/// BackupSchedule with `method: volumeSnapshot`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotOptions {
    /// VolumeSnapshotClass of the snapshots. Default: the cluster's default class for the
    /// volumes' CSI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,

    /// `online` (default): snapshot inside `pg_backup_start`/`pg_backup_stop` on a running
    /// server, with the backup label kept for restore. `checkpoint`: `CHECKPOINT`, then the
    /// snapshot (crash-consistent). `offline`: scale the StatefulSet to 0, snapshot, scale
    /// it back (downtime).
    #[serde(default)]
    pub mode: SnapshotMode,

    /// Further volumeClaimTemplates of the StatefulSet to snapshot with the data volume,
    /// e.g. a separate WAL volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_volumes: Vec<String>,

    /// How long the backup may take from its start (entering backup mode, the checkpoint,
    /// or scaling down) until every snapshot is cut, e.g. `10m`. Past it the backup fails:
    /// backup mode is left, half-made snapshots are deleted and an `offline` StatefulSet is
    /// scaled back.
    #[serde(default = "default_deadline")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deadline: String,
}

/// How a volume snapshot is made consistent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SnapshotMode {
    /// Inside `pg_backup_start`/`pg_backup_stop`.
    #[default]
    Online,
    /// After a `CHECKPOINT`; crash-consistent.
    Checkpoint,
    /// With the StatefulSet scaled to 0.
    Offline,
}

/// The step a running VolumeSnapshotBackup is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotStage {
    /// Entering backup mode, checkpointing, or scaling the StatefulSet down.
    Preparing,
    /// VolumeSnapshots created; waiting until each is cut.
    Snapshotting,
    /// Leaving backup mode, or scaling the StatefulSet back up.
    Releasing,
    /// The database is released; waiting until every snapshot is ready to use.
    WaitingForReadyToUse,
    /// Recording the snapshots, label and WAL positions in `repository`.
    Recording,
    /// Undoing a failed attempt before it is retried or the backup fails.
    RollingBack,
}

/// Observed state of a VolumeSnapshotBackup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotBackupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the backup stands: `Pending`, `Running`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<super::BackupPhase>,

    /// Where a running backup stands: `Preparing` (entering backup mode, checkpointing or
    /// scaling down), `Snapshotting` (waiting for the storage to cut the snapshots),
    /// `Releasing` (leaving backup mode or scaling back up), `WaitingForReadyToUse`
    /// (database released; the storage finishes the snapshots), `Recording` (writing the
    /// record into `repository`), `RollingBack` (undoing a
    /// failed attempt: backup mode left, snapshots deleted, replicas restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<SnapshotStage>,

    /// The attempt under way or last made, from 1. An attempt is repeated only when the
    /// operator lost the session holding backup mode (e.g. it restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,

    /// Why the attempt being rolled back, or the backup, failed (`PascalCase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,

    /// `Ready` (every snapshot is ready to use), `Progressing`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The VolumeSnapshots taken, one per volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotStatus>,

    /// WAL location where the backup starts (`online` and `checkpoint` modes).
    #[serde(default, rename = "beginLSN", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub begin_lsn: Option<String>,

    /// WAL location from which the snapshot is consistent (`online` mode).
    #[serde(default, rename = "endLSN", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub end_lsn: Option<String>,

    /// Timeline of the server when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,

    /// The `backup_label` returned by `pg_backup_stop` (`online` mode); restores write it
    /// into the restored data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_label: Option<String>,

    /// The `tablespace_map` returned by `pg_backup_stop` (`online` mode), when the server has
    /// tablespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,

    /// `server_version` of PostgreSQL when the snapshot was taken (`online`, `checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,

    /// The cluster's system identifier, when the role may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,

    /// The server's WAL segment size in bytes (for replaying WAL onto the snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_segment_size: Option<i64>,

    /// Id of the record in `repository` (`pgbackup list` shows it), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,

    /// Where the record's manifest is in `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,

    /// Replicas of the StatefulSet before an `offline` snapshot scaled it to 0; it is
    /// scaled back to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_replicas: Option<i32>,

    /// When the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the last snapshot became ready to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// A human-readable account of the current phase or of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One VolumeSnapshot of a VolumeSnapshotBackup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Name of the VolumeSnapshot.
    pub name: String,
    /// PersistentVolumeClaim it was taken from.
    pub claim_name: String,
    /// Whether the snapshot can be restored from (the CSI driver finished it).
    #[serde(default)]
    pub ready_to_use: bool,
    /// Minimum size of a volume restored from it, e.g. `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<String>,
    /// When the storage system cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
}

fn default_deadline() -> String {
    "10m".into()
}
