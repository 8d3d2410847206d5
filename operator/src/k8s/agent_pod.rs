//! The pods that run the agent (backup and delete Jobs, the WAL archiver, the trigger):
//! image, environment (credentials only through `secretKeyRef`), repository wiring and the
//! pod security every one of them gets.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
            ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
            ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::api::resource::Quantity,
};

use crate::api::{DatabaseTarget, Repository, ServerPreference};

/// Where the pod's termination message goes: the agent writes its result there.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Where a volume repository is mounted.
const REPOSITORY_MOUNT: &str = "/repository";

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

/// The hosts the agent chooses among: `target.host`, else `<pod>.<serviceName>` of
/// `target.pod`, else of every pod of the StatefulSet (ordinal 0 first; the replicas it
/// runs, or will run again after a restore scaled it down), of which the agent takes the
/// one of the role asked for ([`server_role`]). `None` when the StatefulSet names no
/// service and no host is given.
pub fn database_hosts(target: &DatabaseTarget, stateful_set: &StatefulSet) -> Option<Vec<String>> {
    if let Some(host) = target.host.as_ref().filter(|h| !h.is_empty()) {
        return Some(vec![host.clone()]);
    }
    let spec = stateful_set.spec.as_ref();
    let service = spec
        .and_then(|s| s.service_name.as_deref())
        .filter(|s| !s.is_empty())?;
    if let Some(pod) = &target.pod {
        return Some(vec![format!("{pod}.{service}")]);
    }
    let running = spec.and_then(|s| s.replicas).unwrap_or(1);
    let recorded = stateful_set
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::scale::ANNOTATION_ORIGINAL_REPLICAS))
        .and_then(|r| r.parse::<i32>().ok())
        .unwrap_or(0);
    let pods = running.max(recorded).clamp(1, MAX_LISTED_PODS);
    Some(
        (0..pods)
            .map(|n| format!("{}-{n}.{service}", target.stateful_set))
            .collect(),
    )
}

/// Most pods listed for the agent to ask: a database with more replicas than this has its
/// primary among the first ones, or names it with `target.pod` or `target.host`.
const MAX_LISTED_PODS: i32 = 16;

/// What the agent connects to for `work`, as `PGBACKUP_SERVER_ROLE` says it: the WAL
/// archiver and the slot it drops follow the primary; a backup the role `target.prefer`
/// names.
pub fn server_role(target: &DatabaseTarget, work: DatabaseWork) -> &'static str {
    match (work, target.prefer) {
        (DatabaseWork::Backup, ServerPreference::Standby) => "prefer-standby",
        _ => "primary",
    }
}

/// What an agent pod does with the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseWork {
    /// Takes a backup.
    Backup,
    /// Archives WAL (or drops the archiver's slot).
    Archiving,
    /// Restores a logical backup into the running server.
    Restoring,
}

/// The server's name inside the repository: `repository.serverName`, else
/// `<namespace>-<statefulSet>`.
pub fn server_name(repository: &Repository, namespace: &str, target: &DatabaseTarget) -> String {
    repository
        .server_name
        .clone()
        .unwrap_or_else(|| format!("{namespace}-{}", target.stateful_set))
}

/// A plain environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An environment variable from a field of the pod itself (`status.podIP`, …).
pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// An environment variable from a key of a Secret: the only way credentials reach a pod.
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Where the CA certificate of `target.sslRootCert` is mounted.
const CA_MOUNT: &str = "/etc/pgbackup/postgres-ca";

/// The connection settings of the database, as libpq's environment (`PGHOST` may list
/// several hosts, to choose among by role), and the CA certificate's volume when the
/// target names one.
pub fn database_env(
    target: &DatabaseTarget,
    host: &str,
    work: DatabaseWork,
) -> (Vec<EnvVar>, Vec<(Volume, VolumeMount)>) {
    let secret = &target.credentials_secret;
    let mut vars = vec![env("PGHOST", host)];
    // A pod or host the user named is used as it is.
    let named = target.pod.is_some() || target.host.as_ref().is_some_and(|h| !h.is_empty());
    if !named {
        vars.push(env("PGBACKUP_SERVER_ROLE", server_role(target, work)));
    }
    vars.extend([
        env("PGPORT", target.port.to_string()),
        env("PGDATABASE", &target.database),
        env("PGSSLMODE", target.ssl_mode.as_libpq()),
        env_from_secret("PGUSER", &secret.name, &secret.username_key),
        env_from_secret("PGPASSWORD", &secret.name, &secret.password_key),
    ]);
    if target.allow_weak_authentication {
        vars.push(env("PGBACKUP_ALLOW_WEAK_AUTH", "true"));
    }
    let mut volumes = Vec::new();
    if let Some(ca) = &target.ssl_root_cert {
        vars.push(env("PGSSLROOTCERT", format!("{CA_MOUNT}/ca.crt")));
        volumes.push((
            Volume {
                name: "postgres-ca".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ca.name.clone()),
                    items: Some(vec![KeyToPath {
                        key: ca.key.clone(),
                        path: "ca.crt".into(),
                        mode: None,
                    }]),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            VolumeMount {
                name: "postgres-ca".into(),
                mount_path: CA_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ));
    }
    (vars, volumes)
}

/// How a pod reaches a repository: environment, arguments of the agent command, and the
/// volume of a volume repository.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepositoryWiring {
    /// Environment variables (credentials through `secretKeyRef`).
    pub env: Vec<EnvVar>,
    /// Options after the agent's subcommand.
    pub args: Vec<String>,
    /// The claim of a volume repository.
    pub volume: Option<Volume>,
    /// Where that volume is mounted.
    pub mount: Option<VolumeMount>,
    /// The ServiceAccount whose cloud identity reaches the repository.
    pub service_account: Option<String>,
}

