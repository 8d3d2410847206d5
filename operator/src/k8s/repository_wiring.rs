//! How an agent pod reaches the backup repository: the S3 endpoint and its credentials, or a mounted claim, as environment, volumes and mounts.

use k8s_openapi::api::core::v1::{EnvVar, PersistentVolumeClaimVolumeSource, Volume, VolumeMount};

use super::agent_env::{env, env_from_secret};
use super::agent_pod::{AgentContainer, resources_or};
use crate::api::Repository;

/// Where a volume repository is mounted.
pub(super) const REPOSITORY_MOUNT: &str = "/repository";

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
