//! `PointInTimeRestore`: put a database back to a moment, in place or into a clone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DatabaseTarget, LSN_PATTERN};

/// Restores a PostgreSQL StatefulSet to a moment: in place (scale down, restore base
/// backup and WAL, scale up; the old data is kept until the new data is proven) or into a
/// new clone StatefulSet beside it. The spec cannot be changed after creation.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "pgbackup.io",
    version = "v1alpha1",
    kind = "PointInTimeRestore",
    namespaced,
    status = "PointInTimeRestoreStatus",
    shortname = "pitr",
    category = "pgbackup",
    doc = "A point-in-time restore of a PostgreSQL StatefulSet, in place or into a clone.",
    derive = "PartialEq",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.statefulSet"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Recovery Target",
        type_ = "string",
        json_path = ".status.recoveryTargetDescription"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self == oldSelf").message("the spec of a PointInTimeRestore cannot change; create a new one instead"),
    validation = Rule::new("self.mode != 'inPlace' || self.confirm || has(self.logical)").message("mode: inPlace replaces the StatefulSet's data; set confirm: true to go ahead"),
    validation = Rule::new("!has(self.logical) || !(has(self.logical.clean) && self.logical.clean) || self.confirm").message("logical.clean replaces what the restore brings back; set confirm: true to go ahead"),
    validation = Rule::new("!has(self.logical) || self.mode == 'inPlace'").message("a logical restore goes into the target's running server: mode: inPlace (beside the live data: logical.intoDatabase)"),
    validation = Rule::new("!has(self.logical) || (has(self.recoveryTarget.immediate) && self.recoveryTarget.immediate)").message("a logical backup puts back the moment of its dump: recoveryTarget: {immediate: true}"),
    validation = Rule::new("!has(self.logical) || (!has(self.source.volumeSnapshotBackup) && !has(self.source.copy))").message("a logical restore reads a logical PostgresBackup, or a logical schedule's newest one, from its own repository")
)]
pub struct PointInTimeRestoreSpec {
    /// The StatefulSet to restore into (`inPlace`) or to clone (`clone`). Its credentials
    /// are used to verify the restored server.
    pub target: DatabaseTarget,

    /// The backups to restore from.
    pub source: RestoreSource,

    /// The moment to restore to.
    pub recovery_target: RecoveryTarget,

    /// `inPlace`: restore into the StatefulSet itself (downtime while it is scaled to 0;
    /// needs `confirm: true`). `clone`: restore into a new StatefulSet
    /// `<statefulSet>-<restore name>` with new volumes; the original is not touched.
    pub mode: RestoreMode,

    /// Must be `true` for `mode: inPlace`: the StatefulSet's current data is replaced
    /// (kept aside until the restored server is proven, then removed).
    #[serde(default)]
    pub confirm: bool,

    /// Where the restore's agent pods run (its validation, restore, clean-up and replica
    /// Jobs): `nodeSelector`, `tolerations`, `affinity`, `priorityClassName`. A pod that
    /// mounts a claim also goes where the claim's volume is.
    #[serde(default, skip_serializing_if = "crate::api::AgentPlacement::is_empty")]
    pub placement: crate::api::AgentPlacement,

    /// CPU and memory of the restore's agent containers (validation, restore, clean-up and
    /// replica Jobs). The restore Job unpacks the backup, combines incremental chains and
    /// replays WAL in a PostgreSQL it runs itself, so a large database may want more than
    /// the default: requests of 100m CPU and 256Mi memory, a 1Gi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,

    /// What happens to the volumes of replicas (ordinals 1 and up) in place: `reinitialize`
    /// empties them so they re-clone from the restored primary; `keep` leaves them (for
    /// images that re-clone by themselves).
    #[serde(default)]
    pub replicas: ReplicaPolicy,

