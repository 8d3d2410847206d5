//! Tests of the agent's pods: options, targeting, Secrets by reference, volumes, lock-down.

use k8s_openapi::api::core::v1::EnvVar;

use super::*;
use crate::api::DatabaseTarget;
use crate::k8s::fixtures::{backup_spec, stateful_set};

fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter().find(|e| e.name == name)?.value.as_deref()
}

fn secret_ref(env: &[EnvVar], name: &str) -> Option<(String, String)> {
    let selector = env
        .iter()
        .find(|e| e.name == name)?
        .value_from
        .as_ref()?
        .secret_key_ref
        .as_ref()?;
    Some((selector.name.clone(), selector.key.clone()))
}

#[test]
fn the_major_version_comes_from_the_postgres_image_tag() {
    for (image, major) in [
        ("postgres:16.4", Some(16)),
        ("docker.io/bitnami/postgresql:17.2.0-debian-12-r3", Some(17)),
        ("registry:5000/team/postgres:15", Some(15)),
        ("postgres:13-alpine@sha256:abcd", Some(13)),
        ("postgres", None),
        ("registry:5000/postgres", None),
        ("postgres:latest", None),
    ] {
        assert_eq!(postgres_major(&stateful_set(image)), major, "{image}");
    }
}

#[test]
fn every_pod_behind_the_statefulsets_service_is_listed_unless_one_is_named() {
    let mut target = backup_spec("logical").target;
    let mut sts = stateful_set("postgres:16");
    let hosts = |target: &DatabaseTarget, sts: &StatefulSet| database_hosts(target, sts);
    assert_eq!(hosts(&target, &sts), Some(vec!["pg-0.pg-headless".into()]));
    sts.spec.as_mut().expect("spec").replicas = Some(3);
    assert_eq!(
        hosts(&target, &sts),
        Some(vec![
            "pg-0.pg-headless".into(),
            "pg-1.pg-headless".into(),
            "pg-2.pg-headless".into()
        ])
    );
    // Scaled down by a restore: the pods it will run again.
    sts.spec.as_mut().expect("spec").replicas = Some(0);
    sts.metadata.annotations = Some(
        [(
            crate::k8s::scale::ANNOTATION_ORIGINAL_REPLICAS.to_string(),
            "2".to_string(),
        )]
        .into(),
    );
    assert_eq!(hosts(&target, &sts).map(|h| h.len()), Some(2));
    target.pod = Some("pg-1".into());
    assert_eq!(hosts(&target, &sts), Some(vec!["pg-1.pg-headless".into()]));
    target.host = Some("pg-rw.shop.svc".into());
    assert_eq!(hosts(&target, &sts), Some(vec!["pg-rw.shop.svc".into()]));

    let mut no_service = stateful_set("postgres:16");
    no_service.spec.as_mut().expect("spec").service_name = None;
    let target = backup_spec("logical").target;
    assert_eq!(database_hosts(&target, &no_service), None);
}

#[test]
fn archiving_follows_the_primary_and_a_backup_the_role_preferred() {
    let mut target = backup_spec("logical").target;
    let role = |target: &DatabaseTarget, work| {
        let (env, _) = database_env(target, "pg-0.pg-headless,pg-1.pg-headless", work);
        value(&env, "PGBACKUP_SERVER_ROLE").map(str::to_string)
    };
    assert_eq!(
        role(&target, DatabaseWork::Backup).as_deref(),
        Some("primary")
    );
    target.prefer = crate::api::ServerPreference::Standby;
    assert_eq!(
        role(&target, DatabaseWork::Backup).as_deref(),
        Some("prefer-standby")
    );
    assert_eq!(
        role(&target, DatabaseWork::Archiving).as_deref(),
        Some("primary")
    );
}

#[test]
fn database_credentials_reach_the_pod_only_by_secret_reference() {
    let target = backup_spec("logical").target;
    let (env, volumes) = database_env(&target, "pg-0.pg-headless", DatabaseWork::Backup);
    assert!(volumes.is_empty());
    assert_eq!(value(&env, "PGHOST"), Some("pg-0.pg-headless"));
    assert_eq!(value(&env, "PGPORT"), Some("5432"));
    assert_eq!(value(&env, "PGSSLMODE"), Some("prefer"));
    assert_eq!(
        secret_ref(&env, "PGUSER"),
        Some(("pg-auth".into(), "username".into()))
    );
    assert_eq!(
        secret_ref(&env, "PGPASSWORD"),
        Some(("pg-auth".into(), "password".into()))
    );
    assert!(
        env.iter()
            .filter(|e| e.name.contains("PASSWORD"))
            .all(|e| e.value.is_none())
    );
}

