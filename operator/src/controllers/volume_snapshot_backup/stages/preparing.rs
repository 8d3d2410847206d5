//! Starting a snapshot backup and the Preparing stage: checks, backup mode or a checkpoint,
//! or for `offline` scaling the StatefulSet down, until the snapshots can be cut.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::super::{
    build,
    check::{check, scale_back},
    next::Next,
    plan::{MAX_ATTEMPTS, RETRY, Step},
    session::{SessionKind, SessionState},
};
use crate::api::{
    BackupPhase, CONDITION_PROGRESSING, CONDITION_READY, STATUS_FALSE, SnapshotMode, SnapshotStage,
};

impl Next<'_> {
    pub(crate) fn start(&mut self) {
        if let Err(problem) = check(self.backup, self.observed) {
            if self.waited_too_long() {
                let deadline = &self.backup.spec.snapshot.deadline;
                return self.failed(
                    problem.reason,
                    &format!("{} (gave up after waiting {deadline})", problem.message),
                );
            }
            self.status.phase = Some(BackupPhase::Pending);
            self.status.message = Some(problem.message.clone());
            self.condition(
                CONDITION_READY,
                STATUS_FALSE,
                problem.reason,
                &problem.message,
            );
            self.condition(
                CONDITION_PROGRESSING,
                STATUS_FALSE,
                problem.reason,
                &problem.message,
            );
            self.requeue = Some(RETRY);
            return;
        }
        let attempt = self.status.attempt.unwrap_or(0) + 1;
        self.status.attempt = Some(attempt);
        self.status.started_at = Some(Time(self.now));
        self.status.failure_reason = None;
        self.status.snapshots.clear();
        let name = self.backup.name_any();
        let namespace = self.backup.namespace().unwrap_or_default();
        let message = match self.mode() {
            SnapshotMode::Online => {
                self.steps.push(Step::StartSession(SessionKind::Online {
                    label: format!("pgbackup {namespace}/{name}"),
                }));
                "entering backup mode"
            }
            SnapshotMode::Checkpoint => {
                self.steps.push(Step::StartSession(SessionKind::Checkpoint));
                "running CHECKPOINT"
            }
            SnapshotMode::Offline => {
                let stateful_set = self.observed.references.stateful_set.as_ref();
                // Recorded on the StatefulSet by an attempt whose status was never
                // written: the StatefulSet may already be at 0.
                let recorded = scale_back(self.backup, self.observed).and_then(|step| match step {
                    Step::Scale { replicas, .. } => Some(replicas),
                    _ => None,
                });
                let original = recorded.or(stateful_set.map(build::replicas)).unwrap_or(1);
                self.status.original_replicas = Some(original);
                // The scaling itself is the next stage's first step, after this status
                // (with the count to go back to) is written.
                "scaling the StatefulSet to 0"
            }
        };
        let message = if attempt > 1 {
            format!("attempt {attempt} of {MAX_ATTEMPTS}: {message}")
        } else {
            message.to_string()
        };
        self.running(SnapshotStage::Preparing, &message);
    }

    pub(crate) fn preparing(&mut self) {
        if self.deadline_passed() {
            return self.deadline_exceeded();
        }
        match (self.mode(), self.observed.session.clone()) {
            (SnapshotMode::Online, SessionState::InBackup { begin_lsn, server }) => {
                self.server(&server);
                self.status.begin_lsn = Some(begin_lsn.clone());
                self.create_snapshots(&format!("in backup mode since {begin_lsn}"));
            }
            (
                SnapshotMode::Checkpoint,
                SessionState::Checkpointed {
                    redo_lsn,
                    timeline,
                    server,
                },
            ) => {
                self.server(&server);
                self.status.begin_lsn = Some(redo_lsn.clone());
                self.status.timeline = Some(i64::from(timeline));
                self.steps.push(Step::EndSession);
                self.create_snapshots(&format!("checkpoint done, redo from {redo_lsn}"));
            }
            (SnapshotMode::Checkpoint, SessionState::Absent) => {
                if self.observed.snapshots.is_empty() {
                    // The operator restarted before the checkpoint was reported: checkpoint
                    // again, nothing else was done.
                    self.steps.push(Step::StartSession(SessionKind::Checkpoint));
                } else {
                    // Snapshots were made after a checkpoint whose position is lost.
                    self.session_lost();
                }
            }
            (SnapshotMode::Online | SnapshotMode::Checkpoint, SessionState::Starting) => {}
            (
                SnapshotMode::Online | SnapshotMode::Checkpoint,
                SessionState::Failed { reason, message },
            ) => {
                self.roll_back(reason, &message);
            }
            (SnapshotMode::Online | SnapshotMode::Checkpoint, _) => self.session_lost(),
            (SnapshotMode::Offline, _) => self.scaling_down(),
        }
    }

    pub(super) fn scaling_down(&mut self) {
        let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
            return self.stateful_set_gone();
        };
        // Scaled to 0 with the record in one patch: replicas above 0 under the record were
        // set by someone else (a GitOps self-heal, an HPA, a person). Do not fight them.
        if build::replicas(stateful_set) != 0 && scale_back(self.backup, self.observed).is_some() {
            return self.roll_back(
                "ReplicasSetBack",
                "the StatefulSet's replicas were set back while it was held at 0 for an offline snapshot, before any snapshot was cut: pause whoever sets them (Argo CD: self-heal off; Flux: suspend, or the annotation kustomize.toolkit.fluxcd.io/reconcile: disabled; an HPA: remove it) for offline snapshots",
            );
        }
        if build::replicas(stateful_set) != 0 || scale_back(self.backup, self.observed).is_none() {
            self.steps.push(Step::Scale {
                replicas: 0,
                original: Some(self.status.original_replicas.unwrap_or(1)),
            });
        }
        let left = build::pods_of(stateful_set, &self.observed.pods).len();
        if left == 0 {
            self.create_snapshots("the StatefulSet's pods are gone");
        } else {
            self.running(
                SnapshotStage::Preparing,
                &format!("scaling the StatefulSet to 0: waiting for {left} pod(s) to stop"),
            );
        }
    }

    /// Whether a backup that cannot start has waited longer than its deadline: it then
    /// fails rather than hold up its schedule for ever.
    fn waited_too_long(&self) -> bool {
        // Since the last attempt started, else since the object was made.
        let since = self
            .status
            .started_at
            .as_ref()
            .or(self.backup.metadata.creation_timestamp.as_ref())
            .map_or(self.now, |t| t.0);
        let deadline =
            crate::repository::parse_duration(&self.backup.spec.snapshot.deadline).unwrap_or(600);
        self.now.as_second() - since.as_second() > deadline
    }
}