    /// In place from a VolumeSnapshotBackup, the claims of ordinal 0 are replaced by claims
    /// made from the snapshots; the volumes they were bound to are kept (reclaim policy
    /// `Retain`) until the restored server is proven, and bound back if the restore fails.
    /// Then `keep` (default) leaves them `Released`, annotated with this restore (bind one
    /// back, or delete it, by hand), `delete` gives them back their own reclaim policy
    /// (with `Delete`, the storage removes them).
    #[serde(default)]
    pub previous_volumes: PreviousVolumes,

    /// How long the restore waits in a phase for something outside it — the pods to stop,
    /// a claim to be freed, the restore pod to start, the restored pod to be ready and its
    /// server to answer out of recovery — before it rolls back, e.g. `30m` or `1h` (units
    /// `s`, `m`, `h`, `d`). Raise it for a database whose start after a restore replays a
    /// lot of WAL. The restore Job's own work is not limited by it.
    #[serde(default = "default_wait_timeout")]
    pub wait_timeout: String,

    /// Restore a logical backup (a dump), whole or in part, into the target's running
    /// server instead: no scaling down, no WAL. The source is a logical PostgresBackup, or
    /// a logical BackupSchedule (its newest completed backup); `mode: inPlace` and
    /// `recoveryTarget: {immediate: true}` (the moment of the dump). The target's
    /// credentials must be allowed to create what is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalRestore>,
}

/// What of a logical backup to restore, and where.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.database) || (!has(self.schemas) || size(self.schemas) == 0) && (!has(self.tables) || size(self.tables) == 0) && !(has(self.schemaOnly) && self.schemaOnly) && !(has(self.dataOnly) && self.dataOnly) && !has(self.intoDatabase)").message("schemas, tables, schemaOnly, dataOnly and intoDatabase restore one database: name it in logical.database"),
    validation = Rule::new("!(has(self.schemaOnly) && self.schemaOnly && has(self.dataOnly) && self.dataOnly)").message("set at most one of logical.schemaOnly and logical.dataOnly")
)]
pub struct LogicalRestore {
    /// The one database of the backup to restore (else every database it holds, with
    /// the roles and tablespaces of the backup, each into its own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub database: Option<String>,

    /// Only these schemas, with everything in them (created when the database lacks
    /// them). Names are matched exactly, case included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub schemas: Vec<String>,

    /// Only these tables (`schema.table`, or `table` in any schema; `"a.b"."c"` quotes a
    /// dot), each with its rows, indexes, constraints, defaults, triggers, owned
    /// sequences, comments and grants; a foreign key only when the tables it joins come
    /// too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub tables: Vec<String>,

    /// Definitions without rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub schema_only: bool,

    /// Rows only, into tables that exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_only: bool,

    /// Restore into this database instead of the backup's, created when missing (and
    /// dropped again when the restore fails): the everyday "I deleted rows" case puts a
    /// table back next to the live one, e.g. `shop_yesterday`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub into_database: Option<String>,

    /// Replace what exists: a whole database is dropped and re-created (after the dump
    /// was read and checked whole), selected objects are dropped and re-created in the
    /// one transaction of a partial restore. Without it, what exists refuses the restore
    /// and nothing changes. Needs `confirm: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean: bool,

    /// Restore no owners or grants: for a server without the backup's roles.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_owner: bool,

    /// pg_restore processes for a whole database of a directory-format (parallel) dump;
    /// a partial restore runs in one transaction and uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub jobs: Option<i32>,
}

impl LogicalRestore {
    /// The `pgbackup restore --logical` options it asks for.
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = vec!["--logical".to_string()];
        let mut pair = |flag: &str, value: &str| args.extend([flag.to_string(), value.into()]);
        if let Some(database) = &self.database {
            pair("--database", database);
        }
        for schema in &self.schemas {
            pair("--schema", schema);
        }
        for table in &self.tables {
            pair("--table", table);
        }
        if let Some(into) = &self.into_database {
            pair("--into-database", into);
        }
        if let Some(jobs) = self.jobs {
            pair("--jobs", &jobs.to_string());
        }
        let flags = [
            (self.schema_only, "--schema-only"),
            (self.data_only, "--data-only"),
            (self.clean, "--clean"),
            (self.no_owner, "--no-owner"),
        ];
        args.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f.to_string()),
        );
        args
    }
}

