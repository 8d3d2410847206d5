//! The decisions of a VolumeSnapshotBackup reconcile (pure). The stage in status is the
//! memory: `Preparing → Snapshotting → Releasing → WaitingForReadyToUse → Completed`, and
//! from any of the first three `RollingBack` (backup mode left, snapshots deleted, an
//! `offline` StatefulSet scaled back) before `Failed` or another attempt. Every step is
//! idempotent, so a reconcile may repeat any of them.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::{
    check::{live_snapshots, scale_back},
    next::Next,
    session::{SessionKind, SessionState},
};
use crate::{
    api::{
        BackupPhase, CONDITION_READY, SnapshotStage, VolumeSnapshotBackup,
        VolumeSnapshotBackupStatus, set_condition,
    },
    controllers::{
        Note, job_state::JobState, references::References, step_plan::finish_conditions,
    },
    k8s::{agent_pod::AgentSettings, generated::volume_snapshot::VolumeSnapshot},
};

/// Attempts made before a backup whose session was lost fails for good.
pub const MAX_ATTEMPTS: i32 = 3;
/// How soon a running backup is looked at again.
pub const POLL: Duration = Duration::from_secs(2);
/// How soon a backup waiting for the storage or for a missing object is looked at again.
pub const WAIT: Duration = Duration::from_secs(10);
/// How soon a backup that cannot start is looked at again.
pub const RETRY: Duration = Duration::from_secs(30);

/// What the reconcile saw.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The StatefulSet and the Secrets the spec refers to.
    pub references: References,
    /// The StatefulSet's pods.
    pub pods: Vec<Pod>,
    /// The names of the claims to snapshot that exist.
    pub claims: Vec<String>,
    /// Whether the named VolumeSnapshotClass exists; `None` when none is named.
    pub class_found: Option<bool>,
    /// Whether the named VolumeSnapshotClass has `deletionPolicy: Retain`: deleting a
    /// VolumeSnapshot of it leaves the storage system's snapshot in place.
    pub class_retains: bool,
    /// The Job that records the backup in `repository`, if it exists.
    pub record_job: Option<JobState>,
    /// The database session of this backup.
    pub session: SessionState,
    /// The VolumeSnapshots of this backup.
    pub snapshots: Vec<VolumeSnapshot>,
    /// VolumeSnapshots with this backup's names that are not its own.
    pub foreign_snapshots: Vec<String>,
}

/// A change to make.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Start the database session (after the status is written).
    StartSession(SessionKind),
    /// Tell the session to leave backup mode (after the status is written).
    StopSession,
    /// Forget the session; one in backup mode is ended with its connection (after the
    /// status is written).
    EndSession,
    /// Create (or leave as it is) the Job that records the backup in `repository`.
    CreateRecordJob(Box<Job>),
    /// Create these VolumeSnapshots (those that exist are left alone).
    CreateSnapshots(Vec<VolumeSnapshot>),
    /// Merge these annotations into every VolumeSnapshot of the backup.
    AnnotateSnapshots(BTreeMap<String, String>),
    /// Delete these VolumeSnapshots.
    DeleteSnapshots(Vec<String>),
    /// Scale the StatefulSet: to 0 recording the replicas to go back to (`original`), or
    /// back, removing the record (`original: None`).
    Scale {
        /// The new replica count.
        replicas: i32,
        /// The count recorded on the StatefulSet, or `None` to remove the record.
        original: Option<i32>,
    },
}

impl Step {
    /// Whether the step acts on the database session, which happens after the status is
    /// written (so that a session never runs ahead of what the status records).
    pub fn is_session(&self) -> bool {
        matches!(
            self,
            Step::StartSession(_) | Step::StopSession | Step::EndSession
        )
    }
}

/// What the reconcile does.
pub type Plan = crate::controllers::step_plan::StepPlan<Step, VolumeSnapshotBackupStatus>;

/// The next step for `backup`.
pub fn plan(
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
    settings: &AgentSettings,
    now: Timestamp,
) -> Plan {
    let old = backup.status.clone().unwrap_or_default();
    let mut next = Next {
        backup,
        observed,
        settings,
        status: VolumeSnapshotBackupStatus {
            observed_generation: backup.metadata.generation,
            ..old.clone()
        },
        steps: Vec::new(),
        requeue: Some(POLL),
        now,
    };
    match (old.phase, old.stage) {
        (Some(BackupPhase::Completed | BackupPhase::Failed), _) => next.requeue = None,
        // Not started, or rolled back for another attempt.
        (None | Some(BackupPhase::Pending), _) | (_, None) => next.start(),
        (_, Some(SnapshotStage::Preparing)) => next.preparing(),
        (_, Some(SnapshotStage::Snapshotting)) => next.snapshotting(),
        (_, Some(SnapshotStage::Releasing)) => next.releasing(),
        (_, Some(SnapshotStage::WaitingForReadyToUse)) => next.waiting_for_ready(),
        (_, Some(SnapshotStage::Recording)) => next.recording(),
        (_, Some(SnapshotStage::RollingBack)) => next.rolling_back(),
    }
    storage_kept(backup, observed, &mut next.status, now);
    // An offline snapshot never connects to the database.
    let connects = backup.spec.snapshot.mode != crate::api::SnapshotMode::Offline;
    finish_conditions(
        &mut next.status.conditions,
        connects.then_some(&backup.spec.target),
        backup.spec.repository.as_ref(),
        false,
        backup.metadata.generation,
        Time(now),
    );
    let event = transition_note(&old, &next.status);
    Plan {
        steps: next.steps,
        status: next.status,
        event,
        requeue: next.requeue,
    }
}

