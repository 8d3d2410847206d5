//! The trigger's ServiceAccount, Role and RoleBinding, the CronJob that runs `pgbackup
//! trigger`, the restore-test CronJob, and the CronJob frame the copies share.

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
        core::v1::{PodTemplateSpec, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::ResourceExt;

use super::{cron_job_name, meta, verify_cron_job_name};
use crate::{
    api::{BackupSchedule, ConcurrencyPolicy, GROUP, Repository, ScheduledVerify},
    controllers::Settings,
    k8s::{agent_pod, agent_pod::AgentContainer, verify_job},
};

/// The names of the Secrets a schedule's template refers to.
fn template_secrets(schedule: &BackupSchedule) -> Vec<String> {
    let template = &schedule.spec.template;
    let names: std::collections::BTreeSet<String> =
        crate::controllers::references::secret_keys_needed(
            &template.target,
            template.repository.as_ref(),
        )
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    names.into_iter().collect()
}

/// The trigger's ServiceAccount, and a Role that lets it read this schedule and create
/// (and, for `concurrencyPolicy: Replace`, delete) the backup objects — nothing more but
/// `get` on the Secrets the template names: the chart's admission policy admits a backup
/// object only from a user who may read the Secrets it references, the trigger included.
pub fn trigger_rbac(schedule: &BackupSchedule) -> (ServiceAccount, Role, RoleBinding) {
    let name = cron_job_name(schedule);
    let account = ServiceAccount {
        metadata: meta(schedule, name.clone(), "trigger"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let rule = |resources: &[&str], verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
        api_groups: Some(vec![GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: names,
        non_resource_urls: None,
    };
    let role = Role {
        metadata: meta(schedule, name.clone(), "trigger"),
        rules: Some(vec![
            rule(
                &["backupschedules"],
                &["get"],
                Some(vec![schedule.name_any()]),
            ),
            rule(
                &["postgresbackups", "volumesnapshotbackups"],
                &["list", "create", "delete"],
                None,
            ),
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                ..rule(&["secrets"], &["get"], Some(template_secrets(schedule)))
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(schedule, name.clone(), "trigger"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: schedule.namespace(),
            api_group: None,
        }]),
    };
    (account, role, binding)
}

/// The CronJob whose pod runs `pgbackup trigger` for this schedule.
pub fn cron_job(schedule: &BackupSchedule, settings: &Settings) -> CronJob {
    let spec = &schedule.spec;
    let name = cron_job_name(schedule);
    let container = AgentContainer {
        name: "trigger".into(),
        image: settings.trigger_image.clone(),
        args: vec!["trigger".into(), "--schedule".into(), schedule.name_any()],
        env: Vec::new(),
        volumes: Vec::new(),
        resources: agent_pod::resources_or(None, ("10m", "32Mi", "128Mi")),
        identity: None,
    };
    let mut pod = agent_pod::placed(
        agent_pod::agent_pod_spec(&settings.agent, container, "Never", Some(&name)),
        &spec.template.job,
    );
    // The trigger image is the operator's (a static binary): any non-root id will do.
    if let Some(security) = pod.security_context.as_mut() {
        security.run_as_user = Some(65532);
        security.run_as_group = Some(65532);
        security.fs_group = None;
    }
    let policy = match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid => "Forbid",
        ConcurrencyPolicy::Replace => "Replace",
        ConcurrencyPolicy::Allow => "Allow",
    };
    let runs = Runs {
        cron: &spec.schedule,
        concurrency_policy: policy,
        backoff_limit: 3,
        active_deadline_seconds: Some(600),
    };
    scheduled(schedule, meta(schedule, name, "trigger"), runs, pod)
}

/// The restore-test CronJob: `pgbackup verify --restore` of `expected` — the id and
/// manifest SHA-256 of the schedule's newest completed backup — one at a time, with the
/// agent image of the server's major version. Only a backup the schedule made is tested:
/// whatever else the repository holds may have been written by someone else. Until the
/// schedule has one, the CronJob is suspended.
pub fn verify_cron_job(
    schedule: &BackupSchedule,
    verify: &ScheduledVerify,
    settings: &Settings,
    repository: &Repository,
    major: u32,
    expected: Option<(&str, &str)>,
) -> CronJob {
    let namespace = schedule.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &schedule.spec.template.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let (backup, sha256) = expected.map_or(("latest", None), |(id, sha)| (id, Some(sha)));
    let container =
        verify_job::verify_container(settings.agent.image_for(major), backup, sha256, &wiring);
    let pod = agent_pod::placed(
        agent_pod::agent_pod_spec(&settings.agent, container, "Never", None),
        &schedule.spec.template.job,
    );
    let runs = Runs {
        cron: &verify.schedule,
        concurrency_policy: "Forbid",
        backoff_limit: 0,
        active_deadline_seconds: None,
    };
    let name = verify_cron_job_name(schedule);
    let mut cron_job = scheduled(schedule, meta(schedule, name, "verify"), runs, pod);
    if expected.is_none()
        && let Some(spec) = cron_job.spec.as_mut()
    {
        spec.suspend = Some(true);
    }
    cron_job
}

/// When and how a CronJob's Jobs run.
pub(in crate::controllers::backup_schedule) struct Runs<'a> {
    pub cron: &'a str,
    pub concurrency_policy: &'a str,
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
}

/// A CronJob of the schedule running `pod`.
pub(in crate::controllers::backup_schedule) fn scheduled(
    schedule: &BackupSchedule,
    metadata: ObjectMeta,
    runs: Runs<'_>,
    pod: k8s_openapi::api::core::v1::PodSpec,
) -> CronJob {
    let spec = &schedule.spec;
    CronJob {
        spec: Some(CronJobSpec {
            schedule: runs.cron.to_string(),
            time_zone: spec.time_zone.clone(),
            suspend: Some(spec.suspend),
            concurrency_policy: Some(runs.concurrency_policy.into()),
            starting_deadline_seconds: spec.starting_deadline_seconds,
            successful_jobs_history_limit: Some(spec.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(spec.failed_jobs_history_limit),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(runs.backoff_limit),
                    active_deadline_seconds: runs.active_deadline_seconds,
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: metadata.labels.clone(),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
        }),
        metadata,
        status: None,
    }
}
