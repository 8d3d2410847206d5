//! The pods that run the agent (backup and delete Jobs, the WAL archiver, the trigger):
//! image, environment (credentials only through `secretKeyRef`), repository wiring and the
//! pod security every one of them gets.

pub use super::agent_env::{
    DatabaseWork, database_env, database_hosts, env, env_from_field, env_from_secret, server_name,
    server_role,
};
pub use super::repository_wiring::{
    RepositoryWiring, repository_container, repository_wiring, s3_url,
};

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
            ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::api::resource::Quantity,
};

/// Where the pod's termination message goes: the agent writes its result there.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The agent image by default: `{major}` is the PostgreSQL major version; the tag carries
/// this operator's version, so an upgraded operator never runs an older agent.
pub const DEFAULT_AGENT_IMAGE: &str = concat!("pgbackup/agent:{major}-", env!("CARGO_PKG_VERSION"));

/// How the operator runs agent pods (from its command line, set by the chart).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSettings {
    /// Agent image; `{major}` is replaced by the PostgreSQL major version.
    pub image: String,
    /// `imagePullPolicy` of agent containers; unset: Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Secrets (in each database's namespace) for pulling agent and trigger images.
    pub image_pull_secrets: Vec<String>,
    /// Major version assumed when the StatefulSet's image does not tell.
    pub default_major: u32,
    /// User and group id the agent runs as (`postgres` in the official images: 999).
    pub run_as_user: i64,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            image: DEFAULT_AGENT_IMAGE.into(),
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            default_major: 16,
            run_as_user: 999,
        }
    }
}

impl AgentSettings {
    /// The agent image for a PostgreSQL major version.
    pub fn image_for(&self, major: u32) -> String {
        self.image.replace("{major}", &major.to_string())
    }
}

/// The PostgreSQL major version the StatefulSet runs, from its image tag (`postgres:16.4`,
/// `bitnami/postgresql:17.2.0-debian-12-r3`, `…/postgres:15`): the container named like
/// PostgreSQL, else the first one.
pub fn postgres_major(stateful_set: &StatefulSet) -> Option<u32> {
    let containers = &stateful_set
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers;
    let container = containers
        .iter()
        .find(|c| c.name.contains("postgres"))
        .or_else(|| containers.first())?;
    let image = container.image.as_deref()?;
    let image = image.split('@').next()?;
    let (_, tag) = image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))?;
    let major: u32 = tag
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    (13..=99).contains(&major).then_some(major)
}

/// Default resources of an agent container: `(cpu request, memory request, memory limit)`.
pub fn resources_or(
    given: Option<&ResourceRequirements>,
    (cpu, memory, memory_limit): (&str, &str, &str),
) -> ResourceRequirements {
    given.cloned().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        claims: None,
    })
}

/// One agent container and what it needs around it.
#[derive(Clone, Debug, Default)]
pub struct AgentContainer {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// `pgbackup` arguments: the subcommand and its options.
    pub args: Vec<String>,
    /// Environment besides the common one.
    pub env: Vec<EnvVar>,
    /// Extra volumes and their mounts.
    pub volumes: Vec<(Volume, VolumeMount)>,
    /// CPU and memory.
    pub resources: ResourceRequirements,
    /// The ServiceAccount of the repository's cloud identity
    /// ([`RepositoryWiring::service_account`]); no API token comes with it.
    pub identity: Option<String>,
}

