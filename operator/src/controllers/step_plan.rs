//! The frame the step-by-step controllers' pure plans return (PointInTimeRestore,
//! VolumeSnapshotBackup): the changes in order, the status to write, an Event, and when to
//! look again. Each kind names its own steps and status; the reconcile around it is the
//! same: make the changes, write the status, publish the Event, requeue.

use std::time::Duration;

use super::Note;

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
