//! The RollingBack stage: leaving backup mode, deleting the snapshots and scaling an
//! `offline` StatefulSet back, then another attempt or `Failed`.

use super::super::{
    check::{live_snapshots, retryable, scale_back},
    session::SessionState,
};
use super::super::{
    next::Next,
    plan::{MAX_ATTEMPTS, Step, WAIT},
};
use crate::api::{
    BackupPhase, CONDITION_PROGRESSING, CONDITION_READY, STATUS_FALSE, STATUS_TRUE, SnapshotStage,
};

impl Next<'_> {
    /// The attempt failed: undo it (this reconcile and the next ones) before failing.
    pub(crate) fn roll_back(&mut self, reason: &str, message: &str) {
        self.status.failure_reason = Some(reason.to_string());
        self.status.message = Some(message.to_string());
        self.status.phase = Some(BackupPhase::Running);
        self.status.stage = Some(SnapshotStage::RollingBack);
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_TRUE, "RollingBack", message);
        self.steps.clear();
        self.rolling_back();
    }

    pub(crate) fn rolling_back(&mut self) {
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
}
