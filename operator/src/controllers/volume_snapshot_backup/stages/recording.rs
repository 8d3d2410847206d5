//! The last stages: waiting for the snapshots to be ready to use, then recording the backup
//! in its repository.

use kube::ResourceExt;

use super::super::{
    build,
    next::Next,
    plan::{POLL, Step, WAIT},
};
use crate::{
    agent::record_snapshot::RecordReport, api::SnapshotStage, controllers::job_state::JobState,
};

impl Next<'_> {
    pub(crate) fn waiting_for_ready(&mut self) {
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

    pub(crate) fn recording(&mut self) {
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
}