/// Where the base backup and WAL come from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.postgresBackup) ? 1 : 0) + (has(self.volumeSnapshotBackup) ? 1 : 0) + (has(self.backupSchedule) ? 1 : 0) == 1"
).message("set exactly one of source.postgresBackup, source.volumeSnapshotBackup or source.backupSchedule"),
  validation = Rule::new("!has(self.copy) || has(self.backupSchedule)").message("source.copy names a copy of source.backupSchedule: set that too"))]
pub struct RestoreSource {
    /// A completed physical PostgresBackup in this namespace; WAL comes from its
    /// repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_backup: Option<String>,

    /// A completed VolumeSnapshotBackup in this namespace; WAL comes from its repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_backup: Option<String>,

    /// A BackupSchedule in this namespace: the newest base backup that ended before the
    /// recovery target is picked, and WAL comes from the schedule's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,

    /// With `backupSchedule`: read the base backup and WAL from that schedule's second
    /// copy of this name (`spec.copies[].name`) instead of its repository, e.g. when the
    /// first repository is lost or unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub copy: Option<String>,

    /// Restore a backup of another PostgreSQL cluster (another system identifier) than
    /// the one the StatefulSet runs. Off by default: a backup carries its server's
    /// configuration, which runs in the restored pods (preload libraries, commands) with
    /// the StatefulSet's ServiceAccount and Secrets, so a backup of a server someone else
    /// runs could take the database over. Turn it on only for a repository whose writers
    /// you trust, e.g. to move a database from another cluster; the admission policy
    /// admits it only from a user who may update the StatefulSet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_other_cluster: bool,
}

/// The moment to restore to: exactly one of `time`, `lsn`, `xid`, `name`, `immediate`,
/// `latest`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "(has(self.time) ? 1 : 0) + (has(self.lsn) ? 1 : 0) + (has(self.xid) ? 1 : 0) + (has(self.name) ? 1 : 0) + ((has(self.immediate) && self.immediate) ? 1 : 0) + ((has(self.latest) && self.latest) ? 1 : 0) == 1"
    ).message("set exactly one of recoveryTarget.time, lsn, xid, name, immediate: true or latest: true"),
    validation = Rule::new("!has(self.inclusive) || has(self.time) || has(self.lsn) || has(self.xid)").message("recoveryTarget.inclusive goes with time, lsn or xid")
)]
pub struct RecoveryTarget {
    /// Restore to this moment (RFC 3339, e.g. `2026-11-20T12:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,

    /// Restore to this WAL location, e.g. `0/3000028`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub lsn: Option<String>,

    /// Restore up to this transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3))]
    pub xid: Option<i64>,

    /// Restore to a restore point made with `pg_create_restore_point(name)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,

    /// Restore only the base backup, to the earliest consistent moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immediate: Option<bool>,

    /// Replay all archived WAL: the newest state the repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,

    /// Stop just after the target (`true`, default) or just before it (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusive: Option<bool>,

    /// Timeline to recover along: `latest` (default), `current` (the base backup's), or a
    /// timeline number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(latest|current|[1-9][0-9]*)$"))]
    pub timeline: Option<String>,
}

/// Where a restore goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RestoreMode {
    /// Into the target StatefulSet.
    InPlace,
    /// Into a new StatefulSet beside it.
    Clone,
}

/// What an in-place restore does with replica volumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicaPolicy {
    /// Empty replica volumes so they re-clone from the restored primary.
    #[default]
    Reinitialize,
    /// Leave replica volumes as they are.
    Keep,
}

/// What happens to the volumes an in-place snapshot restore replaced, once it is proven.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PreviousVolumes {
    /// Leave them released, with reclaim policy `Retain`.
    #[default]
    Keep,
    /// Give them back their own reclaim policy.
    Delete,
}

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

fn default_wait_timeout() -> String {
    "15m".into()
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
