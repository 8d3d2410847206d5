//! The Releasing stage: leaving backup mode (or scaling an `offline` StatefulSet back) once
//! the snapshots are cut.

use super::super::{
    next::Next,
    plan::{Step, WAIT},
    session::SessionState,
};
use crate::api::{SnapshotMode, SnapshotStage};

impl Next<'_> {
    pub(super) fn released(&mut self, why: &str) {
        self.requeue = Some(WAIT);
        self.running(
            SnapshotStage::WaitingForReadyToUse,
            &format!("{why}; waiting for the storage to make them ready to use"),
        );
    }

    pub(crate) fn releasing(&mut self) {
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
}
