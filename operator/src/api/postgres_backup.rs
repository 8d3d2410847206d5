//! `PostgresBackup`: one logical (`pg_dump`) or physical (`pg_basebackup`) backup, run as a Job.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DatabaseTarget, DeletionPolicy, JobOptions, LSN_PATTERN, Repository};

/// One backup of a PostgreSQL database into a repository. Create one by hand for an
/// ad-hoc backup; a BackupSchedule creates one per scheduled run. The spec cannot be
/// changed after creation: create a new object instead.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "pgbackup.io",
    version = "v1alpha1",
    kind = "PostgresBackup",
    namespaced,
    status = "PostgresBackupStatus",
    shortname = "pgb",
    category = "pgbackup",
    doc = "A logical or physical backup of a PostgreSQL database running in a StatefulSet.",
    derive = "PartialEq",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.statefulSet"
    ),
    printcolumn(name = "Method", type_ = "string", json_path = ".spec.method"),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".status.kind",
        description = "logical, full or incremental"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup ID", type_ = "string", json_path = ".status.backupId"),
    printcolumn(
        name = "Restores Until",
        type_ = "string",
        json_path = ".status.recoveryWindow.lastRecoverabilityPoint",
        description = "The latest moment this backup restores to (with the archived WAL)",
        priority = 1
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        format = "int64",
        json_path = ".status.storedSize",
        description = "Bytes stored in the repository"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self == oldSelf").message("the spec of a PostgresBackup cannot change; create a new backup instead"),
    validation = Rule::new("!has(self.logical) || self.method == 'logical'").message("logical options need method: logical"),
    validation = Rule::new("!has(self.physical) || self.method == 'physical'").message("physical options need method: physical"),
    validation = Rule::new("!has(self.physical) || self.physical.incremental || (!has(self.physical.fullEvery) && !has(self.physical.fullAfter) && !self.physical.fallBackToFull)").message("physical.fullEvery, fullAfter and fallBackToFull need physical.incremental: true")
)]
pub struct PostgresBackupSpec {
    /// The database to back up.
    pub target: DatabaseTarget,

    /// Where the backup is stored.
    pub repository: Repository,

    /// `logical`: `pg_dumpall --globals-only` plus one `pg_dump` archive per database;
    /// restores into any server of the same or a newer major version. `physical`: a
    /// `pg_basebackup` of the whole cluster with the WAL it needs; the base for
    /// point-in-time restore, needs a replication connection.
    pub method: BackupMethod,

    /// Options of a logical backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalOptions>,

    /// Options of a physical backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<PhysicalOptions>,

    /// `Retain` keeps the data in the repository when this object is deleted; `Delete`
    /// removes it with the object.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Restore test after the backup: restores into a scratch PostgreSQL and records a
    /// `Verified` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyOptions>,

    /// How the backup Job runs: retries, deadline, how long it is kept, resources.
    #[serde(default)]
    pub job: JobOptions,
}

/// How a backup reads the database. (Also the agent's `--method`.)
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum BackupMethod {
    /// `pg_dump` per database plus `pg_dumpall --globals-only`.
    Logical,
    /// `pg_basebackup` of the whole cluster.
    Physical,
}

/// Options of a logical backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.jobs == 1 || self.format == 'directory'").message("logical.jobs > 1 needs format: directory"))]
pub struct LogicalOptions {
    /// Databases to dump. Empty: every database that accepts connections except templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,

    /// Also dump roles and tablespaces (`pg_dumpall --globals-only`). Role passwords are
    /// included only when the backup role may read them.
    #[serde(default = "default_true")]
    pub globals: bool,

    /// `pg_dump` archive format: `custom` (each database streamed from pg_dump straight
    /// into the repository) or `directory` (a parallel dump with `jobs` workers: each file
    /// is stored as soon as pg_dump has written it, and pg_dump waits while more than 1 GiB
    /// is not stored yet, so the agent pod's `/tmp` needs about 1 GiB plus the `jobs`
    /// tables being written; give `job.resources` the ephemeral storage).
    #[serde(default)]
    pub format: DumpFormat,

    /// Parallel `pg_dump` workers per database (`directory` format only); each opens one
    /// more connection to the database.
    #[serde(default = "default_jobs")]
    #[schemars(range(min = 1, max = 64))]
    pub jobs: i32,
}

/// `pg_dump` archive format.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum DumpFormat {
    /// `pg_dump -Fc`.
    #[default]
    Custom,
    /// `pg_dump -Fd`, stored as a tar stream.
    Directory,
}

