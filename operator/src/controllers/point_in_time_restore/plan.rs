//! The decisions of a PointInTimeRestore reconcile (pure). The phase in status is the
//! memory: `Validating → ScalingDown → Restoring → ScalingUp → Verifying → Completed`;
//! `Failed` before anything changed; after the StatefulSet was scaled down any failure
//! goes through `RollingBack` (old data put back, replicas restored) to `RolledBack`.
//! Every step is idempotent and every phase a function of what is observed, so a
//! restarted operator resumes at the recorded phase.

use std::{collections::BTreeMap, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        batch::v1::Job,
        core::v1::{PersistentVolumeClaim, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::{
    api::{
        BackupSchedule, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY,
        PointInTimeRestore, PointInTimeRestoreStatus, PostgresBackup, RestorePhase, STATUS_FALSE,
        STATUS_TRUE, VolumeSnapshotBackup, set_condition,
    },
    controllers::{
        Note, job_state::JobState, references::References, step_plan::finish_conditions,
    },
    k8s::agent_pod::AgentSettings,
};

/// Condition `GitOpsManaged`: Argo CD or Flux manage the StatefulSet and may scale it back.
pub const CONDITION_GITOPS: &str = "GitOpsManaged";
/// How soon a restore at work is looked at again.
pub const POLL: Duration = Duration::from_secs(5);
/// How long a restore waits in a phase (`spec.waitTimeout`, checked while validating;
/// 15 minutes if it cannot be read) before it rolls back.
pub fn wait_limit(restore: &PointInTimeRestore) -> i64 {
    crate::repository::parse_duration(&restore.spec.wait_timeout).unwrap_or(15 * 60)
}

/// The source object, as read.
#[derive(Clone, Debug)]
pub enum SourceObject {
    /// `source.postgresBackup`, if it exists.
    Backup(Option<Box<PostgresBackup>>),
    /// `source.backupSchedule`, if it exists.
    Schedule(Option<Box<BackupSchedule>>),
    /// `source.volumeSnapshotBackup`, if it exists.
    Snapshot(Option<Box<VolumeSnapshotBackup>>),
}

/// What the restored server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` once out of recovery.
    pub lsn: Option<String>,
    /// The cluster's system identifier, when it could be read.
    pub system_identifier: Option<String>,
    /// Why less could be checked than asked (the server refused today's login: its roles
    /// have the passwords of the target time).
    pub note: Option<String>,
    /// The timeline of its latest checkpoint.
    pub timeline: Option<i64>,
}

/// What the reconcile saw.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The target StatefulSet and the Secrets (keys) the target and repository name.
    pub references: References,
    /// The target StatefulSet's pods.
    pub pods: Vec<Pod>,
    /// Names of the claims of interest that exist.
    pub claims: Vec<String>,
    /// The source.
    pub source: SourceObject,
    /// Other restores of the same StatefulSet that have not finished, created before this
    /// one.
    pub rivals: Vec<String>,
    /// The restore's Jobs, by name.
    pub jobs: BTreeMap<String, JobState>,
    /// In clone mode: the clone StatefulSet and its pods.
    pub clone: Option<StatefulSet>,
    /// The clone's pods.
    pub clone_pods: Vec<Pod>,
    /// The restored server's answer (asked only while verifying).
    pub verification: Option<Result<ServerState, String>>,
    /// The system identifier of the cluster the target StatefulSet runs, asked once the
    /// validation Job has passed (unless `source.allowOtherCluster`): `Err` says why it is
    /// not known.
    pub target_cluster: Option<Result<String, String>>,
    /// Pods of the restore Job still there.
    pub restore_pods: usize,
    /// The API server refused an object this reconcile tried to make, for a reason that
    /// retrying does not change (invalid, forbidden by admission or quota): its words.
    pub refused: Option<String>,
    /// In clone mode with the target StatefulSet gone: `Ok` with the PostgresBackup whose
    /// stored StatefulSet stands in for it (in `references`), or why none can.
    pub stored_stateful_set: Option<Result<String, String>>,
    /// In place from a volume snapshot: ordinal 0's claims of the snapshotted volumes and
    /// the PersistentVolumes they are, or were, bound to.
    pub volumes: super::volumes::VolumesSeen,
    /// From a schedule of volume snapshots none could be picked: why.
    pub snapshot_pick: Option<String>,
    /// Of a snapshot source, while validating: what the storage says of each snapshot and
    /// of the class its claim would be made in.
    pub snapshot_storage: Vec<super::snapshot_source::SnapshotStorage>,
    /// Of a snapshot source, while validating: the namespace's LimitRanges and
    /// ResourceQuotas (`None` where the operator may not read them).
    pub claim_limits: Option<super::claim_limits::NamespaceLimits>,
}