/// The condition `StorageSnapshotsKept`, said up front: when deleting this backup would
/// delete its VolumeSnapshots (`deletionPolicy: Delete`, or a schedule's retention) but
/// their class keeps the storage system's snapshots.
fn storage_kept(
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
    status: &mut VolumeSnapshotBackupStatus,
    now: Timestamp,
) {
    let deletes = backup.spec.deletion_policy == crate::api::DeletionPolicy::Delete
        || kube::ResourceExt::labels(backup).contains_key(crate::k8s::LABEL_SCHEDULE);
    if deletes && observed.class_retains {
        let class = backup
            .spec
            .snapshot
            .volume_snapshot_class_name
            .as_deref()
            .unwrap_or_default();
        set_condition(
            &mut status.conditions,
            CONDITION_STORAGE_KEPT,
            "True",
            "ClassRetains",
            &format!(
                "VolumeSnapshotClass {class} has deletionPolicy Retain: deleting this backup deletes its VolumeSnapshots, but the storage system keeps (and bills) the snapshots; delete them there, or use a class with deletionPolicy Delete"
            ),
            backup.metadata.generation,
            Time(now),
        );
    } else {
        status
            .conditions
            .retain(|c| c.type_ != CONDITION_STORAGE_KEPT);
    }
}

/// The condition type of [`storage_kept`].
pub const CONDITION_STORAGE_KEPT: &str = "StorageSnapshotsKept";

/// What deleting the object needs: the steps that leave nothing half-done (and, with
/// `deletes_data`, remove the snapshots), and whether it is all done once they are made.
pub fn cleanup(
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
    deletes_data: bool,
) -> (Vec<Step>, bool) {
    let status = backup.status.clone().unwrap_or_default();
    // Snapshots cut with the database released are whole, ready to use or not yet.
    let finished = matches!(
        status.phase,
        Some(BackupPhase::Completed | BackupPhase::Failed)
    ) || matches!(
        status.stage,
        Some(SnapshotStage::WaitingForReadyToUse | SnapshotStage::Recording)
    );
    let mut steps = Vec::new();
    if observed.session != SessionState::Absent {
        steps.push(Step::EndSession);
    }
    let present = live_snapshots(observed);
    if (!finished || deletes_data) && !present.is_empty() {
        steps.push(Step::DeleteSnapshots(present));
    }
    if let Some(step) = scale_back(backup, observed) {
        steps.push(step);
    }
    (steps, true)
}

/// The Event for a change of phase, stage or waiting reason.
fn transition_note(
    old: &VolumeSnapshotBackupStatus,
    new: &VolumeSnapshotBackupStatus,
) -> Option<Note> {
    let ready_reason = |s: &VolumeSnapshotBackupStatus| {
        crate::api::find_condition(&s.conditions, CONDITION_READY).map(|c| c.reason.clone())
    };
    if old.phase == new.phase && old.stage == new.stage && ready_reason(old) == ready_reason(new) {
        return None;
    }
    let message = new.message.clone().unwrap_or_default();
    match (new.phase?, new.stage) {
        (BackupPhase::Pending, _) if new.failure_reason.is_some() => {
            Some(Note::warning("Retrying", message))
        }
        (BackupPhase::Pending, _) => Some(Note::warning(&ready_reason(new)?, message)),
        (BackupPhase::Running, Some(SnapshotStage::Preparing)) => {
            Some(Note::normal("Started", message))
        }
        (BackupPhase::Running, Some(SnapshotStage::WaitingForReadyToUse)) => {
            Some(Note::normal("SnapshotsCut", message))
        }
        (BackupPhase::Running, Some(SnapshotStage::RollingBack)) => Some(Note::warning(
            new.failure_reason.as_deref().unwrap_or("RollingBack"),
            message,
        )),
        (BackupPhase::Running, _) => None,
        (BackupPhase::Completed, _) => Some(Note::normal("Completed", message)),
        (BackupPhase::Failed, _) => Some(Note::warning(
            new.failure_reason.as_deref().unwrap_or("Failed"),
            message,
        )),
    }
}

#[cfg(test)]
#[path = "plan_world.rs"]
mod world;

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fault_tests.rs"]
mod fault_tests;
