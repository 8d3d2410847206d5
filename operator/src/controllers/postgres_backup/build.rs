//! The Jobs of a PostgresBackup, as objects (pure): the backup Job and the Job that deletes
//! the backup's data when the object goes with `deletionPolicy: Delete`.

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMapVolumeSource, Volume, VolumeMount},
};
use kube::ResourceExt;

use super::configuration;
use crate::{
    api::{
        BackupMethod, CheckpointMode, CompressOn, CompressionAlgorithm, DumpFormat, PostgresBackup,
    },
    k8s::{
        ANNOTATION_ROW_COUNTS, agent_pod,
        agent_pod::{AgentContainer, AgentSettings, DatabaseWork},
        child_name, verify_job,
    },
};

/// Name of the backup Job of `backup`.
pub fn backup_job_name(backup: &PostgresBackup) -> String {
    child_name(&backup.name_any(), "backup")
}

/// The major version in a recorded `serverVersion` (`16.4` → 16).
pub fn major_of(server_version: Option<&str>) -> Option<u32> {
    server_version?.split('.').next()?.parse().ok()
}

/// How the agent reaches the backup's repository, as its server.
fn wiring(backup: &PostgresBackup) -> agent_pod::RepositoryWiring {
    let namespace = backup.namespace().unwrap_or_default();
    let spec = &backup.spec;
    let server = agent_pod::server_name(&spec.repository, &namespace, &spec.target);
    agent_pod::repository_wiring(&spec.repository, &server)
}

/// Name of the restore-test Job of `backup`.
pub fn verify_job_name(backup: &PostgresBackup) -> String {
    child_name(&backup.name_any(), "verify")
}

/// Name of the Job that deletes the data of `backup`.
pub fn delete_job_name(backup: &PostgresBackup) -> String {
    child_name(&backup.name_any(), "delete")
}

/// The `pgbackup backup` options the spec asks for.
pub fn backup_args(backup: &PostgresBackup) -> Vec<String> {
    let spec = &backup.spec;
    let mut args = vec!["backup".to_string(), "--method".into()];
    match spec.method {
        BackupMethod::Logical => {
            args.push("logical".into());
            if let Some(logical) = &spec.logical {
                for database in &logical.databases {
                    args.extend(["--database".into(), database.clone()]);
                }
                if !logical.globals {
                    args.push("--no-globals".into());
                }
                if logical.format == DumpFormat::Directory {
                    args.extend([
                        "--format".into(),
                        "directory".into(),
                        "--jobs".into(),
                        logical.jobs.to_string(),
                    ]);
                }
            }
        }
        BackupMethod::Physical => {
            args.push("physical".into());
            let physical = spec.physical.clone().unwrap_or_default();
            args.extend([
                "--checkpoint".into(),
                match physical.checkpoint {
                    CheckpointMode::Fast => "fast",
                    CheckpointMode::Spread => "spread",
                }
                .into(),
                "--compress-on".into(),
                match physical.compress_on {
                    CompressOn::Server => "server",
                    CompressOn::Client => "client",
                }
                .into(),
            ]);
            if physical.incremental {
                args.push("--incremental".into());
                if let Some(every) = physical.full_every {
                    args.extend(["--full-every".into(), every.to_string()]);
                }
                if let Some(after) = physical.full_after {
                    args.extend(["--full-after".into(), after]);
                }
                if physical.fall_back_to_full {
                    args.push("--fall-back-to-full".into());
                }
            }
        }
    }
    let compression = &spec.repository.compression;
    args.extend([
        "--compression".into(),
        match compression.algorithm {
            CompressionAlgorithm::Zstd => "zstd",
            CompressionAlgorithm::Lz4 => "lz4",
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::None => "none",
        }
        .into(),
    ]);
    if let Some(level) = compression.level {
        args.extend(["--compression-level".into(), level.to_string()]);
    }
    if !counts_rows(backup) {
        args.push("--no-row-counts".into());
    }
    args
}

