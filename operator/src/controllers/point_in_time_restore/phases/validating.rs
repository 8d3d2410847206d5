//! The Validating phase: checks before anything changes, and what it records when they pass.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::{Verdict, gitops_manager};
use crate::controllers::point_in_time_restore::{
    build,
    plan::{CONDITION_GITOPS, Next, SourceObject, Step},
};
use crate::{
    api::{RestoreMode, RestorePhase, STATUS_TRUE},
    controllers::job_state::JobState,
    k8s::{agent_pod, scale::recorded_by},
};

impl Next<'_> {
    pub(crate) fn validating(&mut self) {
        if self.status.started_at.is_none() {
            self.status.started_at = Some(Time(self.now));
        }
        let (_, words) = build::target_args(&self.restore.spec.recovery_target);
        self.status.recovery_target_description = Some(words.clone());
        let source = match self.check() {
            Ok(source) => source,
            Err(Verdict::Refuse(reason, message)) => return self.failed(reason, &message),
            Err(Verdict::Wait(reason, message)) => {
                self.enter(crate::api::RestorePhase::Validating, &message);
                self.wait(reason, &message);
                self.requeue = Some(std::time::Duration::from_secs(30));
                return;
            }
        };
        if let SourceObject::Snapshot(Some(snapshot)) = &self.observed.source {
            self.status
                .volume_snapshot_backup
                .get_or_insert_with(|| snapshot.name_any());
        }
        if let Some(tool) = self.stateful_set().and_then(gitops_manager) {
            let message = format!(
                "{tool} manages StatefulSet {}: with self-heal it scales the StatefulSet back up during the restore; pause its sync until the restore is done",
                self.restore.spec.target.stateful_set
            );
            self.condition(CONDITION_GITOPS, STATUS_TRUE, "ManagedReplicas", &message);
        }
        match self.job("validate").cloned() {
            None => {
                let job = build::validate_job(self.restore, self.settings, self.major(), &source);
                self.steps.push(Step::CreateJob(Box::new(job)));
                self.enter(
                    RestorePhase::Validating,
                    &format!("checking the backup, the recovery window and the WAL to {words}"),
                );
            }
            Some(JobState::Active {
                stuck: Some((reason, message)),
                ..
            }) => {
                self.wait(
                    &reason,
                    &format!("the validation pod cannot start: {message}"),
                );
            }
            Some(JobState::Active { .. }) => {}
            Some(JobState::Failed {
                reason, message, ..
            }) => {
                let reason = if reason == "InvalidRequest" {
                    "TargetNotRestorable".to_string()
                } else {
                    reason
                };
                self.failed(&reason, &message);
            }
            Some(JobState::Succeeded { result, .. }) => self.validated(result.as_deref()),
        }
    }

    /// Why the backup must not be restored into (or beside) the target: it is of another
    /// cluster than the StatefulSet's, unless `source.allowOtherCluster`. In place, a
    /// cluster that cannot be asked is left to the restore Job, which compares with the
    /// data it replaces; a clone has no such data, so its source must be known.
    pub(super) fn of_another_cluster(&self, backup_id: &str) -> Option<(&'static str, String)> {
        if self.restore.spec.source.allow_other_cluster {
            return None;
        }
        // Snapshots of the StatefulSet's own volumes hold its own cluster by construction.
        if let SourceObject::Snapshot(Some(snapshot)) = &self.observed.source
            && snapshot.spec.target.stateful_set == self.restore.spec.target.stateful_set
        {
            return None;
        }
        let set = &self.restore.spec.target.stateful_set;
        let clone = self.restore.spec.mode == RestoreMode::Clone;
        let allow = "set source.allowOtherCluster only for a repository whose writers you trust";
        match (
            &self.observed.target_cluster,
            &self.status.system_identifier,
        ) {
            (Some(Ok(ours)), Some(theirs)) if ours == theirs => None,
            (Some(Ok(ours)), Some(theirs)) => Some((
                "OtherCluster",
                format!(
                    "backup {backup_id} is of cluster {theirs}, StatefulSet {set} runs cluster {ours}: a backup of another server runs that server's configuration with the StatefulSet's rights; {allow}"
                ),
            )),
            _ if !clone => None,
            (_, None) => Some((
                "OtherCluster",
                format!(
                    "backup {backup_id} does not record which cluster it is of, so it cannot be shown to be of StatefulSet {set}'s; {allow}"
                ),
            )),
            (why, Some(_)) => {
                let why = match why {
                    Some(Err(why)) => why.as_str(),
                    _ => "not asked",
                };
                Some((
                    "ClusterUnknown",
                    format!(
                        "cannot tell which cluster StatefulSet {set} runs ({why}), and no completed backup of it records one: start its database, or {allow}"
                    ),
                ))
            }
        }
    }

    /// The dry run passed: record the plan and start.
    pub(super) fn validated(&mut self, report: Option<&str>) {
        let report: Option<serde_json::Value> = report.and_then(|r| serde_json::from_str(r).ok());
        let Some(report) = report else {
            return self.failed(
                "ValidationFailed",
                "the validation Job succeeded but left no plan",
            );
        };
        let mut backup_id = report["backupId"].as_str().unwrap_or_default().to_string();
        let mut version = report["serverVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let SourceObject::Snapshot(Some(snapshot)) = &self.observed.source {
            let status = snapshot.status.clone().unwrap_or_default();
            // A snapshot no repository records goes by its own name and what it knows.
            if snapshot.spec.repository.is_none() {
                backup_id = snapshot.name_any();
            }
            if version.is_empty() {
                version = status.server_version.unwrap_or_default();
            }
            let (reason, guarantee) =
                crate::controllers::point_in_time_restore::snapshot_source::snapshot_guarantee(
                    snapshot.spec.snapshot.mode,
                );
            self.condition("SnapshotGuarantee", STATUS_TRUE, reason, guarantee);
        }
        let backup_major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
        let target_major = self.stateful_set().and_then(agent_pod::postgres_major);
        if let (Some(backup), Some(target)) = (backup_major, target_major)
            && backup != target
        {
            return self.failed(
                "VersionMismatch",
                &format!("backup {backup_id} is of PostgreSQL {backup}, the StatefulSet runs {target}: restore into a server of the backup's major version (mode: clone with a matching image, say)"),
            );
        }
        self.status.base_backup = Some(backup_id.clone());
        self.status.server_version = Some(version);
        self.status.system_identifier = report["systemIdentifier"].as_str().map(str::to_string);
        if let Some((reason, message)) = self.of_another_cluster(&backup_id) {
            return self.failed(reason, &message);
        }
        self.status.same_cluster_confirmed = matches!(
            (&self.observed.target_cluster, &self.status.system_identifier),
            (Some(Ok(ours)), Some(theirs)) if ours == theirs
        );
        match self.restore.spec.mode {
            RestoreMode::InPlace => {
                let by = build::scaled_down_by(self.restore);
                let stateful_set = self.stateful_set();
                let original = stateful_set
                    .and_then(|s| recorded_by(s, &by))
                    .or(stateful_set.and_then(|s| s.spec.as_ref()?.replicas))
                    .unwrap_or(1);
                self.status.original_replicas = Some(original);
                self.status.restored_stateful_set =
                    Some(self.restore.spec.target.stateful_set.clone());
                self.enter(RestorePhase::ScalingDown, &format!("backup {backup_id} can be restored; scaling the StatefulSet from {original} to 0"));
            }
            RestoreMode::Clone => {
                self.status.restored_stateful_set =
                    Some(build::restored_stateful_set(self.restore));
                let from = match &self.observed.stored_stateful_set {
                    Some(Ok(backup)) => format!(
                        " made from the StatefulSet stored with PostgresBackup {backup} (StatefulSet {} is gone)",
                        self.restore.spec.target.stateful_set
                    ),
                    _ => String::new(),
                };
                self.enter(
                    RestorePhase::Restoring,
                    &format!("backup {backup_id} can be restored; restoring into a clone{from}"),
                );
            }
        }
    }
}
