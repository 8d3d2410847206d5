//! Fixtures for the tests of the pure reconcile code: the objects a user would write.

use k8s_openapi::api::apps::v1::StatefulSet;

use crate::{
    api::{BackupSchedule, BackupScheduleSpec, PostgresBackup, PostgresBackupSpec},
    controllers::references::References,
};

/// A StatefulSet `pg` in `shop` running `image`, with the headless service `pg-headless`.
pub fn stateful_set(image: &str) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "pg", "namespace": "shop"},
        "spec": {
            "serviceName": "pg-headless",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "pg"}},
            "template": {
                "metadata": {"labels": {"app": "pg"}},
                "spec": {"containers": [
                    {"name": "metrics", "image": "exporter:0.15"},
                    {"name": "postgresql", "image": image}
                ]}
            }
        }
    }))
    .expect("StatefulSet fixture")
}

/// The spec of a backup of `pg` in `shop` into an S3 bucket, as YAML would give it.
pub fn backup_spec(method: &str) -> PostgresBackupSpec {
    serde_json::from_value(serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "repository": {"s3": {
            "bucket": "backups", "prefix": "prod/", "endpoint": "http://minio:9000",
            "region": "eu-west-1", "forcePathStyle": true,
            "credentialsSecret": {"name": "s3-keys"}
        }},
        "method": method,
    }))
    .expect("backup spec fixture")
}

/// A PostgresBackup `nightly-1` in `shop`.
pub fn backup(method: &str) -> PostgresBackup {
    let mut backup = PostgresBackup::new("nightly-1", backup_spec(method));
    backup.metadata.namespace = Some("shop".into());
    backup.metadata.uid = Some("uid-backup-1".into());
    backup.metadata.generation = Some(1);
    backup
}

/// A BackupSchedule `nightly` in `shop`: physical backups at 02:30 with WAL archiving.
pub fn schedule() -> BackupSchedule {
    let spec: BackupScheduleSpec = serde_json::from_value(serde_json::json!({
        "schedule": "30 2 * * *",
        "method": "physical",
        "template": {
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "repository": {"s3": {"bucket": "backups", "credentialsSecret": {"name": "s3-keys"}}},
        },
        "walArchiving": {"enabled": true},
        "retention": {"keepLast": 2},
    }))
    .expect("schedule fixture");
    let mut schedule = BackupSchedule::new("nightly", spec);
    schedule.metadata.namespace = Some("shop".into());
    schedule.metadata.uid = Some("uid-schedule".into());
    schedule.metadata.generation = Some(3);
    schedule
}

/// Everything the fixtures refer to, present: the StatefulSet running `image`, the
/// database credentials and the S3 keys.
pub fn references(image: &str) -> References {
    References {
        stateful_set: Some(stateful_set(image)),
        secrets: [
            ("pg-auth", vec!["username", "password"]),
            (
                "s3-keys",
                vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            ),
        ]
        .into_iter()
        .map(|(name, keys)| {
            (
                name.to_string(),
                Some(keys.into_iter().map(String::from).collect()),
            )
        })
        .collect(),
        services: Default::default(),
        service_account: None,
    }
}

/// Gives `stateful_set` the claim retention policy that deletes claims of removed pods.
pub fn delete_claims_when_scaled(stateful_set: &mut StatefulSet) {
    let spec = stateful_set.spec.as_mut().expect("spec");
    spec.persistent_volume_claim_retention_policy =
        Some(serde_json::from_value(serde_json::json!({"whenScaled": "Delete"})).expect("policy"));
}
