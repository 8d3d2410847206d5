//! The status and steps of a VolumeSnapshotBackup reconcile under construction, and what
//! every stage shares: conditions, the mode and volumes, the deadline, completion and failure.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{Observed, Step};
use super::{
    build::{self, Volume},
    session::REASON_SESSION_LOST,
};
use crate::{
    api::{
        BackupPhase, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY, STATUS_FALSE,
        STATUS_TRUE, SnapshotMode, SnapshotStage, VolumeSnapshotBackup, VolumeSnapshotBackupStatus,
        set_condition,
    },
    k8s::agent_pod::AgentSettings,
    postgres::ServerInfo,
};

/// The status and steps under construction.
pub(super) struct Next<'a> {
    pub(super) backup: &'a VolumeSnapshotBackup,
    pub(super) observed: &'a Observed,
    pub(super) settings: &'a AgentSettings,
    pub(super) status: VolumeSnapshotBackupStatus,
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
            self.backup.metadata.generation,
            Time(self.now),
        );
    }

    pub(super) fn mode(&self) -> SnapshotMode {
        self.backup.spec.snapshot.mode
    }

    pub(super) fn volumes(&self) -> Vec<Volume> {
        build::volumes(self.backup).unwrap_or_default()
    }

    /// Running, at `stage`, saying `message`.
    pub(super) fn running(&mut self, stage: SnapshotStage, message: &str) {
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

    pub(super) fn deadline_passed(&self) -> bool {
        let deadline =
            crate::repository::parse_duration(&self.backup.spec.snapshot.deadline).unwrap_or(600);
        let started = self.status.started_at.as_ref().map_or(self.now, |t| t.0);
        self.now.as_second() - started.as_second() > deadline
    }

    pub(super) fn server(&mut self, server: &ServerInfo) {
        self.status.server_version = Some(server.version.clone());
        self.status.system_identifier = server.system_identifier.clone();
        self.status.wal_segment_size = i64::try_from(server.wal_segment_size).ok();
    }

    pub(super) fn completed(&mut self, recorded: &str) {
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

    pub(super) fn session_lost(&mut self) {
        self.roll_back(
            REASON_SESSION_LOST,
            "the database session holding the backup ended (the operator restarted, or the connection broke)",
        );
    }

    pub(super) fn stateful_set_gone(&mut self) {
        self.roll_back(
            "StatefulSetNotFound",
            &format!(
                "StatefulSet {} was deleted during the backup",
                self.backup.spec.target.stateful_set
            ),
        );
    }

    pub(super) fn deadline_exceeded(&mut self) {
        self.deadline_exceeded_with(None);
    }

    pub(super) fn deadline_exceeded_with(&mut self, error: Option<String>) {
        let deadline = &self.backup.spec.snapshot.deadline;
        let mut message = format!("the snapshot(s) were not cut within the deadline of {deadline}");
        if let Some(error) = error {
            message.push_str(&format!("; last error: {error}"));
        }
        self.roll_back("DeadlineExceeded", &message);
    }

    pub(super) fn failed(&mut self, reason: &str, message: &str) {
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
