//! The objects a BackupSchedule owns, built from its spec (pure): the trigger's
//! ServiceAccount, Role and RoleBinding, the CronJob, the restore-test CronJob, and the WAL
//! archiver Deployment.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec},
        core::v1::{
            ContainerPort, EmptyDirVolumeSource, HTTPGetAction, PodTemplateSpec, Probe,
            ServiceAccount, Volume, VolumeMount,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::{
    api::{
        BackupSchedule, CompressionAlgorithm, ConcurrencyPolicy, DatabaseTarget, GROUP, Repository,
        ScheduledVerify, WalArchiving,
    },
    controllers::Settings,
    k8s::{
        LABEL_COMPONENT, LABEL_INSTANCE, LABEL_SCHEDULE, MAX_CRON_JOB_NAME, agent_pod,
        agent_pod::{AgentContainer, DatabaseWork, env},
        child_name, child_name_within, label_value, labels, verify_job,
    },
};

/// Port of the archiver's `/healthz`, `/readyz`, `/metrics` and `/status`.
pub const ARCHIVER_PORT: i32 = 8080;

/// Name of the CronJob (and of the trigger's ServiceAccount, Role and RoleBinding).
pub fn cron_job_name(schedule: &BackupSchedule) -> String {
    child_name_within(&schedule.name_any(), "trigger", MAX_CRON_JOB_NAME)
}

/// Name of the CronJob of the scheduled restore tests.
pub fn verify_cron_job_name(schedule: &BackupSchedule) -> String {
    child_name_within(&schedule.name_any(), "verify", MAX_CRON_JOB_NAME)
}

/// Name of the WAL archiver Deployment.
pub fn archiver_name(schedule: &BackupSchedule) -> String {
    child_name(&schedule.name_any(), "wal-archiver")
}

/// The replication slot of the schedule's archiver: `walArchiving.slotName`, else
/// `pgbackup_<name>` in the characters a slot name allows.
pub fn slot_name(schedule: &BackupSchedule) -> String {
    if let Some(slot) = schedule
        .spec
        .wal_archiving
        .as_ref()
        .and_then(|w| w.slot_name.clone())
    {
        return slot;
    }
    let name: String = schedule
        .name_any()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("pgbackup_{name}").chars().take(63).collect()
}

/// Whether the schedule runs a WAL archiver.
pub fn archiving(schedule: &BackupSchedule) -> bool {
    schedule
        .spec
        .wal_archiving
        .as_ref()
        .is_some_and(|w| w.enabled)
}

pub(super) fn meta(schedule: &BackupSchedule, name: String, component: &str) -> ObjectMeta {
    let mut labels = labels(component, &schedule.name_any());
    labels.insert(LABEL_SCHEDULE.into(), label_value(&schedule.name_any()));
    ObjectMeta {
        name: Some(name),
        namespace: schedule.namespace(),
        labels: Some(labels),
        owner_references: schedule.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

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
pub(super) struct Runs<'a> {
    pub cron: &'a str,
    pub concurrency_policy: &'a str,
    pub backoff_limit: i32,
    pub active_deadline_seconds: Option<i64>,
}

/// A CronJob of the schedule running `pod`.
pub(super) fn scheduled(
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

/// The WAL archiver: one replica (two would fight over the slot), replaced with
/// `Recreate` for the same reason.
pub fn archiver(
    schedule: &BackupSchedule,
    archiving: &WalArchiving,
    settings: &Settings,
    repository: &Repository,
    host: &str,
    major: u32,
) -> Deployment {
    let namespace = schedule.namespace().unwrap_or_default();
    let template = &schedule.spec.template;
    let server = agent_pod::server_name(repository, &namespace, &template.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let mut args = vec![
        "wal-archive".to_string(),
        "--compression".into(),
        match repository.compression.algorithm {
            CompressionAlgorithm::Zstd => "zstd",
            CompressionAlgorithm::Lz4 => "lz4",
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::None => "none",
        }
        .into(),
    ];
    if let Some(level) = repository.compression.level {
        args.extend(["--compression-level".into(), level.to_string()]);
    }
    args.extend(wiring.args.iter().cloned());
    let (mut container_env, ca_volumes) =
        agent_pod::database_env(&template.target, host, DatabaseWork::Archiving);
    container_env.extend(wiring.env.iter().cloned());
    container_env.extend([
        env("PGBACKUP_SLOT", slot_name(schedule)),
        env(
            "PGBACKUP_PARTIAL_UPLOAD_SECONDS",
            archiving.partial_upload_seconds.to_string(),
        ),
        env(
            "PGBACKUP_WINDOW_INTERVAL_SECONDS",
            archiving.window_check_seconds.to_string(),
        ),
        // The endpoints listen on the pod's address, which kubelet's probes and Prometheus
        // use; nothing else in the pod's network (a sidecar on localhost) reaches them.
        agent_pod::env_from_field("POD_IP", "status.podIP"),
        env("PGBACKUP_LISTEN", format!("$(POD_IP):{ARCHIVER_PORT}")),
        env("PGBACKUP_SPOOL_DIR", "/spool"),
    ]);
    let mut volumes: Vec<(Volume, VolumeMount)> = ca_volumes;
    volumes.extend(wiring.volume.clone().zip(wiring.mount.clone()));
    volumes.push((
        Volume {
            name: "spool".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: "spool".into(),
            mount_path: "/spool".into(),
            ..VolumeMount::default()
        },
    ));
    let container = AgentContainer {
        name: "wal-archive".into(),
        image: settings.agent.image_for(major),
        args,
        env: container_env,
        volumes,
        resources: agent_pod::resources_or(archiving.resources.as_ref(), ("50m", "128Mi", "512Mi")),
        identity: wiring.service_account.clone(),
    };
    let mut pod = agent_pod::placed(
        agent_pod::agent_pod_spec(&settings.agent, container, "Always", None),
        &schedule.spec.template.job,
    );
    // On SIGTERM the archiver stores what it received before it exits.
    pod.termination_grace_period_seconds = Some(60);
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    if let Some(container) = pod.containers.first_mut() {
        container.ports = Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: ARCHIVER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]);
        container.liveness_probe = Some(probe("/healthz", 20));
        container.readiness_probe = Some(probe("/readyz", 10));
    }
    let metadata = meta(schedule, archiver_name(schedule), "wal-archiver");
    // The selector is immutable: only the two labels that will always mean "this schedule's
    // archiver", whatever other labels later versions add.
    let selector: BTreeMap<String, String> = metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| *k == LABEL_COMPONENT || *k == LABEL_INSTANCE)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pod_labels = metadata.labels.clone().unwrap_or_default();
    Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        metadata,
        status: None,
    }
}

