//! The BackupSchedule reconciler and `pgbackup trigger` against an in-memory Kubernetes
//! API, for what has not moved to the control-plane tests yet: deletion keeps the
//! schedule's backups, the trigger creates the next backup object under the concurrency
//! policy, and the archiver's slot is dropped before an archiver starts on another server.

mod support;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use pgbackup::{
    agent::trigger,
    api::{BackupPhase, BackupSchedule, PostgresBackup, PostgresBackupStatus, find_condition},
    controllers::{Context, Metrics, Settings, backup_schedule},
};
use support::cluster::{
    NAMESPACE, begin_deletion_of, deployment_container, env_value, fake_api, finish_job,
    job_container, secret, stateful_set,
};

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

/// Archiving ended: a Job drops the slot, and only then does the schedule let go of it.
async fn assert_slot_dropped(client: &Client, name: &str) {
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let held = |s: &BackupSchedule| s.finalizers().iter().any(|f| f == "pgbackup.io/wal-slot");
    assert!(
        held(&schedules.get(name).await.expect("schedule")),
        "held until the slot is dropped"
    );
    let job_name = format!("{name}-drop-slot");
    let job = Api::<Job>::namespaced(client.clone(), NAMESPACE)
        .get(&job_name)
        .await
        .expect("drop-slot Job");
    let container = job_container(&job);
    assert_eq!(
        container.args.as_deref().expect("args"),
        ["wal-archive", "--drop-slot"]
    );
    assert_eq!(
        env_value(&container, "PGBACKUP_SLOT").as_deref(),
        Some("pgbackup_nightly")
    );
    finish_job(
        client,
        &job_name,
        true,
        "dropped replication slot pgbackup_nightly",
    )
    .await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    backup_schedule::reconcile(Arc::new(schedules.get(name).await.expect("schedule")), ctx)
        .await
        .expect("reconcile");
    let after = schedules.get_opt(name).await.expect("get");
    assert!(
        after.is_none_or(|s| !held(&s)),
        "the slot is dropped: the schedule is let go"
    );
}

#[tokio::test]
async fn deleting_a_schedule_drops_its_slot_and_keeps_its_backups() {
    let completed = serde_json::to_value(completed("nightly-a", 17)).expect("json");
    let client = fake_api(with_nightly(vec![completed])).await;
    reconcile(&client, "nightly").await;
    assert!(exists::<Deployment>(&client, "nightly-wal-archiver").await);
    let client = begin_deletion_of(&client, "BackupSchedule", "nightly").await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    backup_schedule::reconcile(
        Arc::new(schedules.get("nightly").await.expect("schedule")),
        ctx,
    )
    .await
    .expect("reconcile");
    assert!(
        !exists::<Deployment>(&client, "nightly-wal-archiver").await,
        "the archiver stops first"
    );
    assert_slot_dropped(&client, "nightly").await;
    assert!(schedules.get_opt("nightly").await.expect("get").is_none());
    assert!(
        exists::<PostgresBackup>(&client, "nightly-a").await,
        "backups outlive their schedule"
    );
}

fn completed(name: &str, day: u32) -> PostgresBackup {
    let mut backup: PostgresBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"pgbackup.io/schedule": "nightly"}},
        "spec": {
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "repository": {"s3": {"bucket": "backups"}},
            "method": "physical",
        }
    }))
    .expect("backup");
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        format!("2026-11-{day:02}T02:31:00Z").parse().expect("time"),
    );
    backup.status = Some(PostgresBackupStatus {
        phase: Some(BackupPhase::Completed),
        completed_at: Some(time),
        ..PostgresBackupStatus::default()
    });
    backup
}

#[tokio::test]
async fn trigger_creates_the_next_backup_object_under_the_concurrency_policy() {
    let client = fake_api(with_nightly(Vec::new())).await;
    let at = |t: &str| t.parse::<Timestamp>().expect("time");

    let said = trigger::trigger(
        client.clone(),
        NAMESPACE,
        "nightly",
        at("2026-11-21T02:30:00Z"),
    )
    .await
    .expect("trigger");
    assert_eq!(said, "created PostgresBackup nightly-20261121023000");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let created = backups
        .get("nightly-20261121023000")
        .await
        .expect("created");
    assert_eq!(created.labels()["pgbackup.io/schedule"], "nightly");
    assert_eq!(created.spec.method, pgbackup::api::BackupMethod::Physical);
    assert_eq!(created.spec.target.stateful_set, "pg");

    // Forbid (the default): the first is still running, the next run is skipped.
    let said = trigger::trigger(
        client.clone(),
        NAMESPACE,
        "nightly",
        at("2026-11-22T02:30:00Z"),
    )
    .await
    .expect("trigger");
    assert!(said.starts_with("skipped"), "{said}");
    assert_eq!(
        backups
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    // Replace: the running one is stopped, the new one created.
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    schedules
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"concurrencyPolicy": "Replace"}})),
        )
        .await
        .expect("patch");
    trigger::trigger(
        client.clone(),
        NAMESPACE,
        "nightly",
        at("2026-11-23T02:30:00Z"),
    )
    .await
    .expect("trigger");
    let names: Vec<String> = backups
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|b| b.name_any())
        .collect();
    assert_eq!(names, ["nightly-20261123023000"]);

    // A schedule that does not exist is an error that says so.
    let err = trigger::trigger(
        client.clone(),
        NAMESPACE,
        "weekly",
        at("2026-11-23T02:30:00Z"),
    )
    .await
    .expect_err("no schedule");
    assert!(
        err.to_string()
            .contains("BackupSchedule shop/weekly does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn moving_the_archiver_to_another_server_drops_the_old_slot_first() {
    let client = fake_api(with_nightly(Vec::new())).await;
    reconcile(&client, "nightly").await;
    assert!(exists::<Deployment>(&client, "nightly-wal-archiver").await);

    // The database now listens elsewhere: the slot on the old address must go before an
    // archiver starts on the new one.
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = serde_json::json!({"spec": {"template": {
        "target": {"statefulSet": "pg", "port": 5433, "credentialsSecret": {"name": "pg-auth"}}}}});
    api.patch("nightly", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let reconciled = reconcile(&client, "nightly").await;
    assert!(
        !exists::<Deployment>(&client, "nightly-wal-archiver").await,
        "no archiver while the old slot ends"
    );
    let wal = find_condition(
        &reconciled.status.expect("status").conditions,
        "WALArchiving",
    )
    .expect("condition")
    .clone();
    assert_eq!(wal.reason, "EndingArchiving");
    let job = Api::<Job>::namespaced(client.clone(), NAMESPACE)
        .get("nightly-drop-slot")
        .await
        .expect("drop-slot Job");
    assert_eq!(
        env_value(&job_container(&job), "PGPORT").as_deref(),
        Some("5432"),
        "the slot is dropped where it was made"
    );
    assert_slot_dropped(&client, "nightly").await;

    // Then archiving starts afresh on the new address.
    reconcile(&client, "nightly").await;
    let archiver = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("nightly-wal-archiver")
        .await
        .expect("archiver");
    assert_eq!(
        env_value(&deployment_container(&archiver), "PGPORT").as_deref(),
        Some("5433")
    );
    let record: serde_json::Value = serde_json::from_str(
        &api.get("nightly").await.expect("schedule").annotations()["pgbackup.io/wal-slot"],
    )
    .expect("slot record");
    assert_eq!(
        record["port"], 5433,
        "the slot is now held on the new server"
    );
    assert!(!exists::<Job>(&client, "nightly-drop-slot").await);
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