/// A change to make.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Create (or leave as it is) a Job.
    CreateJob(Box<Job>),
    /// Delete a Job and its pods (a restore Job that must stop).
    DeleteJob(String),
    /// Scale the target StatefulSet, recording the replicas to go back to (`record`) or
    /// removing the record (`None`).
    Scale {
        /// The new count.
        replicas: i32,
        /// The count recorded on the StatefulSet.
        record: Option<i32>,
    },
    /// Create the clone's claim.
    CreateClaim(Box<PersistentVolumeClaim>),
    /// Create the clone's Service and StatefulSet.
    CreateClone(Box<Service>, Box<StatefulSet>),
    /// Delete a claim (one of ordinal 0's, replaced in place, or made by the restore and
    /// given up on a rollback).
    DeleteClaim(String),
    /// Merge-patch a PersistentVolume (its reclaim policy, its claim reference, a note).
    PatchVolume(String, serde_json::Value),
}

/// What the reconcile does.
pub type Plan = crate::controllers::step_plan::StepPlan<Step, PointInTimeRestoreStatus>;

/// The next step for `restore`.
pub fn plan(
    restore: &PointInTimeRestore,
    observed: &Observed,
    settings: &AgentSettings,
    now: Timestamp,
) -> Plan {
    let old = restore.status.clone().unwrap_or_default();
    let mut next = Next {
        restore,
        observed,
        settings,
        status: PointInTimeRestoreStatus {
            observed_generation: restore.metadata.generation,
            ..old.clone()
        },
        steps: Vec::new(),
        requeue: Some(POLL),
        now,
    };
    let finished = matches!(
        old.phase,
        Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack)
    );
    // In place, a claim made as soon as the one it replaces is gone can be refused by a
    // quota that has not yet counted the freed one: waited for, within the wait limit.
    let claim_quota = observed.refused.as_deref().is_some_and(|words| {
        words.starts_with("to create PersistentVolumeClaim") && words.contains("exceeded quota")
    });
    match old.phase {
        _ if claim_quota
            && !finished
            && old.phase != Some(RestorePhase::RollingBack)
            && !next.overdue() =>
        {
            let words = observed.refused.clone().unwrap_or_default();
            next.wait(
                "QuotaExceeded",
                &format!(
                    "the API server refused {words}; waiting for the quota to count the claim freed"
                ),
            );
        }
        _ if observed.refused.is_some()
            && !finished
            && old.phase != Some(RestorePhase::RollingBack) =>
        {
            let words = observed.refused.clone().unwrap_or_default();
            next.roll_back("Refused", &format!("the API server refused {words}"));
        }
        None | Some(RestorePhase::Validating) => match &restore.spec.logical {
            Some(logical) => next.logical_validating(logical),
            None => next.validating(),
        },
        Some(RestorePhase::Restoring) if restore.spec.logical.is_some() => {
            next.logical_restoring();
        }
        Some(RestorePhase::ScalingDown) => next.scaling_down(),
        Some(RestorePhase::Restoring) => next.restoring(),
        Some(RestorePhase::ScalingUp) => next.scaling_up(),
        Some(RestorePhase::Verifying) => next.verifying(),
        Some(RestorePhase::RollingBack) => next.rolling_back(),
        Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack) => {
            next.requeue = None;
        }
    }
    let from_schedule = match &observed.source {
        SourceObject::Schedule(Some(s)) => {
            s.repository_for(restore.spec.source.copy.as_deref()).ok()
        }
        _ => None,
    };
    let repository = match &observed.source {
        SourceObject::Backup(Some(b)) => Some(&b.spec.repository),
        SourceObject::Schedule(Some(_)) => from_schedule.as_ref(),
        SourceObject::Snapshot(Some(v)) => v.spec.repository.as_ref(),
        _ => None,
    };
    finish_conditions(
        &mut next.status.conditions,
        Some(&restore.spec.target),
        repository,
        false,
        restore.metadata.generation,
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

/// The Event for a change of phase.
fn transition_note(old: &PointInTimeRestoreStatus, new: &PointInTimeRestoreStatus) -> Option<Note> {
    let ready_reason = |s: &PointInTimeRestoreStatus| {
        crate::api::find_condition(&s.conditions, CONDITION_READY).map(|c| c.reason.clone())
    };
    if old.phase == new.phase && ready_reason(old) == ready_reason(new) {
        return None;
    }
    let message = new.message.clone().unwrap_or_default();
    let phase = new.phase?;
    Some(match phase {
        RestorePhase::Completed => Note::normal("Completed", message),
        RestorePhase::Failed | RestorePhase::RollingBack | RestorePhase::RolledBack => {
            Note::warning(new.failure_reason.as_deref().unwrap_or("Failed"), message)
        }
        RestorePhase::Validating => match ready_reason(new) {
            Some(reason) if reason != "Validating" => Note::warning(&reason, message),
            _ => Note::normal("Validating", message),
        },
        other => Note::normal(&format!("{other:?}"), message),
    })
}

/// The status and steps under construction.
pub(super) struct Next<'a> {
    pub(super) restore: &'a PointInTimeRestore,
    pub(super) observed: &'a Observed,
    pub(super) settings: &'a AgentSettings,
    pub(super) status: PointInTimeRestoreStatus,
    pub(super) steps: Vec<Step>,
    pub(super) requeue: Option<Duration>,
    pub(super) now: Timestamp,
}

