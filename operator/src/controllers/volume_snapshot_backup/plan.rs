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
use kube::ResourceExt;

use super::{
    build::{self, Volume},
    session::{REASON_SESSION_LOST, REASON_UNREACHABLE, SessionKind, SessionState},
};
use crate::{
    agent::record_snapshot::RecordReport,
    api::{
        BackupPhase, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY, STATUS_FALSE,
        STATUS_TRUE, SnapshotMode, SnapshotStage, SnapshotStatus, VolumeSnapshotBackup,
        VolumeSnapshotBackupStatus, set_condition,
    },
    controllers::job_state::JobState,
    controllers::{
        Note,
        references::{self, Problem, References},
    },
    k8s::{agent_pod::AgentSettings, generated::volume_snapshot::VolumeSnapshot},
    postgres::{ServerInfo, StoppedBackup},
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
    /// The Job that records the backup in `repository`, if it exists.
    pub record_job: Option<JobState>,
    /// The database session of this backup.
    pub session: SessionState,
    /// The VolumeSnapshots of this backup.
    pub snapshots: Vec<VolumeSnapshot>,
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
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Changes, in order.
    pub steps: Vec<Step>,
    /// The status to write.
    pub status: VolumeSnapshotBackupStatus,
    /// An Event to publish.
    pub event: Option<Note>,
    /// When to look again; `None`: only on a change.
    pub requeue: Option<Duration>,
}

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
    let event = transition_note(&old, &next.status);
    Plan {
        steps: next.steps,
        status: next.status,
        event,
        requeue: next.requeue,
    }
}

