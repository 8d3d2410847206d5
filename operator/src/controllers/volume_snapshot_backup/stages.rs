//! The stages of a VolumeSnapshotBackup (pure): what each does with what was observed.
//! The shared pieces (conditions, failure, roll-back) are in [`super::plan`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::{
    build,
    check::{check, scale_back},
    plan::{MAX_ATTEMPTS, Next, POLL, RETRY, Step, WAIT},
    session::{SessionKind, SessionState},
};
use crate::{
    agent::record_snapshot::RecordReport,
    api::{
        BackupPhase, CONDITION_PROGRESSING, CONDITION_READY, STATUS_FALSE, SnapshotMode,
        SnapshotStage, SnapshotStatus,
    },
    controllers::job_state::JobState,
    k8s::generated::volume_snapshot::VolumeSnapshot,
    postgres::StoppedBackup,
};

impl Next<'_> {
    pub(super) fn start(&mut self) {
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

    pub(super) fn preparing(&mut self) {
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

    pub(super) fn create_snapshots(&mut self, why: &str) {
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
    pub(super) fn follow_snapshots(&mut self) -> (bool, bool, Option<String>) {
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

    pub(super) fn snapshotting(&mut self) {
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
        if let Some(taken) = self.observed.foreign_snapshots.first() {
            return self.roll_back(
                "SnapshotNameTaken",
                &format!("VolumeSnapshot {taken} was made by someone else meanwhile"),
            );
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
    pub(super) fn cut(&mut self) {
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

    pub(super) fn annotate_snapshots(&mut self, stopped: Option<&StoppedBackup>) {
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

    pub(super) fn released(&mut self, why: &str) {
        self.requeue = Some(WAIT);
        self.running(
            SnapshotStage::WaitingForReadyToUse,
            &format!("{why}; waiting for the storage to make them ready to use"),
        );
    }

    pub(super) fn releasing(&mut self) {
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

    pub(super) fn waiting_for_ready(&mut self) {
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

    /// Every snapshot is ready: record them in the repository.
    pub(super) fn record(&mut self) {
        match build::record_job(
            self.backup,
            &self.status,
            self.settings,
            self.observed.references.stateful_set.as_ref(),
        ) {
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

    pub(super) fn recording(&mut self) {
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
                        if let Some(facts) = report.read_from_copy {
                            self.status.timeline = Some(i64::from(facts.timeline));
                            self.status.begin_lsn = Some(facts.begin_lsn);
                            self.status.server_version = Some(facts.server_version);
                            self.status.system_identifier = facts.system_identifier;
                            self.status.wal_segment_size = i64::try_from(facts.wal_segment_size).ok();
                        }
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
