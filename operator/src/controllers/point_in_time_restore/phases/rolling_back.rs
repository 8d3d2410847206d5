//! Rolling back a restore in place that failed: the old data back, the StatefulSet as it was.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::controllers::point_in_time_restore::{
    build,
    plan::{Next, Step},
};
use crate::{
    api::{
        CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY, RestorePhase, STATUS_FALSE,
        STATUS_TRUE,
    },
    controllers::job_state::JobState,
};

impl Next<'_> {
    pub(crate) fn rolling_back(&mut self) {
        let reason = self
            .status
            .failure_reason
            .clone()
            .unwrap_or_else(|| "Failed".into());
        let why = self.status.message.clone().unwrap_or_default();
        let Some(stateful_set) = self.stateful_set().cloned() else {
            return self.failed(
                &reason,
                &format!("{why}; the StatefulSet is gone, nothing to put back"),
            );
        };
        let original = self.original();
        // A proven restore is finished, never undone (deleted after verification).
        if self.status.verified_at.is_some() {
            self.status.phase = Some(RestorePhase::Verifying);
            return self.verifying();
        }
        // Nothing touched the data (no restore Job was ever made): the StatefulSet just goes
        // back.
        if self.status.restore_job_name.is_none()
            && self.job("restore").is_none()
            && self.status.replaced_volumes.is_empty()
        {
            self.steps.push(Step::Scale {
                replicas: original,
                record: None,
            });
            return self.rolled_back(&reason, &format!("{why}; the data was never touched, the StatefulSet is back at {original} replica(s)"));
        }
        // Stop whatever runs on the claim — the restore Job's pod, the database — before
        // putting the old data back.
        self.scale_to(0, true);
        let restore_job = build::job_name(self.restore, "restore");
        if self.job("restore").is_some() {
            self.status.restore_job_name = Some(restore_job.clone());
        }
        if matches!(self.job("restore"), Some(JobState::Active { .. })) {
            self.steps.push(Step::DeleteJob(restore_job));
        }
        if self
            .job("restore")
            .is_some_and(|j| matches!(j, JobState::Active { .. }))
            || self.observed.restore_pods > 0
            || self.pods_left() > 0
        {
            // The status keeps saying why it rolls back; the condition what it waits for.
            self.condition(
                CONDITION_READY,
                STATUS_FALSE,
                "RollingBack",
                "stopping what runs on the data volume before putting the old data back",
            );
            return;
        }
        if self.in_place_snapshot() {
            // The new claims go and the kept volumes are bound back to claims of their names.
            if !self.put_volumes_back() {
                return self.condition(
                    CONDITION_READY,
                    STATUS_FALSE,
                    "RollingBack",
                    "binding the kept volumes back to ordinal 0's claims",
                );
            }
            self.steps.retain(|s| !matches!(s, Step::Scale { .. }));
            self.steps.push(Step::Scale {
                replicas: original,
                record: None,
            });
            return self.rolled_back(
                &reason,
                &format!("{why}; the old volumes are bound again and the StatefulSet is back at {original} replica(s)"),
            );
        }
        match self.job("put-back").cloned() {
            None => {
                let job = build::data_dir_job(
                    self.restore,
                    self.settings,
                    self.major(),
                    "put-back",
                    0,
                    &stateful_set,
                    None,
                );
                self.steps.push(Step::CreateJob(Box::new(job)));
            }
            Some(JobState::Active { .. }) => {}
            Some(done) => {
                // Never left at 0, whatever happened.
                self.steps.retain(|s| !matches!(s, Step::Scale { .. }));
                self.steps.push(Step::Scale {
                    replicas: original,
                    record: None,
                });
                let message = if matches!(done, JobState::Succeeded { .. }) {
                    format!(
                        "{why}; the old data is back and the StatefulSet at {original} replica(s)"
                    )
                } else {
                    format!(
                        "{why}; putting the old data back failed too: it is in .pgbackup-aside-{} in the data directory on claim {}, the StatefulSet is back at {original} replica(s)",
                        build::aside_name(self.restore),
                        build::claim_name(self.restore, 0)
                    )
                };
                self.rolled_back(&reason, &message);
            }
        }
    }

    pub(super) fn rolled_back(&mut self, reason: &str, message: &str) {
        self.status.phase = Some(RestorePhase::RolledBack);
        self.status.phase_since = Some(Time(self.now));
        self.status.completed_at = Some(Time(self.now));
        self.status.message = Some(message.to_string());
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_FALSE, reason, message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, reason, message);
        self.condition(CONDITION_FAILED, STATUS_TRUE, reason, message);
    }
}
