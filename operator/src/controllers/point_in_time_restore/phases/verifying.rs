//! The Verifying phase: the restored server answers, at the moment asked for, before the restore completes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::controllers::point_in_time_restore::{
    build,
    plan::{Next, ServerState, Step},
};
use crate::{
    api::{
        CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY, RestoreMode, RestorePhase,
        STATUS_FALSE, STATUS_TRUE,
    },
    controllers::job_state::JobState,
};

pub(super) fn why_text(verification: &Option<Result<ServerState, String>>) -> String {
    match verification {
        Some(Err(why)) => why.clone(),
        _ => "no answer yet".into(),
    }
}

impl Next<'_> {
    pub(crate) fn verifying(&mut self) {
        if self.status.verified_at.is_none() {
            match self.observed.verification.clone() {
                Some(Ok(ServerState {
                    in_recovery: false,
                    lsn,
                    timeline,
                    system_identifier,
                    note,
                })) => {
                    if let (Some(answered), Some(backed_up)) =
                        (&system_identifier, &self.status.system_identifier)
                        && answered != backed_up
                    {
                        return self.roll_back(
                            "NotTheRestoredServer",
                            &format!("the server answering is cluster {answered}, the backup is of {backed_up}: PGDATA is not where target.dataSubPath says"),
                        );
                    }
                    if let Some(note) = note {
                        self.condition("Verified", STATUS_TRUE, "LoginRefused", &note);
                    }
                    self.status.verified_at = Some(Time(self.now));
                    // The discard and the replicas get a time limit of their own.
                    self.status.phase_since = Some(Time(self.now));
                    if let Some(timeline) = timeline {
                        self.status.reached_timeline = Some(timeline);
                    }
                    if self.status.reached_lsn.is_none() {
                        self.status.reached_lsn = lsn;
                    }
                }
                Some(Ok(ServerState {
                    in_recovery: true, ..
                })) => {
                    if self.overdue() {
                        return self.roll_back(
                            "VerificationFailed",
                            "the restored server stayed in recovery",
                        );
                    }
                    return self.wait("Verifying", "the restored server is still in recovery");
                }
                Some(Err(_)) | None if self.overdue() => {
                    return self.roll_back(
                        "VerificationFailed",
                        &format!(
                            "the restored server does not answer: {}",
                            why_text(&self.observed.verification)
                        ),
                    );
                }
                _ => {
                    let why = why_text(&self.observed.verification);
                    return self.wait(
                        "Verifying",
                        &format!("connecting to the restored server: {why}"),
                    );
                }
            }
        }
        if self.restore.spec.mode == RestoreMode::Clone {
            return self.completed();
        }
        // Proven: the old data goes, the replicas are emptied, then they come back.
        let Some(stateful_set) = self.stateful_set().cloned() else {
            return self.completed();
        };
        if self.in_place_snapshot() {
            // The old data is on the volumes kept aside, not in the data directory.
            self.release_volumes();
            if self.reinitialize_replicas(&stateful_set) {
                let original = self.original();
                self.scale_to(original, false);
                self.completed();
            }
            return;
        }
        let node = self
            .observed
            .pods
            .iter()
            .find(|p| p.name_any() == format!("{}-0", self.restore.spec.target.stateful_set))
            .and_then(|p| p.spec.as_ref()?.node_name.clone());
        match self.job("discard").cloned() {
            None => {
                let job = build::data_dir_job(
                    self.restore,
                    self.settings,
                    self.major(),
                    "discard",
                    0,
                    &stateful_set,
                    node.as_deref(),
                );
                self.steps.push(Step::CreateJob(Box::new(job)));
                self.wait("Verifying", "verified; removing the old data set aside");
            }
            Some(JobState::Active { .. }) if !self.overdue() => {}
            Some(state) => {
                if !matches!(state, JobState::Succeeded { .. }) {
                    let aside = build::aside_name(self.restore);
                    let note = format!(
                        "the restore is proven, but the old data set aside could not be removed: delete .pgbackup-aside-{aside} in the data directory of {} (or run `pgbackup data-dir discard --name {aside}` on it)",
                        build::claim_name(self.restore, 0)
                    );
                    self.condition("OldDataRemoved", STATUS_FALSE, "DiscardFailed", &note);
                }
                if self.reinitialize_replicas(&stateful_set) {
                    let original = self.original();
                    self.scale_to(original, false);
                    self.completed();
                }
            }
        }
    }

    pub(super) fn completed(&mut self) {
        let restored = self
            .status
            .restored_stateful_set
            .clone()
            .unwrap_or_default();
        let namespace = self.restore.namespace().unwrap_or_default();
        let service = match self.restore.spec.mode {
            RestoreMode::Clone => restored.clone(),
            RestoreMode::InPlace => self
                .stateful_set()
                .and_then(|s| s.spec.as_ref()?.service_name.clone())
                .unwrap_or_default(),
        };
        self.status.connection = Some(format!(
            "{restored}-0.{service}.{namespace}.svc:{}",
            self.restore.spec.target.port
        ));
        let message = format!(
            "restored to {} from backup {}: reached LSN {}, timeline {}; connect to {}",
            self.status
                .recovery_target_description
                .clone()
                .unwrap_or_default(),
            self.status.base_backup.clone().unwrap_or_default(),
            self.status
                .reached_lsn
                .clone()
                .unwrap_or_else(|| "?".into()),
            self.status
                .reached_timeline
                .map_or("?".into(), |t| t.to_string()),
            self.status.connection.clone().unwrap_or_default(),
        );
        self.status.phase = Some(RestorePhase::Completed);
        self.status.phase_since = Some(Time(self.now));
        self.status.completed_at = Some(Time(self.now));
        self.status.message = Some(message.clone());
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_TRUE, "Completed", &message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, "Completed", "");
        self.condition(CONDITION_FAILED, STATUS_FALSE, "Completed", "");
    }
}
