//! The phases of a PointInTimeRestore (pure): what each does with what was observed.

use jiff::Timestamp;
use k8s_openapi::{api::apps::v1::StatefulSet, apimachinery::pkg::apis::meta::v1::Time};
use kube::ResourceExt;

use super::{
    build::{self, Source},
    plan::{CONDITION_GITOPS, Next, ServerState, SourceObject, Step},
};
use crate::{
    api::{
        BackupMethod, BackupPhase, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY,
        RestoreMode, RestorePhase, STATUS_FALSE, STATUS_TRUE, ScheduleMethod,
    },
    controllers::{job_state::JobState, references},
    k8s::{
        agent_pod,
        scale::{claim_templates, recorded_by},
    },
};

/// Why validation stopped.
pub(super) enum Verdict {
    /// Waiting for something that may still come (a backup still running).
    Wait(&'static str, String),
    /// Refused: nothing will change it but a new restore.
    Refuse(&'static str, String),
}

/// Labels and annotations by which Argo CD and Flux mark what they manage.
const GITOPS_MARKS: [(&str, &str); 5] = [
    ("argocd.argoproj.io/instance", "Argo CD"),
    ("argocd.argoproj.io/tracking-id", "Argo CD"),
    ("kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("helm.toolkit.fluxcd.io/name", "Flux"),
    ("app.kubernetes.io/instance-argocd", "Argo CD"),
];

/// Which GitOps tool manages `stateful_set`, if any. Argo CD's label tracking uses
/// `app.kubernetes.io/instance`, which Helm charts set too: without the annotations
/// `helm install` adds (Argo CD renders charts with `helm template`), it is taken for
/// Argo CD's.
pub fn gitops_manager(stateful_set: &StatefulSet) -> Option<&'static str> {
    let marked = GITOPS_MARKS.iter().find_map(|(key, tool)| {
        (stateful_set.labels().contains_key(*key) || stateful_set.annotations().contains_key(*key))
            .then_some(*tool)
    });
    let label_tracked = stateful_set
        .labels()
        .contains_key("app.kubernetes.io/instance")
        && !stateful_set
            .annotations()
            .contains_key("meta.helm.sh/release-name");
    marked.or(label_tracked.then_some("Argo CD"))
}

/// How long a StatefulSet a GitOps tool manages is held at 0 replicas, watched, before
/// its data is written: long enough for a self-heal (Argo CD's waits 5 s) to show.
pub const SETTLE_SECONDS: i64 = 30;

impl Next<'_> {
    fn stateful_set(&self) -> Option<&StatefulSet> {
        self.observed.references.stateful_set.as_ref()
    }

    fn major(&self) -> u32 {
        self.stateful_set()
            .and_then(agent_pod::postgres_major)
            .unwrap_or(self.settings.default_major)
    }

    fn job(&self, step: &str) -> Option<&JobState> {
        self.observed.jobs.get(&build::job_name(self.restore, step))
    }

    /// The repository, server and backup the source gives, or why not.
    fn source(&self) -> Result<Source, Verdict> {
        let namespace = self.restore.namespace().unwrap_or_default();
        let named = build::needs_named_backup(&self.restore.spec.recovery_target);
        match &self.observed.source {
            SourceObject::Snapshot(Some(snapshot)) => self.snapshot_source(snapshot, &namespace),
            SourceObject::Snapshot(None) if self.observed.snapshot_pick.is_some() => {
                Err(Verdict::Refuse(
                    "NoSnapshot",
                    self.observed.snapshot_pick.clone().unwrap_or_default(),
                ))
            }
            SourceObject::Backup(None)
            | SourceObject::Schedule(None)
            | SourceObject::Snapshot(None) => Err(Verdict::Refuse(
                "SourceNotFound",
                format!("the source named in spec.source does not exist in {namespace}"),
            )),
            SourceObject::Backup(Some(backup)) => {
                let name = backup.name_any();
                if backup.spec.method == BackupMethod::Logical {
                    return Err(Verdict::Refuse(
                        "LogicalSource",
                        format!(
                            "PostgresBackup {name} is a logical backup: point-in-time restores need a physical one (restore a logical backup with `pgbackup restore --logical`)"
                        ),
                    ));
                }
                let status = backup.status.clone().unwrap_or_default();
                match status.phase {
                    Some(BackupPhase::Completed) => Ok(Source {
                        snapshots: Vec::new(),
                        server: agent_pod::server_name(
                            &backup.spec.repository,
                            &namespace,
                            &backup.spec.target,
                        ),
                        repository: Some(backup.spec.repository.clone()),
                        backup: status.backup_id,
                        sha256: status.sha256,
                    }),
                    Some(BackupPhase::Failed) => Err(Verdict::Refuse(
                        "SourceFailed",
                        format!(
                            "PostgresBackup {name} failed: {}",
                            status.message.unwrap_or_default()
                        ),
                    )),
                    _ => Err(Verdict::Wait(
                        "SourceNotReady",
                        format!("PostgresBackup {name} has not completed yet"),
                    )),
                }
            }
            SourceObject::Schedule(Some(schedule)) => {
                let name = schedule.name_any();
                let template = &schedule.spec.template;
                let copy = self.restore.spec.source.copy.as_deref();
                match (schedule.spec.method, schedule.repository_for(copy)) {
                    (ScheduleMethod::Logical, _) => Err(Verdict::Refuse(
                        "LogicalSource",
                        format!(
                            "BackupSchedule {name} makes logical backups: point-in-time restores need physical ones"
                        ),
                    )),
                    // Observing picks one of its snapshots instead (`SourceObject::Snapshot`).
                    (ScheduleMethod::VolumeSnapshot, _) => Err(Verdict::Refuse(
                        "NoSnapshot",
                        format!(
                            "BackupSchedule {name} makes volume snapshots, and none was picked for the target"
                        ),
                    )),
                    (_, Err(why)) => Err(Verdict::Refuse("SourceNotFound", why)),
                    (ScheduleMethod::Physical, Ok(repository)) => Ok(Source {
                        snapshots: Vec::new(),
                        server: agent_pod::server_name(&repository, &namespace, &template.target),
                        repository: Some(repository),
                        backup: named.then(|| "latest".to_string()),
                        sha256: None,
                    }),
                }
            }
        }
    }

    /// Everything that can be checked without the repository.
    fn check(&self) -> Result<Source, Verdict> {
        let restore = self.restore;
        let spec = &restore.spec;
        let namespace = restore.namespace().unwrap_or_default();
        if !crate::repository::parse_duration(&spec.wait_timeout).is_ok_and(|s| s > 0) {
            return Err(Verdict::Refuse(
                "InvalidSpec",
                format!(
                    "waitTimeout {:?} is not a duration such as 30m or 1h",
                    spec.wait_timeout
                ),
            ));
        }
        if spec.mode == RestoreMode::InPlace && !spec.confirm {
            return Err(Verdict::Refuse(
                "NotConfirmed",
                "mode: inPlace replaces the StatefulSet's data: set confirm: true".into(),
            ));
        }
        let Some(stateful_set) = self.stateful_set() else {
            let stored = match &self.observed.stored_stateful_set {
                Some(Err(why)) => format!("; a clone cannot be made from the backup's: {why}"),
                _ => String::new(),
            };
            return Err(Verdict::Refuse(
                "StatefulSetNotFound",
                format!(
                    "StatefulSet {namespace}/{} does not exist (target.statefulSet){stored}",
                    spec.target.stateful_set
                ),
            ));
        };
        // Before waiting on a source: no source ever makes scaling this StatefulSet safe.
        if spec.mode == RestoreMode::InPlace
            && let Some(message) = crate::k8s::scale::claims_deleted_when_scaled(stateful_set)
        {
            return Err(Verdict::Refuse(
                crate::k8s::scale::REASON_CLAIMS_DELETED_WHEN_SCALED,
                message,
            ));
        }
        let source = self.source()?;
        references::check(
            &namespace,
            &spec.target,
            source.repository.as_ref(),
            &self.observed.references,
        )
        .map_err(|p| Verdict::Wait(p.reason, p.message))?;
        let templates = claim_templates(stateful_set);
        if !templates.contains(&spec.target.data_volume_claim_template) {
            return Err(Verdict::Refuse(
                "ClaimTemplateNotFound",
                format!(
                    "StatefulSet {namespace}/{} has no volumeClaimTemplate {:?} (target.dataVolumeClaimTemplate): where PGDATA lives is not known",
                    spec.target.stateful_set, spec.target.data_volume_claim_template
                ),
            ));
        }
        if let Some(expected) = crate::k8s::database_pod::expected_data_sub_path(
            stateful_set,
            &spec.target.data_volume_claim_template,
        ) && expected != spec.target.data_sub_path.trim_matches('/')
        {
            return Err(Verdict::Refuse(
                "DataSubPathMismatch",
                format!(
                    "the database container keeps PGDATA in {:?} of its data volume, but target.dataSubPath is {:?}: set target.dataSubPath: {:?}",
                    expected, spec.target.data_sub_path, expected
                ),
            ));
        }
        if spec.mode == RestoreMode::Clone {
            let ours = |labels: Option<&std::collections::BTreeMap<String, String>>| {
                labels.and_then(|l| l.get(build::LABEL_RESTORE_UID)) == restore.uid().as_ref()
            };
            let clone_taken = self
                .observed
                .clone
                .as_ref()
                .is_some_and(|c| !ours(c.metadata.labels.as_ref()));
            let claim_taken = self.status.restore_job_name.is_none()
                && self
                    .observed
                    .claims
                    .contains(&build::claim_name(restore, 0));
            if clone_taken || claim_taken {
                return Err(Verdict::Refuse(
                    "CloneNameTaken",
                    format!(
                        "StatefulSet {} or claim {} exists already (an earlier clone?): delete it or give the restore another name",
                        build::restored_stateful_set(restore),
                        build::claim_name(restore, 0)
                    ),
                ));
            }
        }
        if spec.mode == RestoreMode::InPlace {
            let claim = build::claim_name(restore, 0);
            if !self.observed.claims.contains(&claim) {
                return Err(Verdict::Refuse(
                    "ClaimNotFound",
                    format!("PersistentVolumeClaim {namespace}/{claim} does not exist"),
                ));
            }
            if let Some(rival) = self.observed.rivals.first() {
                return Err(Verdict::Refuse(
                    "RestoreInProgress",
                    format!(
                        "PointInTimeRestore {rival} of the same StatefulSet has not finished; one restore at a time"
                    ),
                ));
            }
            if let Some(by) = stateful_set
                .annotations()
                .get(crate::k8s::scale::ANNOTATION_SCALED_DOWN_BY)
                && *by != build::scaled_down_by(restore)
            {
                return Err(Verdict::Refuse(
                    "StatefulSetBusy",
                    format!(
                        "StatefulSet {namespace}/{} is scaled down by {by}",
                        spec.target.stateful_set
                    ),
                ));
            }
        }
        Ok(source)
    }

    pub(super) fn validating(&mut self) {
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
    fn of_another_cluster(&self, backup_id: &str) -> Option<(&'static str, String)> {
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
    fn validated(&mut self, report: Option<&str>) {
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
                super::snapshot_source::snapshot_guarantee(snapshot.spec.snapshot.mode);
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

    fn original(&self) -> i32 {
        self.status.original_replicas.unwrap_or(1)
    }

    fn scale_to(&mut self, replicas: i32, keep_record: bool) {
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

    fn pods_left(&self) -> usize {
        self.database_pods().len()
    }

    /// The names of the StatefulSet's own pods (`<name>-<ordinal>`) that exist.
    fn database_pods(&self) -> Vec<String> {
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

    pub(super) fn scaling_down(&mut self) {
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
    fn set_back_message(&self) -> String {
        let who = self.stateful_set().and_then(gitops_manager).map_or_else(
            || "something other than pgbackup (a GitOps tool, an HPA, a person)".to_string(),
            |tool| format!("{tool}'s sync"),
        );
        format!(
            "the replicas of StatefulSet {} were set back while it was held at 0 for the restore, before anything was written: {who} sets them. Pause that (Argo CD: self-heal off; Flux: suspend, or the annotation kustomize.toolkit.fluxcd.io/reconcile: disabled; an HPA: remove it) and restore again",
            self.restore.spec.target.stateful_set
        )
    }

    pub(super) fn restoring(&mut self) {
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
    fn record_recovery(&mut self, report: Option<&str>) {
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

    /// Empties the replicas' data directories (with `replicas: reinitialize`) once the
    /// primary is proven, so that they clone it afresh. Whether they are all done.
    fn reinitialize_replicas(&mut self, stateful_set: &StatefulSet) -> bool {
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

    pub(super) fn scaling_up(&mut self) {
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

    pub(super) fn verifying(&mut self) {
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

    fn completed(&mut self) {
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

    pub(super) fn rolling_back(&mut self) {
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

    fn rolled_back(&mut self, reason: &str, message: &str) {
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

fn why_text(verification: &Option<Result<ServerState, String>>) -> String {
    match verification {
        Some(Err(why)) => why.clone(),
        _ => "no answer yet".into(),
    }
}

/// A time as PostgreSQL logs it, `2026-11-21 12:00:00.123456+00`.
pub fn parse_postgres_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let (main, offset) = match text.rfind(['+', '-']) {
        Some(i) if i > 10 => (&text[..i], &text[i..]),
        _ => (text, "+00"),
    };
    let offset = if offset.len() == 3 {
        format!("{offset}:00")
    } else {
        offset.to_string()
    };
    format!("{}{offset}", main.replacen(' ', "T", 1))
        .parse()
        .ok()
}
