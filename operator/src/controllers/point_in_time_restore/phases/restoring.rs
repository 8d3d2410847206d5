//! The Restoring phase: the restore Job, or the snapshot volumes, and what recovery reported.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{gitops_manager, parse_postgres_time};
use crate::controllers::point_in_time_restore::{
    build,
    plan::{Next, Step},
};
use crate::{
    api::{RestoreMode, RestorePhase},
    controllers::job_state::JobState,
};

impl Next<'_> {
    pub(crate) fn restoring(&mut self) {
        let in_place = self.restore.spec.mode == RestoreMode::InPlace;
        // Once the restore Job has succeeded the StatefulSet goes back up (a reconcile from
        // a cache that has not seen the phase change yet must not scale it down again, nor
        // take its starting pod for an intruder).
        let restored = matches!(self.job("restore"), Some(JobState::Succeeded { .. }));
        if in_place && !restored {
            // Nothing may start on the claim while it is restored.
            self.scale_to(0, true);
            // Something else set the replicas back (GitOps self-heal, an HPA, a person) and
            // the database started on the volume the restore Job writes: stop at once.
            let back = self.database_pods();
            if !back.is_empty() {
                let who = self.stateful_set().and_then(gitops_manager).map_or_else(
                    || {
                        "something other than pgbackup (a GitOps tool, an HPA, a person)"
                            .to_string()
                    },
                    |tool| format!("{tool}'s sync"),
                );
                return self.roll_back(
                    "ScaledUpDuringRestore",
                    &format!(
                        "pod(s) {} of StatefulSet {} came back while its data was being restored: {who} sets its replicas; the restore was stopped and the old data is put back. Pause that (Argo CD: self-heal off; Flux: suspend; an HPA: remove it) and restore again",
                        back.join(", "),
                        self.restore.spec.target.stateful_set
                    ),
                );
            }
        }
        let (Some(stateful_set), Some(base)) = (
            self.stateful_set().cloned(),
            self.status.base_backup.clone(),
        ) else {
            return self.roll_back(
                "StatefulSetNotFound",
                "the StatefulSet went away during the restore",
            );
        };
        if self.status.phase != Some(RestorePhase::Restoring) {
            self.enter(RestorePhase::Restoring, &format!("restoring backup {base}"));
        }
        if !in_place {
            let claim = build::claim_name(self.restore, 0);
            if !self.observed.claims.contains(&claim) {
                // The further volumes first: once the data claim exists, all of them do.
                let snapshots = self.source().map(|s| s.snapshots).unwrap_or_default();
                let data = &self.restore.spec.target.data_volume_claim_template;
                let mut claims: Vec<(&str, Option<&build::SnapshotVolume>)> = snapshots
                    .iter()
                    .skip(1)
                    .map(|v| (v.template.as_str(), Some(v)))
                    .collect();
                claims.push((data.as_str(), snapshots.first()));
                for (template, snapshot) in claims {
                    match build::clone_claim(self.restore, &stateful_set, template, snapshot) {
                        Some(pvc) => self.steps.push(Step::CreateClaim(Box::new(pvc))),
                        None => {
                            return self.roll_back(
                                "ClaimTemplateNotFound",
                                &format!(
                                    "the StatefulSet's volumeClaimTemplate {template} is gone"
                                ),
                            );
                        }
                    }
                }
            }
        }
        if in_place && self.in_place_snapshot() && self.job("restore").is_none() {
            match self.swap_volumes(&stateful_set) {
                Ok(None) => {}
                Ok(Some((reason, message))) => return self.wait(reason, &message),
                Err((reason, message)) => return self.roll_back(reason, &message),
            }
        }
        match self.job("restore").cloned() {
            None => {
                let Ok(source) = self.source() else {
                    return self.roll_back(
                        "SourceGone",
                        "the source went away before the restore started",
                    );
                };
                let job = build::restore_job(
                    self.restore,
                    self.settings,
                    self.major(),
                    &source,
                    &base,
                    &stateful_set,
                    self.status
                        .same_cluster_confirmed
                        .then_some(self.status.system_identifier.as_deref())
                        .flatten(),
                );
                self.status.restore_job_name = job.metadata.name.clone();
                self.steps.push(Step::CreateJob(Box::new(job)));
            }
            Some(JobState::Active {
                stuck: Some((reason, message)),
                ..
            }) => {
                if self.overdue() {
                    return self
                        .roll_back(&reason, &format!("the restore pod cannot start: {message}"));
                }
                self.wait(&reason, &format!("the restore pod cannot start: {message}"));
            }
            Some(JobState::Active { .. }) => {}
            Some(JobState::Failed {
                reason, message, ..
            }) => self.roll_back(&reason, &message),
            Some(JobState::Succeeded { result, .. }) => {
                self.record_recovery(result.as_deref());
                self.enter(RestorePhase::ScalingUp, "restored; starting the primary");
                self.scaling_up();
            }
        }
    }

    /// The restore Job's report: where recovery stopped.
    pub(super) fn record_recovery(&mut self, report: Option<&str>) {
        let Some(report) = report.and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        else {
            return;
        };
        self.status.reached_lsn = report["reachedLsn"].as_str().map(str::to_string);
        self.status.reached_timeline = report["timeline"].as_i64();
        self.status.last_transaction_time = report["lastTransaction"]
            .as_str()
            .and_then(parse_postgres_time)
            .map(Time);
    }
}
