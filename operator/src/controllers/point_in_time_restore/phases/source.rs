//! Which backup, snapshot or dump a restore starts from, and whether it reaches the target.

use kube::ResourceExt;

use super::Verdict;
use crate::controllers::point_in_time_restore::{
    build::{self, Source},
    plan::{Next, SourceObject},
};
use crate::{
    api::{BackupMethod, BackupPhase, RestoreMode, ScheduleMethod},
    controllers::references,
    k8s::{agent_pod, scale::claim_templates},
};

impl Next<'_> {
    /// The repository, server and backup the source gives, or why not.
    pub(super) fn source(&self) -> Result<Source, Verdict> {
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
    pub(super) fn check(&self) -> Result<Source, Verdict> {
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
}
