//! A logical restore (`spec.logical`, pure): a dump put back into the target's running
//! server by one Job. Validated (the source is a completed logical backup holding the
//! database asked for, the references exist, no other restore holds the StatefulSet),
//! run, and reported; nothing is scaled down and no WAL is read.

use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job};
use kube::ResourceExt;

use super::{
    build,
    plan::{Next, SourceObject, Step},
};
use crate::{
    api::{
        BackupMethod, BackupPhase, CONDITION_FAILED, CONDITION_PROGRESSING, CONDITION_READY,
        JobOptions, LogicalRestore, PointInTimeRestore, PostgresBackup, RestorePhase, STATUS_FALSE,
        STATUS_TRUE,
    },
    controllers::{job_state::JobState, references},
    k8s::{
        agent_pod::{self, AgentContainer, AgentSettings, DatabaseWork, JobShape, Ownership},
        scale::ANNOTATION_SCALED_DOWN_BY,
    },
};

/// The Job's step name (its name is `<restore>-restore-<uid>`, as a physical restore's).
const STEP: &str = "restore";

/// Why a logical restore cannot start: wait (`true`) or refuse.
type Hold = (bool, &'static str, String);

impl Next<'_> {
    /// Checks what the restore needs, then starts its Job.
    pub(super) fn logical_validating(&mut self, logical: &LogicalRestore) {
        if self.status.started_at.is_none() {
            self.status.started_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                self.now,
            ));
        }
        self.status.recovery_target_description = Some("the moment of the dump".into());
        let (backup, stateful_set) = match self.logical_check(logical) {
            Ok(found) => found,
            Err((true, reason, message)) => {
                self.enter(RestorePhase::Validating, &message);
                self.wait(reason, &message);
                self.requeue = Some(std::time::Duration::from_secs(30));
                return;
            }
            Err((false, reason, message)) => return self.failed(reason, &message),
        };
        let status = backup.status.clone().unwrap_or_default();
        let backup_id = status.backup_id.clone().unwrap_or_default();
        let Some(hosts) = agent_pod::database_hosts(&self.restore.spec.target, stateful_set) else {
            return self.failed(
                "NoHost",
                "the StatefulSet names no serviceName and target.host is empty: the server to restore into cannot be reached",
            );
        };
        let major = agent_pod::postgres_major(stateful_set).unwrap_or(self.settings.default_major);
        let job = logical_job(
            self.restore,
            logical,
            self.settings,
            major,
            &backup,
            &hosts.join(","),
        );
        self.status.base_backup = Some(backup_id.clone());
        self.status.server_version = status.server_version.clone();
        self.status.system_identifier = status.system_identifier.clone();
        self.status.restore_job_name = job.metadata.name.clone();
        self.steps.push(Step::CreateJob(Box::new(job)));
        let what = describe(logical);
        self.enter(
            RestorePhase::Restoring,
            &format!(
                "restoring {what} of logical backup {backup_id} into StatefulSet {}'s running server",
                self.restore.spec.target.stateful_set
            ),
        );
    }

    /// Follows the Job to its end.
    pub(super) fn logical_restoring(&mut self) {
        match self.observed.jobs.get(&build::job_name(self.restore, STEP)) {
            None => self.failed(
                "JobLost",
                "the restore Job is gone before it finished (deleted by someone else?): what it did is unknown; look at the database before restoring again",
            ),
            Some(JobState::Active { stuck, .. }) => {
                if let Some((reason, why)) = stuck {
                    let message = format!("the restore Job's pod cannot start: {why}");
                    self.wait(reason, &message);
                }
            }
            Some(JobState::Failed {
                reason, message, ..
            }) => {
                let message = format!("the restore failed: {message}");
                self.failed(reason, &message);
            }
            Some(JobState::Succeeded { result, .. }) => {
                let told = result.as_deref().map(str::trim).unwrap_or_default();
                let message = if told.is_empty() {
                    "restored".to_string()
                } else {
                    told.to_string()
                };
                self.logical_completed(&message);
            }
        }
    }

    fn logical_completed(&mut self, message: &str) {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(self.now);
        self.status.phase = Some(RestorePhase::Completed);
        self.status.phase_since = Some(now.clone());
        self.status.completed_at = Some(now);
        self.status.message = Some(message.to_string());
        self.requeue = None;
        self.condition(CONDITION_READY, STATUS_TRUE, "Completed", message);
        self.condition(CONDITION_PROGRESSING, STATUS_FALSE, "Completed", "");
        self.condition(CONDITION_FAILED, STATUS_FALSE, "Completed", "");
    }

    /// The backup and the StatefulSet, or why the restore cannot start.
    fn logical_check(
        &self,
        logical: &LogicalRestore,
    ) -> Result<(PostgresBackup, &StatefulSet), Hold> {
        let restore = self.restore;
        let spec = &restore.spec;
        let namespace = restore.namespace().unwrap_or_default();
        if logical.clean && !spec.confirm {
            return Err((
                false,
                "NotConfirmed",
                "logical.clean replaces what exists: set confirm: true".into(),
            ));
        }
        let Some(stateful_set) = self.observed.references.stateful_set.as_ref() else {
            return Err((
                false,
                "StatefulSetNotFound",
                format!(
                    "StatefulSet {namespace}/{} does not exist (target.statefulSet)",
                    spec.target.stateful_set
                ),
            ));
        };
        let backup = match &self.observed.source {
            SourceObject::Backup(Some(backup)) => backup,
            SourceObject::Schedule(_) | SourceObject::Backup(None) => {
                return Err((false, "SourceNotFound", source_missing(restore, &namespace)));
            }
            SourceObject::Snapshot(_) => {
                return Err((
                    false,
                    "InvalidSpec",
                    "a volume snapshot is not a logical backup".into(),
                ));
            }
        };
        let name = backup.name_any();
        if backup.spec.method != BackupMethod::Logical {
            return Err((
                false,
                "PhysicalSource",
                format!(
                    "PostgresBackup {name} is a physical backup: spec.logical restores a logical one (a physical backup restores without spec.logical)"
                ),
            ));
        }
        let status = backup.status.clone().unwrap_or_default();
        match status.phase {
            Some(BackupPhase::Completed) => {}
            Some(BackupPhase::Failed) => {
                return Err((
                    false,
                    "SourceFailed",
                    format!(
                        "PostgresBackup {name} failed: {}",
                        status.message.unwrap_or_default()
                    ),
                ));
            }
            _ => {
                return Err((
                    true,
                    "SourceNotReady",
                    format!("PostgresBackup {name} has not completed yet"),
                ));
            }
        }
        if let Some(database) = &logical.database
            && !status.databases.contains(database)
        {
            return Err((
                false,
                "DatabaseNotInBackup",
                format!(
                    "PostgresBackup {name} holds no database {database:?} (it holds {:?})",
                    status.databases
                ),
            ));
        }
        references::check(
            &namespace,
            &spec.target,
            Some(&backup.spec.repository),
            &self.observed.references,
        )
        .map_err(|p| (true, p.reason, p.message))?;
        if let Some(rival) = self.observed.rivals.first() {
            return Err((
                false,
                "RestoreInProgress",
                format!(
                    "PointInTimeRestore {rival} of the same StatefulSet has not finished; one restore at a time"
                ),
            ));
        }
        if let Some(by) = stateful_set.annotations().get(ANNOTATION_SCALED_DOWN_BY) {
            return Err((
                false,
                "StatefulSetBusy",
                format!(
                    "StatefulSet {namespace}/{} is scaled down by {by}: its server is not running",
                    spec.target.stateful_set
                ),
            ));
        }
        Ok(((**backup).clone(), stateful_set))
    }
}