/// The pod spec of an agent container: non-root, read-only root filesystem, no
/// capabilities, seccomp `RuntimeDefault`, a writable `/tmp`, the result in the termination
/// message, and no Kubernetes API token unless `service_account` is named (the container's
/// identity ServiceAccount, for the cloud, brings none).
pub fn agent_pod_spec(
    settings: &AgentSettings,
    container: AgentContainer,
    restart_policy: &str,
    service_account: Option<&str>,
) -> PodSpec {
    let mut env = vec![
        env("PGBACKUP_LOG_FORMAT", "json"),
        env("PGBACKUP_RESULT_FILE", TERMINATION_LOG),
        env("TMPDIR", "/tmp"),
        env("HOME", "/tmp"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(container.env);
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    for (volume, mount) in container.volumes {
        volumes.push(volume);
        mounts.push(mount);
    }
    PodSpec {
        restart_policy: Some(restart_policy.into()),
        service_account_name: service_account
            .map(str::to_string)
            .or_else(|| container.identity.clone()),
        automount_service_account_token: Some(service_account.is_some()),
        enable_service_links: Some(false),
        image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
            settings
                .image_pull_secrets
                .iter()
                .map(|name| k8s_openapi::api::core::v1::LocalObjectReference { name: name.clone() })
                .collect()
        }),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            run_as_group: Some(settings.run_as_user),
            fs_group: Some(settings.run_as_user),
            // The kubelet walks a volume to re-own it only when its root is not the group's
            // already: a repository volume of millions of files is not re-owned per pod.
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: container.name,
            image: Some(container.image),
            image_pull_policy: settings.image_pull_policy.clone(),
            command: Some(vec!["pgbackup".into()]),
            args: Some(container.args),
            env: Some(env),
            volume_mounts: Some(mounts),
            resources: Some(container.resources),
            termination_message_path: Some(TERMINATION_LOG.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// `pod` placed as `options` say: node selector, tolerations, affinity, priority class.
pub fn placed(pod: PodSpec, options: &crate::api::JobOptions) -> PodSpec {
    placed_at(pod, &options.placement)
}

/// `pod` placed as `placement` says.
pub fn placed_at(mut pod: PodSpec, placement: &crate::api::AgentPlacement) -> PodSpec {
    if !placement.node_selector.is_empty() {
        pod.node_selector = Some(placement.node_selector.clone());
    }
    if !placement.tolerations.is_empty() {
        pod.tolerations = Some(placement.tolerations.clone());
    }
    pod.affinity = placement.affinity.clone();
    pod.priority_class_name = placement.priority_class_name.clone();
    pod
}

/// Whether a Job is owned by its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Owned: it goes with its object (the work the object asks for).
    Owned,
    /// Not owned: a Job a finalizer waits for, which a foreground deletion of its object
    /// must not remove first. It goes by its TTL.
    Free,
}

/// What a Job of an object is: its name and role, whether the object owns it, and how it
/// is retried and kept.
#[derive(Debug)]
pub struct JobShape<'a> {
    /// The Job's name.
    pub name: String,
    /// `app.kubernetes.io/component`.
    pub component: &'a str,
    /// Owned by the object or not.
    pub ownership: Ownership,
    /// Deadline and history.
    pub options: &'a crate::api::JobOptions,
    /// Pod failures retried.
    pub backoff_limit: i32,
}

/// A Job of `owner` (labelled with its name) that runs `container` once, shaped by
/// `shape`.
pub fn agent_job<K: kube::Resource<DynamicType = ()>>(
    owner: &K,
    shape: JobShape<'_>,
    settings: &AgentSettings,
    container: AgentContainer,
) -> k8s_openapi::api::batch::v1::Job {
    let JobShape {
        name,
        component,
        ownership,
        options,
        backoff_limit,
    } = shape;
    use k8s_openapi::{
        api::{
            batch::v1::{Job, JobSpec},
            core::v1::PodTemplateSpec,
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use kube::ResourceExt;
    let owner_name = owner.name_any();
    let mut labels = super::labels(component, &owner_name);
    labels.insert(super::LABEL_BACKUP.into(), super::label_value(&owner_name));
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: owner.namespace(),
            labels: Some(labels.clone()),
            owner_references: match ownership {
                Ownership::Owned => owner.controller_owner_ref(&()).map(|o| vec![o]),
                Ownership::Free => None,
            },
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(backoff_limit),
            active_deadline_seconds: options.active_deadline_seconds,
            ttl_seconds_after_finished: Some(options.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(placed(
                    agent_pod_spec(settings, container, "Never", None),
                    options,
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
#[path = "agent_pod_tests.rs"]
mod tests;
