//! `PointInTimeRestore`: put a database back to a moment, in place or into a clone.
//!
//! Here: the kind and its spec, with the restore's mode and what becomes of replicas and
//! replaced volumes. Where it restores from is in `source`, the moment in
//! `recovery_target`, the observed state in `status`.

mod recovery_target;
mod source;
mod status;

pub use recovery_target::*;
pub use source::*;
pub use status::*;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DatabaseTarget;

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

fn default_wait_timeout() -> String {
    "15m".into()
}