/// Whether the backup records the rows of every table: only for a restore test (its own,
/// or its schedule's), since counting reads every table once more.
fn counts_rows(backup: &PostgresBackup) -> bool {
    backup.spec.verify.as_ref().is_some_and(|v| v.enabled)
        || backup
            .annotations()
            .get(ANNOTATION_ROW_COUNTS)
            .is_some_and(|v| v == "true")
}

/// The backup Job: the agent image of the server's major version runs `pgbackup backup`
/// against `host`.
pub fn backup_job(
    backup: &PostgresBackup,
    settings: &AgentSettings,
    host: &str,
    major: u32,
) -> Job {
    let spec = &backup.spec;
    let wiring = wiring(backup);
    let mut args = backup_args(backup);
    args.extend(wiring.args.iter().cloned());
    let (mut env, mut volumes) = agent_pod::database_env(&spec.target, host, DatabaseWork::Backup);
    env.extend(wiring.env.iter().cloned());
    volumes.extend(wiring.volume.clone().zip(wiring.mount.clone()));
    // The Kubernetes configuration stored with the backup; optional, so that a ConfigMap
    // that could not be made never stops a backup (the agent warns instead).
    volumes.push(configuration_volume(backup));
    env.push(agent_pod::env(
        "PGBACKUP_CONFIGURATION",
        format!("{CONFIGURATION_MOUNT}/{}", configuration::DOCUMENT_KEY),
    ));
    let container = AgentContainer {
        name: "backup".into(),
        image: settings.image_for(major),
        args,
        env,
        volumes,
        resources: agent_pod::resources_or(spec.job.resources.as_ref(), ("100m", "256Mi", "1Gi")),
        identity: wiring.service_account.clone(),
    };
    agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: backup_job_name(backup),
            component: "backup",
            ownership: agent_pod::Ownership::Owned,
            options: &spec.job,
            backoff_limit: spec.job.backoff_limit,
        },
        settings,
        container,
    )
}

/// Where the backup Job mounts the configuration ConfigMap.
const CONFIGURATION_MOUNT: &str = "/etc/pgbackup/configuration";

fn configuration_volume(backup: &PostgresBackup) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "configuration".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: configuration::config_map_name(backup),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "configuration".into(),
            mount_path: CONFIGURATION_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The restore-test Job of backup `backup_id`, with the agent image of its major version.
pub fn verify_job(
    backup: &PostgresBackup,
    settings: &AgentSettings,
    backup_id: &str,
    major: u32,
) -> Job {
    let spec = &backup.spec;
    let wiring = wiring(backup);
    let expected = backup.status.as_ref().and_then(|s| s.sha256.as_deref());
    let container =
        verify_job::verify_container(settings.image_for(major), backup_id, expected, &wiring);
    agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: verify_job_name(backup),
            component: "verify",
            ownership: agent_pod::Ownership::Owned,
            options: &spec.job,
            backoff_limit: 0,
        },
        settings,
        container,
    )
}

/// The Job that deletes backup `backup_id` (and the WAL no remaining physical backup
/// needs) from the repository.
pub fn delete_job(backup: &PostgresBackup, settings: &AgentSettings, backup_id: &str) -> Job {
    let wiring = wiring(backup);
    let recorded = backup
        .status
        .as_ref()
        .and_then(|s| s.server_version.as_deref());
    let major = major_of(recorded).unwrap_or(settings.default_major);
    let container = agent_pod::repository_container(
        "delete",
        settings.image_for(major),
        &["prune", "--backup-id", backup_id, "--delete"],
        &wiring,
        Vec::new(),
    );
    agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: delete_job_name(backup),
            component: "delete",
            ownership: agent_pod::Ownership::Free,
            options: &backup.spec.job,
            backoff_limit: 3,
        },
        settings,
        container,
    )
}