/// The agent's URL of a bucket and prefix: `s3://bucket/prefix`.
pub fn s3_url(s3: &crate::api::S3Repository) -> String {
    let prefix = s3.prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("s3://{}", s3.bucket)
    } else {
        format!("s3://{}/{prefix}", s3.bucket)
    }
}

/// The wiring of `repository` for the server `server`.
pub fn repository_wiring(repository: &Repository, server: &str) -> RepositoryWiring {
    let mut wiring = RepositoryWiring {
        env: vec![env("PGBACKUP_SERVER", server)],
        ..RepositoryWiring::default()
    };
    if let Some(encryption) = &repository.encryption {
        wiring.env.push(env_from_secret(
            "PGBACKUP_ENCRYPTION_KEY",
            &encryption.secret_name,
            &encryption.key,
        ));
        if encryption.allow_unencrypted {
            wiring.env.push(env("PGBACKUP_ALLOW_UNENCRYPTED", "true"));
        }
    }
    if let Some(s3) = &repository.s3 {
        wiring.env.push(env("PGBACKUP_REPOSITORY", s3_url(s3)));
        if let Some(endpoint) = &s3.endpoint {
            wiring.env.push(env("AWS_ENDPOINT_URL", endpoint));
        }
        if let Some(region) = &s3.region {
            wiring.env.push(env("AWS_REGION", region));
        }
        if s3.force_path_style {
            wiring.env.push(env("PGBACKUP_S3_FORCE_PATH_STYLE", "true"));
        }
        wiring.service_account = s3.service_account_name.clone();
        if s3.credentials_secret.is_none() && !s3.node_credentials {
            // The node's role is every pod's on the node: not a tenant's to use.
            wiring.env.push(env("AWS_EC2_METADATA_DISABLED", "true"));
        }
        if let Some(secret) = &s3.credentials_secret {
            wiring.env.push(env_from_secret(
                "AWS_ACCESS_KEY_ID",
                &secret.name,
                &secret.access_key_id_key,
            ));
            wiring.env.push(env_from_secret(
                "AWS_SECRET_ACCESS_KEY",
                &secret.name,
                &secret.secret_access_key_key,
            ));
            if let Some(key) = &secret.session_token_key {
                wiring
                    .env
                    .push(env_from_secret("AWS_SESSION_TOKEN", &secret.name, key));
            }
        }
        if let Some(sse) = &s3.server_side_encryption {
            let algorithm = serde_json::to_value(sse.algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            wiring.args.extend(["--s3-sse".into(), algorithm]);
            if let Some(key) = &sse.kms_key_id {
                wiring
                    .args
                    .extend(["--s3-sse-kms-key-id".into(), key.clone()]);
            }
        }
        if let Some(class) = &s3.storage_class {
            wiring
                .args
                .extend(["--s3-storage-class".into(), class.clone()]);
        }
    } else if let Some(volume) = &repository.volume {
        let path = volume.path.trim_matches('/');
        let url = if path.is_empty() {
            format!("file://{REPOSITORY_MOUNT}")
        } else {
            format!("file://{REPOSITORY_MOUNT}/{path}")
        };
        wiring.env.push(env("PGBACKUP_REPOSITORY", url));
        wiring.volume = Some(Volume {
            name: "repository".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
        wiring.mount = Some(VolumeMount {
            name: "repository".into(),
            mount_path: REPOSITORY_MOUNT.into(),
            ..VolumeMount::default()
        });
    }
    wiring
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

/// A small container that works on the repository only: `command` (a `pgbackup`
/// subcommand and its options) with the repository's arguments, environment and volume.
pub fn repository_container(
    name: &str,
    image: String,
    command: &[&str],
    wiring: &RepositoryWiring,
    extra_env: Vec<EnvVar>,
) -> AgentContainer {
    let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
    args.extend(wiring.args.iter().cloned());
    let mut env = wiring.env.clone();
    env.extend(extra_env);
    AgentContainer {
        name: name.into(),
        image,
        args,
        env,
        volumes: wiring
            .volume
            .clone()
            .zip(wiring.mount.clone())
            .into_iter()
            .collect(),
        resources: resources_or(None, ("50m", "64Mi", "256Mi")),
        identity: wiring.service_account.clone(),
    }
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
