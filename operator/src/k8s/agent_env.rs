//! Which database an agent pod talks to, and how: the hosts (primary or a standby, by pod), the server name, and the environment with credentials only through `secretKeyRef`.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{
        EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, SecretKeySelector,
        SecretVolumeSource, Volume, VolumeMount,
    },
};

use crate::api::{DatabaseTarget, Repository, ServerPreference};

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
pub(super) const MAX_LISTED_PODS: i32 = 16;

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
pub(super) const CA_MOUNT: &str = "/etc/pgbackup/postgres-ca";

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
