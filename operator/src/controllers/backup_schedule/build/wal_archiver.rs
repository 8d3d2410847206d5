//! The WAL archiver Deployment, and the Job that drops its replication slot once archiving
//! ends.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        batch::v1::{Job, JobSpec},
        core::v1::{
            ContainerPort, EmptyDirVolumeSource, HTTPGetAction, PodTemplateSpec, Probe, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::ResourceExt;

use super::{ARCHIVER_PORT, archiver_name, drop_slot_job_name, meta, slot_name};
use crate::{
    api::{BackupSchedule, CompressionAlgorithm, DatabaseTarget, Repository, WalArchiving},
    controllers::Settings,
    k8s::{
        LABEL_COMPONENT, LABEL_INSTANCE, agent_pod,
        agent_pod::{AgentContainer, DatabaseWork, env},
    },
};

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