/// Options of a physical backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalOptions {
    /// Checkpoint at the start of the backup: `fast` starts at once with an immediate
    /// checkpoint; `spread` waits for a regular, throttled one (less I/O, slower start).
    #[serde(default)]
    pub checkpoint: CheckpointMode,

    /// Take an incremental backup: only the blocks changed since the newest physical
    /// backup of the cluster on its timeline, which it builds on (PostgreSQL 17 or later,
    /// with `summarize_wal = on`). Restores combine the chain with `pg_combinebackup`.
    /// Without `fullEvery` or `fullAfter` every backup builds on the previous one, and one
    /// with nothing to build on fails unless `fallBackToFull`.
    #[serde(default)]
    pub incremental: bool,

    /// With `incremental`: take a full backup instead when the newest chain already holds
    /// this many backups, its full one included (7 on a daily schedule: a full backup a
    /// week, incremental ones in between), or when there is no chain to build on yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub full_every: Option<i32>,

    /// With `incremental`: take a full backup instead when the newest chain's full backup
    /// is older than this (`7d`, `36h`, `1w`; units s, m, h, d, w), or when there is no
    /// chain to build on yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_after: Option<String>,

    /// With `incremental`: when no incremental backup can be taken (nothing of the cluster
    /// and timeline to build on, a server older than 17 or with `summarize_wal` off, WAL
    /// summaries that do not reach back to the parent), take a full one and say why in
    /// `status.message` instead of failing. Schedules usually want this.
    #[serde(default)]
    pub fall_back_to_full: bool,

    /// Where a full backup is compressed: `server` (PostgreSQL 15 or later; older servers,
    /// servers built without the algorithm and incremental backups fall back to `client`)
    /// has the server compress as it reads its files, so only the compressed stream
    /// crosses the network and is stored as it comes: about twice as fast, the CPU spent
    /// in the database's pod. `client` has the backup Job compress what the server sends,
    /// keeping that CPU off the database's node.
    #[serde(default)]
    pub compress_on: CompressOn,
}

/// Where a physical backup is compressed. (Also the agent's `--compress-on`.)
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum CompressOn {
    /// The server, as it reads its files (PostgreSQL 15+).
    #[default]
    Server,
    /// The agent, from what the server sends.
    Client,
}

/// Checkpoint mode of `pg_basebackup` / `pg_backup_start`. (Also the agent's `--checkpoint`.)
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum CheckpointMode {
    /// Immediate checkpoint.
    #[default]
    Fast,
    /// Spread checkpoint.
    Spread,
}

/// Restore test of a backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOptions {
    /// Run the restore test after the backup completes: a Job restores the backup into a
    /// scratch PostgreSQL (physical: recovered to the backup's end and promoted; logical: a
    /// new cluster) and compares the rows of every table with the counts recorded at backup
    /// time. The result is the `Verified` condition and `status.verification`. The Job
    /// needs room for the restored database in its `emptyDir`.
    #[serde(default)]
    pub enabled: bool,
}

/// Observed state of a PostgresBackup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the backup stands: `Pending`, `Running`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,

    /// `Ready` (the backup is complete and stored), `Progressing`, `Failed`, `Verified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Id of the backup in the repository: its UTC start time, e.g. `20261120T234500Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,

    /// Where the backup's manifest is, e.g. `s3://bucket/prefix/ns-pg/base/20261120T234500Z/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,

    /// When the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the backup completed (its manifest was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// Bytes read from the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,

    /// Bytes stored in the repository, after compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<i64>,

    /// SHA-256 of the backup's manifest (which holds the SHA-256 of every object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,

    /// Version of the PostgreSQL server that was backed up, e.g. `16.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,

    /// The cluster's system identifier (`pg_control_system()`), as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,

    /// Timeline the backup was taken on (physical backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,

    /// WAL location where the backup starts (physical backups).
    #[serde(default, rename = "beginLSN", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub begin_lsn: Option<String>,

    /// WAL location where the backup becomes consistent (physical backups).
    #[serde(default, rename = "endLSN", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LSN_PATTERN))]
    pub end_lsn: Option<String>,

    /// First WAL segment the backup needs (physical backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_wal: Option<String>,

    /// Last WAL segment the backup needs (physical backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_wal: Option<String>,

    /// What the backup is: `logical`, `full` (a physical backup of the whole cluster) or
    /// `incremental` (a physical backup of what changed since `parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,

    /// Backup id of the backup an incremental one builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,

    /// How many backups a restore of this one reads: 1 for a full backup, 1 plus the
    /// parent's for an incremental one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_length: Option<i64>,

    /// The server the backup was read from and its role, e.g. `pg-1.pg.shop.svc
    /// (standby)`: with `target.prefer: standby` a standby when one answered, else the
    /// primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,

    /// Databases in the backup (logical backups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,

    /// Name of the Job that runs the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,

    /// SHA-256 of the Kubernetes configuration stored with the backup (the StatefulSet,
    /// its Service and ConfigMaps), as the operator wrote it into the ConfigMap
    /// `<name>-configuration`: a clone restore whose StatefulSet is gone is made from that
    /// ConfigMap only while it still has this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_sha256: Option<String>,

    /// The moments this backup restores to (physical backups): from its end
    /// (`firstRecoverabilityPoint`) to `lastRecoverabilityPoint`. At first its end alone
    /// (`provenBy: backup`); a schedule that archives WAL widens it to the newest moment
    /// its archive holds every commit of once the archiver has read the WAL back unbroken
    /// from this backup on (`provenBy: walArchive`, `checkedAt`). A logical backup restores
    /// to the moment of its dump and has no window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_window: Option<crate::api::RecoveryWindow>,

    /// The restore test of this backup (`verify.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::api::VerificationStatus>,

    /// A human-readable account of the current phase or of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackupPhase {
    /// Accepted; the Job has not started yet.
    Pending,
    /// The Job is running.
    Running,
    /// The backup is stored and its manifest written.
    Completed,
    /// The backup failed; see `message` and the `Failed` condition.
    Failed,
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_jobs() -> i32 {
    1
}
