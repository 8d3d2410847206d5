//! What a backup or schedule refers to in its namespace — the StatefulSet, the Secrets and
//! the agents' ServiceAccount — read at the edge, checked by pure functions that say
//! exactly what is missing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{Secret, Service, ServiceAccount},
};
use kube::{Api, Client};

use super::bound_host::{self, Selectors};
use crate::{
    api::{DatabaseTarget, Repository},
    k8s::{ApplyError, agent_pod, get_opt},
};

/// Why the work cannot start: a `PascalCase` reason and a message that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The condition reason.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// A problem.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The keys present in each referenced Secret; `None` for a Secret that does not exist.
pub type SecretKeys = BTreeMap<String, Option<BTreeSet<String>>>;

/// The referenced objects as read.
#[derive(Clone, Debug, Default)]
pub struct References {
    /// The target StatefulSet, if it exists.
    pub stateful_set: Option<StatefulSet>,
    /// The referenced Secrets' keys (never their values).
    pub secrets: SecretKeys,
    /// The Service `target.host` may name, with its selector.
    pub services: Selectors,
    /// The ServiceAccount `repository.s3.serviceAccountName` names: `None` when it does
    /// not exist, else whether it carries [`AGENT_IDENTITY_LABEL`].
    pub service_account: Option<bool>,
}

/// The label by which a ServiceAccount's owner lets pgbackup's agent pods run under it.
pub const AGENT_IDENTITY_LABEL: &str = "pgbackup.io/agent-identity";

/// The ServiceAccount the repository's agents run under, if one is named.
fn service_account_name(repository: Option<&Repository>) -> Option<&str> {
    repository
        .and_then(|r| r.s3.as_ref())
        .and_then(|s3| s3.service_account_name.as_deref())
}

/// Every `(secret, key, field)` the target and repository refer to.
pub fn secret_keys_needed(
    target: &DatabaseTarget,
    repository: Option<&Repository>,
) -> Vec<(String, String, &'static str)> {
    let creds = &target.credentials_secret;
    let mut needed = vec![
        (
            creds.name.clone(),
            creds.username_key.clone(),
            "target.credentialsSecret.usernameKey",
        ),
        (
            creds.name.clone(),
            creds.password_key.clone(),
            "target.credentialsSecret.passwordKey",
        ),
    ];
    if let Some(ca) = &target.ssl_root_cert {
        needed.push((ca.name.clone(), ca.key.clone(), "target.sslRootCert"));
    }
    if let Some(secret) = repository
        .and_then(|r| r.s3.as_ref())
        .and_then(|s3| s3.credentials_secret.as_ref())
    {
        needed.push((
            secret.name.clone(),
            secret.access_key_id_key.clone(),
            "repository.s3.credentialsSecret.accessKeyIdKey",
        ));
        needed.push((
            secret.name.clone(),
            secret.secret_access_key_key.clone(),
            "repository.s3.credentialsSecret.secretAccessKeyKey",
        ));
        if let Some(key) = &secret.session_token_key {
            needed.push((
                secret.name.clone(),
                key.clone(),
                "repository.s3.credentialsSecret.sessionTokenKey",
            ));
        }
    }
    if let Some(encryption) = repository.and_then(|r| r.encryption.as_ref()) {
        needed.push((
            encryption.secret_name.clone(),
            encryption.key.clone(),
            "repository.encryption.secretName",
        ));
    }
    needed
}

