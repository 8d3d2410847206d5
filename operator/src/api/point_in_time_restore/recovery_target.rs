//! The moment a PointInTimeRestore restores to: a time, an LSN, a transaction, a named
//! restore point, the end of the backup, or the latest WAL.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::api::LSN_PATTERN;

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