#[test]
fn an_s3_repository_is_wired_through_environment_and_secret_references() {
    let mut repository = backup_spec("logical").repository;
    repository.s3.as_mut().expect("s3").storage_class = Some("STANDARD_IA".into());
    let wiring = repository_wiring(&repository, "shop-pg");
    let env = &wiring.env;
    assert_eq!(value(env, "PGBACKUP_REPOSITORY"), Some("s3://backups/prod"));
    assert_eq!(value(env, "PGBACKUP_SERVER"), Some("shop-pg"));
    assert_eq!(value(env, "AWS_ENDPOINT_URL"), Some("http://minio:9000"));
    assert_eq!(value(env, "AWS_REGION"), Some("eu-west-1"));
    assert_eq!(value(env, "PGBACKUP_S3_FORCE_PATH_STYLE"), Some("true"));
    assert_eq!(
        secret_ref(env, "AWS_SECRET_ACCESS_KEY"),
        Some(("s3-keys".into(), "AWS_SECRET_ACCESS_KEY".into()))
    );
    assert_eq!(wiring.args, ["--s3-storage-class", "STANDARD_IA"]);
    assert!(wiring.volume.is_none());
    assert_eq!(value(env, "AWS_EC2_METADATA_DISABLED"), None);

    // Without keys of its own, a pod may use its ServiceAccount's role, not the node's.
    let s3 = repository.s3.as_mut().expect("s3");
    s3.credentials_secret = None;
    let wiring = repository_wiring(&repository, "shop-pg");
    assert_eq!(
        value(&wiring.env, "AWS_EC2_METADATA_DISABLED"),
        Some("true")
    );
    repository.s3.as_mut().expect("s3").node_credentials = true;
    let wiring = repository_wiring(&repository, "shop-pg");
    assert_eq!(value(&wiring.env, "AWS_EC2_METADATA_DISABLED"), None);
}

#[test]
fn a_volume_repository_is_mounted() {
    let repository: crate::api::Repository = serde_json::from_value(serde_json::json!({
        "volume": {"claimName": "backups", "path": "/pg/"}
    }))
    .expect("repository");
    let wiring = repository_wiring(&repository, "shop-pg");
    assert_eq!(
        value(&wiring.env, "PGBACKUP_REPOSITORY"),
        Some("file:///repository/pg")
    );
    let volume = wiring.volume.expect("volume");
    assert_eq!(
        volume.persistent_volume_claim.expect("pvc").claim_name,
        "backups"
    );
    assert_eq!(wiring.mount.expect("mount").mount_path, "/repository");
}

#[test]
fn agent_pods_are_locked_down() {
    let spec = agent_pod_spec(
        &AgentSettings::default(),
        AgentContainer {
            name: "backup".into(),
            image: AgentSettings::default().image_for(17),
            args: vec!["backup".into()],
            ..AgentContainer::default()
        },
        "Never",
        None,
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    let pod_security = spec.security_context.expect("pod security");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    // A volume repository is re-owned only when its root is not the group's already.
    assert_eq!(
        pod_security.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    assert_eq!(
        pod_security.seccomp_profile.expect("seccomp").type_,
        "RuntimeDefault"
    );
    let container = &spec.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:17-", env!("CARGO_PKG_VERSION")))
    );
    let security = container
        .security_context
        .as_ref()
        .expect("container security");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let env = container.env.as_deref().expect("env");
    assert_eq!(
        value(env, "PGBACKUP_RESULT_FILE"),
        Some("/dev/termination-log")
    );
    assert!(
        container
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .any(|m| m.mount_path == "/tmp"),
        "a writable /tmp under a read-only root"
    );
}

#[test]
fn a_ca_certificate_is_mounted_from_its_secret() {
    let mut target = backup_spec("logical").target;
    target.ssl_mode = crate::api::SslMode::VerifyFull;
    target.ssl_root_cert = Some(crate::api::SecretKeyRef {
        name: "pg-tls".into(),
        key: "root.pem".into(),
    });
    let (env, volumes) = database_env(&target, "pg-0.pg-headless", DatabaseWork::Backup);
    assert_eq!(value(&env, "PGSSLMODE"), Some("verify-full"));
    let (volume, mount) = &volumes[0];
    assert_eq!(
        value(&env, "PGSSLROOTCERT"),
        Some(format!("{}/ca.crt", mount.mount_path).as_str())
    );
    let secret = volume.secret.as_ref().expect("secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("pg-tls"));
    assert_eq!(secret.items.as_ref().expect("items")[0].key, "root.pem");
}