/// Name of the Job that drops the replication slot when archiving ends.
pub fn drop_slot_job_name(schedule: &BackupSchedule) -> String {
    child_name(&schedule.name_any(), "drop-slot")
}

/// The Job that drops the archiver's replication slot `slot` once the archiver is gone: a
/// slot left behind keeps the server's WAL until its disk is full.
pub fn drop_slot_job(
    schedule: &BackupSchedule,
    target: &DatabaseTarget,
    settings: &Settings,
    slot: &str,
    host: &str,
    major: u32,
) -> Job {
    let namespace = schedule.namespace().unwrap_or_default();
    let template = &schedule.spec.template;
    let (mut vars, mut volumes) = agent_pod::database_env(target, host, DatabaseWork::Archiving);
    vars.push(env("PGBACKUP_SLOT", slot));
    // The archive records which slots its archiver created: only those are dropped.
    let mut args = vec!["wal-archive".to_string(), "--drop-slot".into()];
    let mut identity = None;
    match &template.repository {
        Some(repository) => {
            let server = agent_pod::server_name(repository, &namespace, &template.target);
            let wiring = agent_pod::repository_wiring(repository, &server);
            args.extend(wiring.args.iter().cloned());
            vars.extend(wiring.env.iter().cloned());
            volumes.extend(wiring.volume.clone().zip(wiring.mount.clone()));
            identity = wiring.service_account;
        }
        // No record to read: only slots named as archivers name them are dropped.
        None => vars.push(env("PGBACKUP_REPOSITORY", "file:///nonexistent")),
    }
    let container = AgentContainer {
        name: "drop-slot".into(),
        image: settings.agent.image_for(major),
        args,
        env: vars,
        volumes,
        resources: agent_pod::resources_or(None, ("10m", "32Mi", "128Mi")),
        identity,
    };
    // No owner reference: when the schedule is deleted in the foreground, the garbage
    // collector would delete the Job its finalizer waits for. The Job goes by its TTL, or
    // once it succeeded.
    let metadata = ObjectMeta {
        owner_references: None,
        ..meta(schedule, drop_slot_job_name(schedule), "drop-slot")
    };
    Job {
        spec: Some(JobSpec {
            backoff_limit: Some(3),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(agent_pod::placed(
                    agent_pod::agent_pod_spec(&settings.agent, container, "Never", None),
                    &template.job,
                )),
            },
            ..JobSpec::default()
        }),
        metadata,
        status: None,
    }
}
