//! The BackupSchedule reconciler and `pgbackup trigger` against an in-memory Kubernetes
//! API: the schedule's CronJob, trigger RBAC and WAL archiver appear, suspend reaches the
//! CronJob, retention deletes the right backup objects (marked so their data goes too),
//! bad input ends in a condition with nothing created, and the trigger creates the next
//! backup object under the concurrency policy.

mod support;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use pgbackup::{
    agent::trigger,
    api::{
        BackupPhase, BackupSchedule, CONDITION_READY, PostgresBackup, PostgresBackupStatus,
        SchedulePhase, find_condition,
    },
    controllers::{Context, Metrics, Settings, backup_schedule},
    k8s::ANNOTATION_DELETE_DATA,
};
use support::cluster::{
    NAMESPACE, begin_deletion_of, deployment_container, env_value, fake_api, fake_api_with_journal,
    finish_job, job_container, secret, stateful_set,
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

fn ready_reason(schedule: &BackupSchedule) -> (String, String) {
    let c = find_condition(
        &schedule.status.as_ref().expect("status").conditions,
        CONDITION_READY,
    )
    .expect("Ready");
    (c.status.clone(), c.reason.clone())
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
async fn a_schedule_gets_its_cron_job_rbac_and_archiver_and_suspend_propagates() {
    let client = fake_api(with_nightly(Vec::new())).await;
    let reconciled = reconcile(&client, "nightly").await;

    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), NAMESPACE);
    let cron = cron_jobs.get("nightly-trigger").await.expect("CronJob");
    let spec = cron.spec.as_ref().expect("spec");
    assert_eq!(spec.schedule, "30 2 * * *");
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(cron.owner_references()[0].name, "nightly");
    assert!(exists::<ServiceAccount>(&client, "nightly-trigger").await);
    assert!(exists::<Role>(&client, "nightly-trigger").await);
    assert!(exists::<RoleBinding>(&client, "nightly-trigger").await);
    let archiver = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("nightly-wal-archiver")
        .await
        .expect("archiver");
    let container = deployment_container(&archiver);
    assert_eq!(
        container.image.as_deref(),
        Some(concat!("pgbackup/agent:17-", env!("CARGO_PKG_VERSION")))
    );

    let status = reconciled.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(SchedulePhase::Active));
    assert_eq!(status.cron_job_name.as_deref(), Some("nightly-trigger"));
    assert_eq!(
        status
            .wal_archiving
            .as_ref()
            .and_then(|w| w.slot_name.as_deref()),
        Some("pgbackup_nightly")
    );
    assert_eq!(ready_reason(&reconciled), ("True".into(), "Active".into()));

    // suspend: true and archiving off: the CronJob is suspended, the archiver removed.
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = serde_json::json!({"spec": {"suspend": true, "walArchiving": {"enabled": false}}});
    api.patch("nightly", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    let reconciled = reconcile(&client, "nightly").await;
    assert_eq!(
        cron_jobs
            .get("nightly-trigger")
            .await
            .expect("CronJob")
            .spec
            .expect("spec")
            .suspend,
        Some(true)
    );
    assert!(!exists::<Deployment>(&client, "nightly-wal-archiver").await);
    assert_eq!(
        reconciled.status.as_ref().and_then(|s| s.phase),
        Some(SchedulePhase::Suspended)
    );
    assert_slot_dropped(&client, "nightly").await;
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

#[tokio::test]
async fn bad_input_ends_in_a_condition_and_creates_nothing() {
    let mut objects = basics();
    objects.push(schedule(
        "bad-cron",
        serde_json::json!({"schedule": "30 25 * * *"}),
    ));
    objects.push(schedule(
        "no-secret",
        serde_json::json!({"template": {
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "missing"}},
        "repository": {"s3": {"bucket": "backups"}}}}),
    ));
    objects.push(schedule(
        "no-sts",
        serde_json::json!({"template": {
        "target": {"statefulSet": "gone", "credentialsSecret": {"name": "pg-auth"}},
        "repository": {"s3": {"bucket": "backups"}}}}),
    ));
    objects.push(schedule(
        "mismatch",
        serde_json::json!({"method": "logical", "template": {
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "repository": {"s3": {"bucket": "backups"}}, "physical": {"checkpoint": "fast"}}}),
    ));
    let mut second = schedule(
        "second",
        serde_json::json!({"walArchiving": {"enabled": true, "slotName": "shared"}}),
    );
    second["metadata"]["creationTimestamp"] = "2026-11-02T00:00:00Z".into();
    objects.push(second);
    objects.push(schedule(
        "first",
        serde_json::json!({"walArchiving": {"enabled": true, "slotName": "shared"}}),
    ));
    let client = fake_api(objects).await;

    for (name, reason) in [
        ("bad-cron", "InvalidSchedule"),
        ("no-secret", "SecretNotFound"),
        ("no-sts", "StatefulSetNotFound"),
        ("mismatch", "InvalidSpec"),
        ("second", "SlotConflict"),
    ] {
        let reconciled = reconcile(&client, name).await;
        assert_eq!(
            ready_reason(&reconciled),
            ("False".into(), reason.into()),
            "{name}"
        );
        assert_eq!(
            reconciled.status.as_ref().and_then(|s| s.phase),
            Some(SchedulePhase::Failed),
            "{name}"
        );
        assert!(
            !exists::<CronJob>(&client, &format!("{name}-trigger")).await,
            "{name}: no CronJob"
        );
        assert!(
            !exists::<Deployment>(&client, &format!("{name}-wal-archiver")).await,
            "{name}: no archiver"
        );
    }
    let second = reconcile(&client, "second").await;
    assert!(
        second
            .status
            .expect("status")
            .message
            .expect("message")
            .contains("BackupSchedule first")
    );
    assert_eq!(
        ready_reason(&reconcile(&client, "first").await).0,
        "True",
        "the first claim stands"
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
async fn retention_deletes_the_oldest_backup_objects_and_marks_their_data_for_deletion() {
    let mut objects = with_nightly(Vec::new());
    for (name, day) in [
        ("nightly-a", 17),
        ("nightly-b", 18),
        ("nightly-c", 19),
        ("nightly-d", 20),
    ] {
        objects.push(serde_json::to_value(completed(name, day)).expect("json"));
    }
    let mut manual = serde_json::to_value(completed("manual", 1)).expect("json");
    manual["metadata"]["labels"] = serde_json::json!({});
    objects.push(manual);
    let mut going = serde_json::to_value(completed("nightly-old", 2)).expect("json");
    going["metadata"]["finalizers"] = serde_json::json!(["pgbackup.io/backup-data"]);
    going["metadata"]["deletionTimestamp"] = "2026-11-21T00:00:00Z".into();
    objects.push(going);
    let (client, journal) = fake_api_with_journal(objects).await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let reconciled = reconcile(&client, "nightly").await;

    let mut left: Vec<String> = backups
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|b| b.name_any())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["manual", "nightly-c", "nightly-d", "nightly-old"],
        "keepLast: 2 of the schedule's own; a manual backup and one already going are untouched"
    );
    // Each dropped object is marked (its data goes whatever its deletionPolicy) before it
    // is deleted.
    let journal = journal.lock().expect("journal").clone();
    for name in ["nightly-a", "nightly-b"] {
        let mark = journal.iter().position(|e| {
            e.starts_with(&format!("patch {name} ")) && e.contains(ANNOTATION_DELETE_DATA)
        });
        let delete = journal.iter().position(|e| *e == format!("delete {name}"));
        assert!(
            matches!((mark, delete), (Some(m), Some(d)) if m < d),
            "{name}: {journal:?}"
        );
    }
    let status = reconciled.status.expect("status");
    assert_eq!(
        status.last_successful_backup.expect("last").name,
        "nightly-d"
    );
    assert_eq!(
        status
            .recovery_window
            .expect("window")
            .first_recoverability_point
            .map(|t| t.0),
        Some("2026-11-19T02:31:00Z".parse::<Timestamp>().expect("time")),
        "the window starts at the oldest kept backup"
    );
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
