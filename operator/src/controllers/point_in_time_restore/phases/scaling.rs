//! Scaling the StatefulSet down before a restore in place, and back up after it.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

use super::{SETTLE_SECONDS, gitops_manager};
use crate::controllers::point_in_time_restore::{
    build,
    plan::{Next, Step},
};
use crate::{
    api::{RestoreMode, RestorePhase, STATUS_FALSE},
    controllers::job_state::JobState,
    k8s::scale::recorded_by,
};

impl Next<'_> {
    pub(super) fn original(&self) -> i32 {
        self.status.original_replicas.unwrap_or(1)
    }

    pub(super) fn scale_to(&mut self, replicas: i32, keep_record: bool) {
        let current = self
            .stateful_set()
            .and_then(|s| s.spec.as_ref()?.replicas)
            .unwrap_or(1);
        let by = build::scaled_down_by(self.restore);
        let recorded = self
            .stateful_set()
            .and_then(|s| recorded_by(s, &by))
            .is_some();
        if current != replicas || recorded != keep_record {
            self.steps.push(Step::Scale {
                replicas,
                record: keep_record.then(|| self.original()),
            });
        }
    }

    pub(super) fn pods_left(&self) -> usize {
        self.database_pods().len()
    }

    /// The names of the StatefulSet's own pods (`<name>-<ordinal>`) that exist.
    pub(super) fn database_pods(&self) -> Vec<String> {
        let name = &self.restore.spec.target.stateful_set;
        self.observed
            .pods
            .iter()
            .map(|p| p.name_any())
            .filter(|pod| {
                pod.strip_prefix(name.as_str())
                    .and_then(|s| s.strip_prefix('-'))
                    .is_some_and(|o| o.parse::<u32>().is_ok())
            })
            .collect()
    }

    pub(crate) fn scaling_down(&mut self) {
        let Some(stateful_set) = self.stateful_set() else {
            return self.failed(
                "StatefulSetNotFound",
                "the StatefulSet was deleted during the restore",
            );
        };
        // Scaled to 0 with the record in one patch: replicas above 0 under the record were
        // set by someone else. Nothing has been written yet; do not fight over them.
        let by = build::scaled_down_by(self.restore);
        let replicas = stateful_set.spec.as_ref().and_then(|s| s.replicas);
        if recorded_by(stateful_set, &by).is_some() && replicas.is_some_and(|r| r > 0) {
            return self.roll_back("ReplicasSetBack", &self.set_back_message());
        }
        self.scale_to(0, true);
        let left = self.pods_left();
        if left == 0 {
            let since = self.status.phase_since.as_ref().map_or(self.now, |t| t.0);
            let held = self.now.as_second() - since.as_second();
            if self.stateful_set().and_then(gitops_manager).is_some() && held < SETTLE_SECONDS {
                self.requeue = Some(std::time::Duration::from_secs(5));
                return self.wait(
                    "HoldingAtZero",
                    &format!(
                        "the pods are gone; holding the StatefulSet at 0 for {SETTLE_SECONDS} s to see that its GitOps tool does not scale it back before any data is written"
                    ),
                );
            }
            return self.restoring();
        }
        if self.overdue() {
            return self.roll_back("ScaleDownTimedOut", &format!("{left} pod(s) did not stop"));
        }
        self.wait("ScalingDown", &format!("waiting for {left} pod(s) to stop"));
    }

    /// What a restore stopped by someone setting the replicas back says.
    pub(super) fn set_back_message(&self) -> String {
        let who = self.stateful_set().and_then(gitops_manager).map_or_else(
            || "something other than pgbackup (a GitOps tool, an HPA, a person)".to_string(),
            |tool| format!("{tool}'s sync"),
        );
        format!(
            "the replicas of StatefulSet {} were set back while it was held at 0 for the restore, before anything was written: {who} sets them. Pause that (Argo CD: self-heal off; Flux: suspend, or the annotation kustomize.toolkit.fluxcd.io/reconcile: disabled; an HPA: remove it) and restore again",
            self.restore.spec.target.stateful_set
        )
    }

    /// Empties the replicas' data directories (with `replicas: reinitialize`) once the
    /// primary is proven, so that they clone it afresh. Whether they are all done.
    pub(super) fn reinitialize_replicas(&mut self, stateful_set: &StatefulSet) -> bool {
        let reinitialize = self.restore.spec.replicas == crate::api::ReplicaPolicy::Reinitialize;
        let replicas = if reinitialize {
            self.original().max(1) as u32
        } else {
            1
        };
        let mut pending = 0;
        for ordinal in 1..replicas {
            let claim = build::claim_name(self.restore, ordinal);
            if !self.observed.claims.contains(&claim) {
                continue; // never created: nothing to reinitialise
            }
            match self.job(&format!("reinit-{ordinal}")).cloned() {
                None => {
                    let job = build::data_dir_job(
                        self.restore,
                        self.settings,
                        self.major(),
                        "empty",
                        ordinal,
                        stateful_set,
                        None,
                    );
                    self.steps.push(Step::CreateJob(Box::new(job)));
                    pending += 1;
                }
                Some(JobState::Active { .. }) if !self.overdue() => pending += 1,
                // Overdue: stopped, and waited for, before any replica starts.
                Some(JobState::Active { .. }) => {
                    self.steps.push(Step::DeleteJob(build::job_name(
                        self.restore,
                        &format!("reinit-{ordinal}"),
                    )));
                    let note =
                        format!("replica {ordinal} was not emptied in time; re-clone it by hand");
                    self.condition(
                        "ReplicasReinitialized",
                        STATUS_FALSE,
                        "ReinitializeTimedOut",
                        &note,
                    );
                    pending += 1;
                }
                // Done, or failed: the replica keeps its old data and may need a manual
                // re-clone; the restored primary stands either way.
                Some(JobState::Failed { message, .. }) => {
                    let note = format!(
                        "replica {ordinal} could not be emptied ({message}); re-clone it by hand"
                    );
                    self.condition(
                        "ReplicasReinitialized",
                        STATUS_FALSE,
                        "ReinitializeFailed",
                        &note,
                    );
                }
                _ => {}
            }
        }
        if pending > 0 {
            self.wait(
                "Reinitializing",
                &format!("emptying {pending} replica volume(s) so they clone the restored primary"),
            );
        }
        pending == 0
    }

    pub(crate) fn scaling_up(&mut self) {
        let (pods, ordinal_zero) = match self.restore.spec.mode {
            RestoreMode::InPlace => {
                self.scale_to(1, true);
                (
                    &self.observed.pods,
                    format!("{}-0", self.restore.spec.target.stateful_set),
                )
            }
            RestoreMode::Clone => {
                if self.observed.clone.is_none()
                    && let Some(source) = self.stateful_set()
                    && let Some((service, clone)) = build::clone_objects(self.restore, source)
                {
                    self.steps
                        .push(Step::CreateClone(Box::new(service), Box::new(clone)));
                }
                (
                    &self.observed.clone_pods,
                    format!("{}-0", build::restored_stateful_set(self.restore)),
                )
            }
        };
        let ready = pods
            .iter()
            .find(|p| p.name_any() == ordinal_zero)
            .is_some_and(crate::controllers::volume_snapshot_backup::build::pod_ready);
        if ready {
            self.enter(
                RestorePhase::Verifying,
                "the restored server is up; verifying it",
            );
            return;
        }
        if self.overdue() {
            return self.roll_back(
                "NotReady",
                &format!("pod {ordinal_zero} did not become ready"),
            );
        }
        self.wait(
            "ScalingUp",
            &format!("waiting for pod {ordinal_zero} to be ready"),
        );
    }
}
