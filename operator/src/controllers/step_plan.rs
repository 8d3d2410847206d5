//! The frame the step-by-step controllers' pure plans return (PointInTimeRestore,
//! VolumeSnapshotBackup): the changes in order, the status to write, an Event, and when to
//! look again. Each kind names its own steps and status; the reconcile around it is the
//! same: make the changes, write the status, publish the Event, requeue. Every kind's
//! status ends with the same derived conditions ([`finish_conditions`]).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Note;
use crate::api::{Condition, DatabaseTarget, Repository};

/// What a reconcile does.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPlan<Step, Status> {
    /// Changes, in order.
    pub steps: Vec<Step>,
    /// The status to write.
    pub status: Status,
    /// An Event to publish.
    pub event: Option<Note>,
    /// When to look again; `None`: only on a change.
    pub requeue: Option<Duration>,
}

/// Sets the conditions every status ends with, derived from the rest and the spec:
/// `TransportVerified` (what reaching `target` and `repository` does not authenticate) and
/// `Reconciling`/`Stalled` mirrored for kstatus (`stalled_when_not_ready`: a `Ready` of
/// `False` counts as stalled, for kinds that are never done).
pub fn finish_conditions(
    conditions: &mut Vec<Condition>,
    target: Option<&DatabaseTarget>,
    repository: Option<&Repository>,
    stalled_when_not_ready: bool,
    generation: Option<i64>,
    now: Time,
) {
    super::transport::set(conditions, target, repository, generation, now.clone());
    crate::api::mirror_kstatus(conditions, stalled_when_not_ready, generation, now);
}