/// Reads the StatefulSet and the Secrets (keys only are kept) that `target` and
/// `repository` name, in `namespace`.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    target: &DatabaseTarget,
    repository: Option<&Repository>,
) -> Result<References, ApplyError> {
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let stateful_set = get_opt(&stateful_sets, &target.stateful_set).await?;
    let mut keys = SecretKeys::new();
    for (name, _, _) in secret_keys_needed(target, repository) {
        fetch_secret_keys(&secrets, &name, &mut keys).await?;
    }
    let mut services = Selectors::new();
    if let Some(name) = bound_host::service_to_read(target) {
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        // An ExternalName Service answers with another host's name, whatever it selects.
        if let Some(spec) = get_opt(&api, &name)
            .await?
            .and_then(|s| s.spec)
            .filter(|s| s.type_.as_deref() != Some("ExternalName"))
        {
            services.insert(name, spec.selector.unwrap_or_default());
        }
    }
    let service_account = match service_account_name(repository) {
        Some(name) => {
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
            get_opt(&api, name).await?.map(|account| {
                account
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get(AGENT_IDENTITY_LABEL)
                    .is_some_and(|v| v == "true")
            })
        }
        None => None,
    };
    Ok(References {
        stateful_set,
        secrets: keys,
        services,
        service_account,
    })
}

/// Checks that the Secret `secret` (as read into `secrets`) has `key`, named by `field`.
pub fn check_secret_key(
    namespace: &str,
    secrets: &SecretKeys,
    (secret, key, field): (&str, &str, &str),
) -> Result<(), Problem> {
    match secrets.get(secret) {
        Some(Some(keys)) if keys.contains(key) => Ok(()),
        Some(Some(_)) => Err(Problem::new(
            "SecretKeyNotFound",
            format!("Secret {namespace}/{secret} has no key {key:?} ({field})"),
        )),
        _ => Err(Problem::new(
            "SecretNotFound",
            format!("Secret {namespace}/{secret} does not exist ({field})"),
        )),
    }
}

/// Reads the keys (never the values) of the Secret `name` into `keys`, unless read already.
pub async fn fetch_secret_keys(
    secrets: &Api<Secret>,
    name: &str,
    keys: &mut SecretKeys,
) -> Result<(), ApplyError> {
    if keys.contains_key(name) {
        return Ok(());
    }
    let secret = get_opt(secrets, name).await?;
    let present = secret.map(|s| {
        s.data
            .unwrap_or_default()
            .into_keys()
            .chain(s.string_data.unwrap_or_default().into_keys())
            .collect()
    });
    keys.insert(name.to_string(), present);
    Ok(())
}

/// Checks the references; on success, the host the agent connects to.
pub fn check(
    namespace: &str,
    target: &DatabaseTarget,
    repository: Option<&Repository>,
    found: &References,
) -> Result<String, Problem> {
    let Some(stateful_set) = &found.stateful_set else {
        return Err(Problem::new(
            "StatefulSetNotFound",
            format!(
                "StatefulSet {namespace}/{} does not exist (target.statefulSet)",
                target.stateful_set
            ),
        ));
    };
    bound_host::check(namespace, target, stateful_set, &found.services)?;
    for (secret, key, field) in secret_keys_needed(target, repository) {
        check_secret_key(namespace, &found.secrets, (&secret, &key, field))?;
    }
    check_service_account(namespace, repository, found)?;
    agent_pod::database_hosts(target, stateful_set)
        .map(|hosts| {
            hosts
                .iter()
                .map(|host| bound_host::qualified(host, namespace, target))
                .collect::<Vec<_>>()
                .join(",")
        })
        .ok_or_else(|| {
            Problem::new(
                "NoDatabaseHost",
                format!(
                    "StatefulSet {namespace}/{} names no serviceName: set target.host",
                    target.stateful_set
                ),
            )
        })
}

/// Checks the Secrets and ServiceAccount `repository` names, without the database's:
/// what an agent that works on the repository alone (an offline snapshot's record) needs.
pub fn check_repository(
    namespace: &str,
    target: &DatabaseTarget,
    repository: &Repository,
    found: &References,
) -> Result<(), Problem> {
    for (secret, key, field) in secret_keys_needed(target, Some(repository)) {
        if field.starts_with("repository.") {
            check_secret_key(namespace, &found.secrets, (&secret, &key, field))?;
        }
    }
    check_service_account(namespace, Some(repository), found)
}