/// What deleting the object needs: the steps that leave nothing half-done (and, with
/// `deletes_data`, remove the snapshots), and whether it is all done once they are made.
pub fn cleanup(
    backup: &VolumeSnapshotBackup,
    observed: &Observed,
    deletes_data: bool,
) -> (Vec<Step>, bool) {
    let status = backup.status.clone().unwrap_or_default();
    let finished = matches!(
        status.phase,
        Some(BackupPhase::Completed | BackupPhase::Failed)
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

/// Checks before anything is touched; the first problem found.
pub fn check(backup: &VolumeSnapshotBackup, observed: &Observed) -> Result<(), Problem> {
    let spec = &backup.spec;
    let namespace = backup.namespace().unwrap_or_default();
    let target = &spec.target;
    let offline = spec.snapshot.mode == SnapshotMode::Offline;
    if let Some(repository) = &spec.repository {
        if offline {
            return Err(Problem::new(
                "InvalidSpec",
                "repository records a snapshot's backup label and WAL positions, which offline snapshots do not have: remove repository or use mode online or checkpoint",
            ));
        }
        references::check_repository_supported(repository)?;
    }
    let Some(stateful_set) = &observed.references.stateful_set else {
        return Err(Problem::new(
            "StatefulSetNotFound",
            format!(
                "StatefulSet {namespace}/{} does not exist (target.statefulSet)",
                target.stateful_set
            ),
        ));
    };
    if !offline {
        references::check(
            &namespace,
            target,
            spec.repository.as_ref(),
            &observed.references,
        )?;
    }
    let pod = build::primary_pod(backup);
    let Some(volumes) = build::volumes(backup) else {
        return Err(Problem::new(
            "InvalidSpec",
            format!(
                "target.pod {pod} is not a pod of StatefulSet {} (its pods are named {}-<ordinal>)",
                target.stateful_set, target.stateful_set
            ),
        ));
    };
    let templates: Vec<String> = stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .map(|t| t.iter().map(|c| c.name_any()).collect())
        .unwrap_or_default();
    for volume in &volumes {
        if !templates.contains(&volume.template) {
            return Err(Problem::new(
                "ClaimTemplateNotFound",
                format!(
                    "StatefulSet {namespace}/{} has no volumeClaimTemplate {:?} (it has: {}); set target.dataVolumeClaimTemplate or includeVolumes",
                    target.stateful_set,
                    volume.template,
                    if templates.is_empty() {
                        "none".to_string()
                    } else {
                        templates.join(", ")
                    }
                ),
            ));
        }
        if !observed.claims.contains(&volume.claim) {
            return Err(Problem::new(
                "ClaimNotFound",
                format!(
                    "PersistentVolumeClaim {namespace}/{} does not exist (volumeClaimTemplate {} of pod {pod})",
                    volume.claim, volume.template
                ),
            ));
        }
    }
    if observed.class_found == Some(false) {
        return Err(Problem::new(
            "VolumeSnapshotClassNotFound",
            format!(
                "VolumeSnapshotClass {} does not exist (volumeSnapshotClassName); `kubectl get volumesnapshotclass` lists those there are",
                spec.snapshot
                    .volume_snapshot_class_name
                    .as_deref()
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(by) = stateful_set
        .annotations()
        .get(build::ANNOTATION_SCALED_DOWN_BY)
        && *by != build::scaled_down_by(backup)
    {
        return Err(Problem::new(
            "StatefulSetBusy",
            format!(
                "StatefulSet {namespace}/{} is scaled down by {by}; waiting until it is back",
                target.stateful_set
            ),
        ));
    }
    if !offline {
        let ready = observed
            .pods
            .iter()
            .find(|p| p.name_any() == pod)
            .is_some_and(build::pod_ready);
        if !ready {
            return Err(Problem::new(
                "PodNotReady",
                format!(
                    "pod {namespace}/{pod} is not ready; the database must run for an {} snapshot",
                    build::mode_name(backup)
                ),
            ));
        }
    }
    Ok(())
}

/// The step that puts an `offline` StatefulSet back, if it is not back yet.
fn scale_back(backup: &VolumeSnapshotBackup, observed: &Observed) -> Option<Step> {
    let original = backup.status.as_ref()?.original_replicas?;
    let stateful_set = observed.references.stateful_set.as_ref()?;
    let recorded_by_us = stateful_set
        .annotations()
        .get(build::ANNOTATION_SCALED_DOWN_BY)
        .is_some_and(|by| *by == build::scaled_down_by(backup));
    (recorded_by_us || build::replicas(stateful_set) == 0).then_some(Step::Scale {
        replicas: original,
        original: None,
    })
}

/// Names of the backup's snapshots not yet being deleted.
fn live_snapshots(observed: &Observed) -> Vec<String> {
    observed
        .snapshots
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| s.name_any())
        .collect()
}

/// Whether a failure with this reason is worth another attempt.
fn retryable(reason: &str) -> bool {
    reason == REASON_SESSION_LOST || reason == REASON_UNREACHABLE
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

/// The status and steps under construction.
struct Next<'a> {
    backup: &'a VolumeSnapshotBackup,
    observed: &'a Observed,
    settings: &'a AgentSettings,
    status: VolumeSnapshotBackupStatus,
    steps: Vec<Step>,
    requeue: Option<Duration>,
    now: Timestamp,
}

impl Next<'_> {
    fn condition(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.backup.metadata.generation,
            Time(self.now),
        );
    }

    fn mode(&self) -> SnapshotMode {
        self.backup.spec.snapshot.mode
    }

    fn volumes(&self) -> Vec<Volume> {
        build::volumes(self.backup).unwrap_or_default()
    }

    /// Running, at `stage`, saying `message`.
    fn running(&mut self, stage: SnapshotStage, message: &str) {
        self.status.phase = Some(BackupPhase::Running);
        self.status.stage = Some(stage);
        self.status.message = Some(message.to_string());
        self.condition(CONDITION_READY, STATUS_FALSE, "Running", message);
        self.condition(
            CONDITION_PROGRESSING,
            STATUS_TRUE,
            &format!("{stage:?}"),
            message,
        );
    }

    fn start(&mut self) {
        if let Err(problem) = check(self.backup, self.observed) {
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
                let recorded = stateful_set
                    .filter(|s| {
                        s.annotations().get(build::ANNOTATION_SCALED_DOWN_BY)
                            == Some(&build::scaled_down_by(self.backup))
                    })
                    .and_then(|s| s.annotations().get(build::ANNOTATION_ORIGINAL_REPLICAS))
                    .and_then(|r| r.parse().ok());
                let original = recorded.or(stateful_set.map(build::replicas)).unwrap_or(1);
                self.status.original_replicas = Some(original);
                self.steps.push(Step::Scale {
                    replicas: 0,
                    original: Some(original),
                });
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

    fn deadline_passed(&self) -> bool {
        let deadline =
            crate::repository::parse_duration(&self.backup.spec.snapshot.deadline).unwrap_or(600);
        let started = self.status.started_at.as_ref().map_or(self.now, |t| t.0);
        self.now.as_second() - started.as_second() > deadline
    }

    fn preparing(&mut self) {
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
                // The operator restarted before the checkpoint was reported: checkpoint
                // again, nothing else was done.
                self.steps.push(Step::StartSession(SessionKind::Checkpoint));
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

    fn scaling_down(&mut self) {
        let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
            return self.stateful_set_gone();
        };
        if build::replicas(stateful_set) != 0 {
            self.steps.push(Step::Scale {
                replicas: 0,
                original: self.status.original_replicas,
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

    fn create_snapshots(&mut self, why: &str) {
        let snapshots: Vec<VolumeSnapshot> = self
            .volumes()
            .iter()
            .map(|v| build::volume_snapshot(self.backup, v))
            .collect();
        let names: Vec<String> = snapshots.iter().map(|s| s.name_any()).collect();
        self.steps.push(Step::CreateSnapshots(snapshots));
        self.running(
            SnapshotStage::Snapshotting,
            &format!("{why}; VolumeSnapshot(s) {} created", names.join(", ")),
        );
    }

    /// Reads the snapshots into status; whether every one is cut, and the first error.
    fn follow_snapshots(&mut self) -> (bool, bool, Option<String>) {
        let mut all_cut = true;
        let mut all_ready = true;
        let mut error = None;
        let mut statuses = Vec::new();
        for volume in self.volumes() {
            let found = self.observed.snapshots.iter().find(|s| {
                s.name_any() == volume.snapshot && s.metadata.deletion_timestamp.is_none()
            });
            let status = found.and_then(|s| s.status.as_ref());
            let creation_time = status
                .and_then(|s| s.creation_time.as_deref())
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(Time);
            let ready = status.and_then(|s| s.ready_to_use).unwrap_or(false);
            all_cut &= creation_time.is_some();
            all_ready &= ready;
            if error.is_none()
                && let Some(e) = status.and_then(|s| s.error.as_ref())
            {
                error = Some(format!(
                    "VolumeSnapshot {}: {}",
                    volume.snapshot,
                    e.message.as_deref().unwrap_or("error without a message")
                ));
            }
            if found.is_none() {
                all_cut = false;
                all_ready = false;
            }
            statuses.push(SnapshotStatus {
                name: volume.snapshot.clone(),
                claim_name: volume.claim.clone(),
                ready_to_use: ready,
                restore_size: status.and_then(|s| s.restore_size.clone()),
                creation_time,
            });
        }
        self.status.snapshots = statuses;
        (all_cut, all_ready, error)
    }

    fn snapshotting(&mut self) {
        let (all_cut, _, error) = self.follow_snapshots();
        let missing: Vec<VolumeSnapshot> = self
            .volumes()
            .iter()
            .filter(|v| {
                !self
                    .observed
                    .snapshots
                    .iter()
                    .any(|s| s.name_any() == v.snapshot)
            })
            .map(|v| build::volume_snapshot(self.backup, v))
            .collect();
        if !missing.is_empty() {
            self.steps.push(Step::CreateSnapshots(missing));
        }
        match (self.mode(), &self.observed.session) {
            (SnapshotMode::Online, SessionState::InBackup { .. }) => {}
            (SnapshotMode::Online, SessionState::Failed { reason, message }) => {
                return self.roll_back(reason, &message.clone());
            }
            (SnapshotMode::Online, _) => return self.session_lost(),
            (SnapshotMode::Offline, _) => {
                let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
                    return self.stateful_set_gone();
                };
                if build::replicas(stateful_set) != 0 {
                    return self.roll_back(
                        "ScaledUpDuringSnapshot",
                        "the StatefulSet was scaled up while its volumes were being snapshotted (by a person, or by Argo CD or Flux syncing replicas back: pause the sync for offline snapshots)",
                    );
                }
            }
            (SnapshotMode::Checkpoint, _) => {}
        }
        if all_cut {
            return self.cut();
        }
        if self.deadline_passed() {
            return self.deadline_exceeded_with(error);
        }
        let message = match error {
            Some(error) => format!("waiting for the snapshot(s) to be cut; last error: {error}"),
            None => "waiting for the snapshot(s) to be cut".to_string(),
        };
        self.running(SnapshotStage::Snapshotting, &message);
    }

    /// Every snapshot is cut: release the database.
    fn cut(&mut self) {
        match self.mode() {
            SnapshotMode::Online => {
                self.steps.push(Step::StopSession);
                self.running(
                    SnapshotStage::Releasing,
                    "snapshot(s) cut; leaving backup mode",
                );
            }
            SnapshotMode::Checkpoint => {
                self.annotate_snapshots(None);
                self.released("snapshot(s) cut");
            }
            SnapshotMode::Offline => {
                if let Some(step) = scale_back(self.backup, self.observed) {
                    self.steps.push(step);
                }
                self.annotate_snapshots(None);
                let original = self.status.original_replicas.unwrap_or(1);
                self.released(&format!(
                    "snapshot(s) cut; StatefulSet scaled back to {original}"
                ));
            }
        }
    }

    fn annotate_snapshots(&mut self, stopped: Option<&StoppedBackup>) {
        let mut annotations = BTreeMap::new();
        if let Some(stopped) = stopped {
            annotations.insert(
                build::ANNOTATION_BACKUP_LABEL.to_string(),
                stopped.label_file.clone(),
            );
            if !stopped.tablespace_map.is_empty() {
                annotations.insert(
                    build::ANNOTATION_TABLESPACE_MAP.to_string(),
                    stopped.tablespace_map.clone(),
                );
            }
            annotations.insert(
                build::ANNOTATION_END_LSN.to_string(),
                stopped.end_lsn.clone(),
            );
        }
        if let Some(lsn) = &self.status.begin_lsn {
            annotations.insert(build::ANNOTATION_BEGIN_LSN.to_string(), lsn.clone());
        }
        if let Some(timeline) = self.status.timeline {
            annotations.insert(build::ANNOTATION_TIMELINE.to_string(), timeline.to_string());
        }
        if !annotations.is_empty() {
            self.steps.push(Step::AnnotateSnapshots(annotations));
        }
    }

    fn released(&mut self, why: &str) {
        self.requeue = Some(WAIT);
        self.running(
            SnapshotStage::WaitingForReadyToUse,
            &format!("{why}; waiting for the storage to make them ready to use"),
        );
    }

    fn releasing(&mut self) {
        self.follow_snapshots();
        match (self.mode(), self.observed.session.clone()) {
            (SnapshotMode::Online, SessionState::Stopped(stopped)) => {
                self.status.begin_lsn = Some(stopped.label.start_lsn.clone());
                self.status.end_lsn = Some(stopped.end_lsn.clone());
                self.status.timeline = Some(i64::from(stopped.label.timeline));
                self.status.backup_label = Some(stopped.label_file.clone());
                self.status.tablespace_map =
                    Some(stopped.tablespace_map.clone()).filter(|m| !m.is_empty());
                self.annotate_snapshots(Some(&stopped));
                self.steps.push(Step::EndSession);
                self.released(&format!(
                    "snapshot(s) cut; backup mode left at {}",
                    stopped.end_lsn
                ));
            }
            (SnapshotMode::Online, SessionState::InBackup { .. } | SessionState::Stopping) => {
                self.steps.push(Step::StopSession);
            }
            (SnapshotMode::Online, SessionState::Failed { reason, message }) => {
                self.roll_back(reason, &message);
            }
            (SnapshotMode::Online, _) => self.session_lost(),
            // Only online backups stop here; anything else moves on.
            _ => self.cut(),
        }
    }

    fn waiting_for_ready(&mut self) {
        self.requeue = Some(WAIT);
        let (_, all_ready, error) = self.follow_snapshots();
        let gone: Vec<String> = self
            .status
            .snapshots
            .iter()
            .filter(|s| {
                !self
                    .observed
                    .snapshots
                    .iter()
                    .any(|o| o.name_any() == s.name)
            })
            .map(|s| s.name.clone())
            .collect();
        if !gone.is_empty() {
            return self.failed(
                "SnapshotDeleted",
                &format!(
                    "VolumeSnapshot(s) {} were deleted before they were ready to use",
                    gone.join(", ")
                ),
            );
        }
        if all_ready {
            if self.backup.spec.repository.is_some() {
                return self.record();
            }
            return self.completed("");
        }
        let message = match error {
            Some(error) => {
                format!("waiting for the snapshot(s) to be ready to use; last error: {error}")
            }
            None => "waiting for the snapshot(s) to be ready to use".into(),
        };
        self.running(SnapshotStage::WaitingForReadyToUse, &message);
    }

    fn server(&mut self, server: &ServerInfo) {
        self.status.server_version = Some(server.version.clone());
        self.status.system_identifier = server.system_identifier.clone();
        self.status.wal_segment_size = i64::try_from(server.wal_segment_size).ok();
    }

    fn completed(&mut self, recorded: &str) {
        self.status.phase = Some(BackupPhase::Completed);
        self.status.stage = None;
        self.status.completed_at = Some(Time(self.now));
        let started = self.status.started_at.as_ref().map_or(self.now, |t| t.0);
        let seconds = (self.now.as_second() - started.as_second()).max(0);
        let names: Vec<&str> = self
            .status
            .snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let message = format!(
            "VolumeSnapshot(s) {} ready to use, {seconds} s after the start{recorded}",
            names.join(", ")
        );
        self.status.message = Some(message.clone());
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_TRUE, "Completed", &message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, "Completed", "");
        self.condition(CONDITION_FAILED, STATUS_FALSE, "Completed", "");
    }

    /// Every snapshot is ready: record them in the repository.
    fn record(&mut self) {
        match build::record_job(self.backup, &self.status, self.settings) {
            Ok(job) => {
                self.steps.push(Step::CreateRecordJob(Box::new(job)));
                self.requeue = Some(POLL);
                self.running(
                    SnapshotStage::Recording,
                    "snapshot(s) ready to use; recording them in the repository",
                );
            }
            Err(why) => self.failed("RecordFailed", &why),
        }
    }

    fn recording(&mut self) {
        self.follow_snapshots();
        match &self.observed.record_job {
            None => self.record(),
            Some(JobState::Active { stuck: None, .. }) => self.requeue = Some(POLL),
            Some(JobState::Active {
                stuck: Some((reason, message)),
                ..
            }) => {
                let message = format!("the record Job's pod cannot start ({reason}): {message}");
                self.running(SnapshotStage::Recording, &message);
                self.requeue = Some(WAIT);
            }
            Some(JobState::Succeeded { result, .. }) => {
                let report = result
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<RecordReport>(r).ok());
                match report {
                    Some(report) => {
                        self.status.backup_id = Some(report.backup_id.clone());
                        self.status.location = Some(report.location);
                        self.completed(&format!(
                            "; recorded in the repository as {}",
                            report.backup_id
                        ));
                    }
                    None => self.failed(
                        "RecordFailed",
                        "the record Job succeeded but left no report; the VolumeSnapshots are kept and usable",
                    ),
                }
            }
            Some(JobState::Failed {
                reason, message, ..
            }) => {
                let message = format!(
                    "recording in the repository failed ({reason}: {message}); the VolumeSnapshots are kept and usable"
                );
                self.failed("RecordFailed", &message);
            }
        }
    }

    fn session_lost(&mut self) {
        self.roll_back(
            REASON_SESSION_LOST,
            "the database session holding the backup ended (the operator restarted, or the connection broke)",
        );
    }

    fn stateful_set_gone(&mut self) {
        self.roll_back(
            "StatefulSetNotFound",
            &format!(
                "StatefulSet {} was deleted during the backup",
                self.backup.spec.target.stateful_set
            ),
        );
    }

    fn deadline_exceeded(&mut self) {
        self.deadline_exceeded_with(None);
    }

    fn deadline_exceeded_with(&mut self, error: Option<String>) {
        let deadline = &self.backup.spec.snapshot.deadline;
        let mut message = format!("the snapshot(s) were not cut within the deadline of {deadline}");
        if let Some(error) = error {
            message.push_str(&format!("; last error: {error}"));
        }
        self.roll_back("DeadlineExceeded", &message);
    }

    /// The attempt failed: undo it (this reconcile and the next ones) before failing.
    fn roll_back(&mut self, reason: &str, message: &str) {
        self.status.failure_reason = Some(reason.to_string());
        self.status.message = Some(message.to_string());
        self.status.phase = Some(BackupPhase::Running);
        self.status.stage = Some(SnapshotStage::RollingBack);
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_TRUE, "RollingBack", message);
        self.steps.clear();
        self.rolling_back();
    }

    fn rolling_back(&mut self) {
        let mut waiting = Vec::new();
        match &self.observed.session {
            SessionState::Absent => {}
            // Leave backup mode the proper way before forgetting the session.
            SessionState::InBackup { .. } | SessionState::Stopping => {
                self.steps.push(Step::StopSession);
                waiting.push("leaving backup mode");
            }
            _ => self.steps.push(Step::EndSession),
        }
        let present = live_snapshots(self.observed);
        if !present.is_empty() {
            self.steps.push(Step::DeleteSnapshots(present));
        }
        if !self.observed.snapshots.is_empty() {
            // A retry makes snapshots of the same names: wait until these are gone.
            waiting.push("deleting the snapshot(s)");
        }
        if let Some(step) = scale_back(self.backup, self.observed) {
            self.steps.push(step);
        }
        self.status.snapshots.clear();
        if !waiting.is_empty() {
            return;
        }
        let reason = self
            .status
            .failure_reason
            .clone()
            .unwrap_or_else(|| "Failed".into());
        let message = self.status.message.clone().unwrap_or_default();
        let attempt = self.status.attempt.unwrap_or(1);
        if retryable(&reason) && attempt < MAX_ATTEMPTS {
            self.status.phase = Some(BackupPhase::Pending);
            self.status.stage = None;
            self.status.begin_lsn = None;
            self.status.message = Some(format!(
                "attempt {attempt} of {MAX_ATTEMPTS} failed and was rolled back ({message}); trying again"
            ));
            self.requeue = Some(WAIT);
            let text = self.status.message.clone().unwrap_or_default();
            self.condition(CONDITION_READY, STATUS_FALSE, &reason, &text);
            self.condition(CONDITION_PROGRESSING, STATUS_TRUE, "Retrying", &text);
        } else {
            self.failed(&reason, &message);
        }
    }

    fn failed(&mut self, reason: &str, message: &str) {
        self.status.phase = Some(BackupPhase::Failed);
        self.status.stage = None;
        self.status.failure_reason = Some(reason.to_string());
        self.status.message = Some(message.to_string());
        self.status.completed_at = Some(Time(self.now));
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, reason, message);
        self.condition(CONDITION_FAILED, STATUS_TRUE, reason, message);
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