/// Why the source was not found, in the words of the field that names it.
fn source_missing(restore: &PointInTimeRestore, namespace: &str) -> String {
    match &restore.spec.source.backup_schedule {
        Some(schedule) => format!(
            "BackupSchedule {namespace}/{schedule} does not exist, makes no logical backups, or has none completed"
        ),
        None => format!(
            "PostgresBackup {namespace}/{} does not exist (source.postgresBackup)",
            restore
                .spec
                .source
                .postgres_backup
                .clone()
                .unwrap_or_default()
        ),
    }
}

/// What is restored, in words: "database shop (tables [\"sales.orders\"]) into shop_old".
pub fn describe(logical: &LogicalRestore) -> String {
    let mut words = match &logical.database {
        Some(database) => format!("database {database}"),
        None => "every database".to_string(),
    };
    if !logical.schemas.is_empty() {
        words.push_str(&format!(" (schemas {:?})", logical.schemas));
    }
    if !logical.tables.is_empty() {
        words.push_str(&format!(" (tables {:?})", logical.tables));
    }
    if let Some(into) = &logical.into_database {
        words.push_str(&format!(" into {into}"));
    }
    words
}

/// The Job that runs `pgbackup restore --logical` against the StatefulSet's primary
/// (among `hosts`), reading the backup exactly as it was written (`--expect-sha256`), and
/// unless `source.allowOtherCluster` only into the cluster the backup is of.
pub fn logical_job(
    restore: &PointInTimeRestore,
    logical: &LogicalRestore,
    settings: &AgentSettings,
    major: u32,
    backup: &PostgresBackup,
    hosts: &str,
) -> Job {
    let spec = &restore.spec;
    let namespace = backup.namespace().unwrap_or_default();
    let status = backup.status.clone().unwrap_or_default();
    let server = agent_pod::server_name(&backup.spec.repository, &namespace, &backup.spec.target);
    let wiring = agent_pod::repository_wiring(&backup.spec.repository, &server);
    let mut args = vec![
        "restore".to_string(),
        "--backup".into(),
        status.backup_id.clone().unwrap_or_default(),
    ];
    if let Some(sha256) = &status.sha256 {
        args.extend(["--expect-sha256".into(), sha256.clone()]);
    }
    args.extend(logical.agent_args());
    if !spec.source.allow_other_cluster {
        // With --logical, "pgdata" names the cluster of the server restored into.
        args.extend(["--expect-cluster".into(), "pgdata".into()]);
    }
    args.extend(wiring.args.iter().cloned());
    let (mut env, mut volumes) =
        agent_pod::database_env(&spec.target, hosts, DatabaseWork::Restoring);
    env.extend(wiring.env.iter().cloned());
    volumes.extend(wiring.volume.clone().zip(wiring.mount.clone()));
    let container = AgentContainer {
        name: STEP.into(),
        image: settings.image_for(major),
        args,
        env,
        volumes,
        resources: agent_pod::resources_or(spec.resources.as_ref(), ("100m", "256Mi", "1Gi")),
        identity: wiring.service_account.clone(),
    };
    agent_pod::agent_job(
        restore,
        JobShape {
            name: build::job_name(restore, STEP),
            component: "restore",
            ownership: Ownership::Owned,
            options: &JobOptions {
                placement: spec.placement.clone(),
                ..JobOptions::default()
            },
            // Not tried again: a second run would meet what the first left (a partial
            // restore runs in one transaction and leaves nothing), so status says why.
            backoff_limit: 0,
        },
        settings,
        container,
    )
}

#[cfg(test)]
#[path = "logical_tests.rs"]
mod tests;