fn check_service_account(
    namespace: &str,
    repository: Option<&Repository>,
    found: &References,
) -> Result<(), Problem> {
    if let Some(name) = service_account_name(repository) {
        match found.service_account {
            Some(true) => {}
            Some(false) => {
                return Err(Problem::new(
                    "ServiceAccountNotAllowed",
                    format!(
                        "ServiceAccount {namespace}/{name} (repository.s3.serviceAccountName) does not carry the label {AGENT_IDENTITY_LABEL}: \"true\": its owner must label it so to let pgbackup's agent pods use its identity (kubectl -n {namespace} label serviceaccount {name} {AGENT_IDENTITY_LABEL}=true)"
                    ),
                ));
            }
            None => {
                return Err(Problem::new(
                    "ServiceAccountNotFound",
                    format!(
                        "ServiceAccount {namespace}/{name} does not exist (repository.s3.serviceAccountName)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fixtures::{backup_spec, stateful_set};

    fn found(secrets: &[(&str, Option<&[&str]>)]) -> References {
        References {
            stateful_set: Some(stateful_set("postgres:16")),
            secrets: secrets
                .iter()
                .map(|(name, keys)| {
                    (
                        name.to_string(),
                        keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
                    )
                })
                .collect(),
            services: Default::default(),
            service_account: None,
        }
    }

    #[test]
    fn the_agents_service_account_must_exist_and_be_lent_to_pgbackup() {
        let mut spec = backup_spec("logical");
        spec.repository
            .s3
            .as_mut()
            .expect("s3")
            .service_account_name = Some("backup-writer".into());
        let mut refs = found(&[
            ("pg-auth", Some(&["username", "password"])),
            (
                "s3-keys",
                Some(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]),
            ),
        ]);
        let check = |refs: &References| check("shop", &spec.target, Some(&spec.repository), refs);
        assert_eq!(
            check(&refs).expect_err("missing").reason,
            "ServiceAccountNotFound"
        );
        refs.service_account = Some(false);
        let problem = check(&refs).expect_err("not labelled");
        assert_eq!(problem.reason, "ServiceAccountNotAllowed");
        assert!(
            problem
                .message
                .contains("label serviceaccount backup-writer pgbackup.io/agent-identity=true"),
            "{}",
            problem.message
        );
        refs.service_account = Some(true);
        assert!(check(&refs).is_ok());
    }

    #[test]
    fn everything_present_gives_the_host() {
        let spec = backup_spec("logical");
        let refs = found(&[
            ("pg-auth", Some(&["username", "password"])),
            (
                "s3-keys",
                Some(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]),
            ),
        ]);
        assert_eq!(
            check("shop", &spec.target, Some(&spec.repository), &refs),
            Ok("pg-0.pg-headless.shop.svc".to_string())
        );
    }

    #[test]
    fn each_missing_reference_is_named() {
        let spec = backup_spec("logical");
        let mut refs = found(&[("pg-auth", None), ("s3-keys", None)]);
        let problem =
            check("shop", &spec.target, Some(&spec.repository), &refs).expect_err("missing");
        assert_eq!(problem.reason, "SecretNotFound");
        assert!(
            problem.message.contains("shop/pg-auth"),
            "{}",
            problem.message
        );

        refs = found(&[("pg-auth", Some(&["username"])), ("s3-keys", Some(&[]))]);
        let problem =
            check("shop", &spec.target, Some(&spec.repository), &refs).expect_err("missing");
        assert_eq!(problem.reason, "SecretKeyNotFound");
        assert!(
            problem.message.contains("\"password\""),
            "{}",
            problem.message
        );

        refs.stateful_set = None;
        let problem =
            check("shop", &spec.target, Some(&spec.repository), &refs).expect_err("missing");
        assert_eq!(problem.reason, "StatefulSetNotFound");
    }
}
