//! The BackupSchedule reconciler against an in-memory Kubernetes API, for the one case
//! not on the control plane yet: archiving turned off and on again starts no archiver
//! while the old slot's drop Job runs (on the node that Job is too quick to catch).

mod support;

use std::sync::Arc;

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use pgbackup::{
    api::BackupSchedule,
    controllers::{Context, Metrics, Settings, backup_schedule},
};
use support::cluster::{NAMESPACE, fake_api, finish_job, secret, stateful_set};

fn schedule(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "schedule": "30 2 * * *",
        "method": "physical",
        "template": {
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "repository": {"s3": {"bucket": "backups", "endpoint": "http://minio:9000", "forcePathStyle": true,
                                  "credentialsSecret": {"name": "s3-keys"}}},
        },
        "walArchiving": {"enabled": true},
        "retention": {"keepLast": 2},
    });
    for (key, value) in extra.as_object().expect("object") {
        spec[key] = value.clone();
    }
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": name, "namespace": NAMESPACE, "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": spec,
    })
}

/// [`basics`], the schedule `nightly` with its defaults, and `extra` objects.
fn with_nightly(extra: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut objects = basics();
    objects.push(schedule("nightly", serde_json::json!({})));
    objects.extend(extra);
    objects
}

fn basics() -> Vec<serde_json::Value> {
    vec![
        stateful_set("postgres:17.2"),
        secret("pg-auth", &[("username", "backup"), ("password", "secret")]),
        secret(
            "s3-keys",
            &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")],
        ),
    ]
}

async fn reconcile(client: &Client, name: &str) -> BackupSchedule {
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings {
            trigger_image: "pgbackup/operator:test".into(),
            ..Settings::default()
        },
        Metrics::new(),
    ));
    backup_schedule::reconcile(Arc::new(api.get(name).await.expect("schedule")), ctx)
        .await
        .expect("reconcile");
    api.get(name).await.expect("schedule")
}

async fn exists<K>(client: &Client, name: &str) -> bool
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .expect("get")
        .is_some()
}

#[tokio::test]
async fn no_archiver_starts_while_an_old_slot_is_being_dropped() {
    let client = fake_api(with_nightly(Vec::new())).await;
    reconcile(&client, "nightly").await;
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let set = |enabled: bool| serde_json::json!({"spec": {"walArchiving": {"enabled": enabled}}});
    api.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(&set(false)),
    )
    .await
    .expect("off");
    reconcile(&client, "nightly").await;
    assert!(
        exists::<Job>(&client, "nightly-drop-slot").await,
        "the slot is being dropped"
    );

    // Turned on again before the drop finished: the new archiver waits for it.
    api.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(&set(true)),
    )
    .await
    .expect("on");
    reconcile(&client, "nightly").await;
    assert!(
        !exists::<Deployment>(&client, "nightly-wal-archiver").await,
        "no archiver beside a drop"
    );
    finish_job(&client, "nightly-drop-slot", true, "dropped").await;
    reconcile(&client, "nightly").await;
    assert!(!exists::<Job>(&client, "nightly-drop-slot").await);
    let held = api.get("nightly").await.expect("schedule");
    let record: serde_json::Value =
        serde_json::from_str(&held.annotations()["pgbackup.io/wal-slot"]).expect("slot record");
    assert_eq!(record["slot"], "pgbackup_nightly");
    assert!(
        exists::<Deployment>(&client, "nightly-wal-archiver").await,
        "archiving resumes"
    );
}