impl Next<'_> {
    pub(super) fn condition(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.restore.metadata.generation,
            Time(self.now),
        );
    }

    /// Moves to `phase`, saying `message`.
    pub(super) fn enter(&mut self, phase: RestorePhase, message: &str) {
        if self.status.phase != Some(phase) {
            self.status.phase_since = Some(Time(self.now));
        }
        self.status.phase = Some(phase);
        self.status.message = Some(message.to_string());
        self.condition(
            CONDITION_READY,
            STATUS_FALSE,
            &format!("{phase:?}"),
            message,
        );
        self.condition(
            CONDITION_PROGRESSING,
            STATUS_TRUE,
            &format!("{phase:?}"),
            message,
        );
    }

    /// Waits in the current phase, saying why.
    pub(super) fn wait(&mut self, reason: &str, message: &str) {
        self.status.message = Some(message.to_string());
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
    }

    /// Whether the current phase has waited longer than `spec.waitTimeout`.
    pub(super) fn overdue(&self) -> bool {
        let since = self.status.phase_since.as_ref().map_or(self.now, |t| t.0);
        self.now.as_second() - since.as_second() > wait_limit(self.restore)
    }

    /// Failed with nothing changed.
    pub(super) fn failed(&mut self, reason: &str, message: &str) {
        self.status.phase = Some(RestorePhase::Failed);
        self.status.phase_since = Some(Time(self.now));
        self.status.failure_reason = Some(reason.to_string());
        self.status.message = Some(message.to_string());
        self.status.completed_at = Some(Time(self.now));
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, reason, message);
        self.condition(CONDITION_FAILED, STATUS_TRUE, reason, message);
    }

    /// A failure after the StatefulSet was touched: roll back (in place), or fail (clone:
    /// the source was never touched; the clone's objects stay for inspection).
    pub(super) fn roll_back(&mut self, reason: &str, message: &str) {
        if self.restore.spec.logical.is_some() {
            // Nothing was scaled or set aside.
            return self.failed(reason, message);
        }
        if self.restore.spec.mode == crate::api::RestoreMode::Clone {
            let message = format!(
                "{message}; the source was not touched, the clone's objects are kept for inspection"
            );
            return self.failed(reason, &message);
        }
        self.status.failure_reason = Some(reason.to_string());
        self.enter(RestorePhase::RollingBack, message);
        self.steps.clear();
        self.rolling_back();
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
