//! A BackupSchedule's life on the node: the trigger CronJob (owned, so collected with it)
//! and the WAL archiver streaming from its slot; suspended with archiving off, the
//! CronJob stops firing, the archiver goes and the slot is dropped on the server before
//! the schedule lets go of it; turned on again while that drop is still running, no
//! archiver starts until it finished; moved to another server, the old slot goes before
//! a new one is made; bad input ends in a condition with nothing created.

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::Pod,
    rbac::v1::Role,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use pgbackup::api::{BackupSchedule, SchedulePhase};

use crate::cluster::{
    apply_all, connect, database, gone, logs, orders_database, ready_pod_ip, wait_for,
};
use crate::schedules::{archiver_streaming, archiving_schedule};
use crate::support::{
    controlplane::{ControlPlane, operator::Operator, test_namespace},
    s3::S3Server,
};

/// The slots on the server.
async fn slots(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await
        .expect("slots");
    rows.iter().map(|r| r.get(0)).collect()
}

/// Waits until schedule `name`'s Ready condition has `reason`; the schedule.
async fn ready_because(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
    context: impl Fn() -> String,
) -> BackupSchedule {
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    wait_for(
        120,
        &format!("{name} Ready because {reason}"),
        context,
        || async {
            let schedule = schedules.get(name).await.ok()?;
            let status = schedule.status.as_ref()?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason).then_some(schedule)
        },
    )
    .await
}

#[tokio::test]
async fn a_suspended_schedule_without_archiving_stops_firing_and_drops_its_slot() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "suspend").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    apply_all(&client, &archiving_schedule(&namespace, &s3)).await;
    archiver_streaming(&client, &namespace, context).await;

    let active = ready_because(&client, &namespace, "nightly", "Active", context).await;
    let status = active.status.expect("status");
    assert_eq!(status.phase, Some(SchedulePhase::Active));
    let slot = status
        .wal_archiving
        .and_then(|w| w.slot_name)
        .expect("the slot in status");
    assert_eq!(slots(&db).await, [slot]);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &namespace);
    let trigger = status.cron_job_name.expect("the CronJob in status");
    let cron_job = cron_jobs.get(&trigger).await.expect("the trigger CronJob");
    assert_eq!(cron_job.owner_references()[0].name, "nightly");
    assert_eq!(cron_job.spec.and_then(|s| s.suspend), Some(false));

    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({"spec": {"suspend": true, "walArchiving": {"enabled": false}}});
    schedules
        .patch("nightly", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("suspend");
    ready_because(&client, &namespace, "nightly", "Suspended", context).await;
    wait_for(
        120,
        "the slot to be dropped and let go",
        context,
        || async {
            let schedule = schedules.get("nightly").await.ok()?;
            let held = schedule
                .finalizers()
                .iter()
                .any(|f| f == "pgbackup.io/wal-slot");
            (!held && slots(&db).await.is_empty()).then_some(())
        },
    )
    .await;
    let cron_job = cron_jobs.get(&trigger).await.expect("the trigger CronJob");
    assert_eq!(cron_job.spec.and_then(|s| s.suspend), Some(true));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    assert!(
        deployments
            .get_opt("nightly-wal-archiver")
            .await
            .expect("read")
            .is_none(),
        "the archiver is gone"
    );
    let status = schedules.get("nightly").await.expect("schedule").status;
    assert_eq!(status.and_then(|s| s.phase), Some(SchedulePhase::Suspended));
}

#[tokio::test]
async fn bad_schedules_end_in_a_condition_and_create_nothing() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "schedule-input").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    apply_all(&client, &database(&namespace)).await;
    let schedule = |name: &str, changes: serde_json::Value| {
        let mut doc = serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedule": "30 2 * * *", "method": "physical",
                     "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                                  "repository": {"volume": {"claimName": "backups"}}}},
        });
        crate::cluster::merge(&mut doc["spec"], changes);
        doc
    };
    let target = |set: &str, secret: &str| serde_json::json!({"template": {"target": {"statefulSet": set, "credentialsSecret": {"name": secret}}}});
    let cases = [
        (
            schedule("bad-cron", serde_json::json!({"schedule": "30 25 * * *"})),
            "InvalidSchedule",
        ),
        (
            schedule("no-secret", target("pg", "missing")),
            "SecretNotFound",
        ),
        (
            schedule("no-sts", target("gone", "pg-auth")),
            "StatefulSetNotFound",
        ),
        // Another application's Role has the name the trigger's would get: never taken over.
        (schedule("taken", serde_json::json!({})), "NameTaken"),
    ];
    let foreign = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "taken-trigger", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    });
    apply_all(&client, &serde_json::json!([foreign])).await;
    for (doc, _) in &cases {
        apply_all(&client, &serde_json::json!([doc])).await;
    }
    for (doc, reason) in &cases {
        let name = doc["metadata"]["name"].as_str().expect("name");
        let refused = ready_because(&client, &namespace, name, reason, context).await;
        assert_eq!(
            refused.status.and_then(|s| s.phase),
            Some(SchedulePhase::Failed),
            "{name}"
        );
    }
    let role = Api::<Role>::namespaced(client.clone(), &namespace)
        .get("taken-trigger")
        .await
        .expect("the other application's Role");
    assert_eq!(
        serde_json::to_value(&role.rules).expect("rules"),
        foreign["rules"],
        "its rules are untouched"
    );
    assert!(
        role.metadata.owner_references.is_none(),
        "and it has no owner"
    );
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    assert!(
        cron_jobs
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        deployments
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn moving_archiving_to_another_server_drops_the_old_slot_first() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "move").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let old = orders_database(&client, &namespace, context).await;
    apply_all(&client, &archiving_schedule(&namespace, &s3)).await;
    archiver_streaming(&client, &namespace, context).await;
    assert_eq!(slots(&old).await.len(), 1);

    // The database moves to a new StatefulSet; the schedule follows it.
    let mut next = database(&namespace)[2].clone();
    next["metadata"]["name"] = "next".into();
    next["spec"]["selector"]["matchLabels"]["app"] = "next".into();
    next["spec"]["template"]["metadata"]["labels"]["app"] = "next".into();
    apply_all(&client, &serde_json::json!([next])).await;
    let ip = ready_pod_ip(&client, &namespace, "next-0", context).await;
    let new = connect(&ip).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({"spec": {"template": {"target": {"statefulSet": "next"}}}});
    schedules
        .patch("nightly", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("move");

    // Never a slot on both: the old one holds WAL on a server nothing archives any more.
    wait_for(180, "archiving to move", context, || async {
        let (on_old, on_new) = (slots(&old).await.len(), slots(&new).await.len());
        assert!(on_old == 0 || on_new == 0, "a slot on both servers");
        (on_old == 0 && on_new == 1).then_some(())
    })
    .await;
    archiver_streaming(&client, &namespace, context).await;
    let schedule = schedules.get("nightly").await.expect("schedule");
    let record: serde_json::Value =
        serde_json::from_str(&schedule.annotations()["pgbackup.io/wal-slot"]).expect("record");
    assert_eq!(
        record["statefulSet"], "next",
        "the slot is held on the new server"
    );
}

#[tokio::test]
async fn archiving_turned_on_again_waits_until_the_old_slot_is_dropped() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "again").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    orders_database(&client, &namespace, context).await;
    apply_all(&client, &archiving_schedule(&namespace, &s3)).await;
    archiver_streaming(&client, &namespace, context).await;

    // The database is down, so the Job that drops the slot keeps failing and retrying.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let scale = |replicas: i32| serde_json::json!({"spec": {"replicas": replicas}});
    sets.patch("pg", &PatchParams::default(), &Patch::Merge(&scale(0)))
        .await
        .expect("stop the database");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    gone(&pods, "pg-0", 120, context).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    let archiving =
        |enabled: bool| serde_json::json!({"spec": {"walArchiving": {"enabled": enabled}}});
    schedules
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(&archiving(false)),
        )
        .await
        .expect("archiving off");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    wait_for(120, "the slot's drop Job", context, || async {
        jobs.get_opt("nightly-drop-slot").await.ok()?.map(|_| ())
    })
    .await;

    // Turned on again before the drop finished: no archiver starts beside it.
    schedules
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(&archiving(true)),
        )
        .await
        .expect("archiving on");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    for _ in 0..15 {
        let archiver = deployments
            .get_opt("nightly-wal-archiver")
            .await
            .expect("read");
        assert!(
            archiver.is_none(),
            "an archiver beside a drop\n{}",
            context()
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert!(
        jobs.get_opt("nightly-drop-slot")
            .await
            .expect("read")
            .is_some(),
        "the drop still runs"
    );

    // The database back: the old slot goes, then archiving resumes with a new one.
    sets.patch("pg", &PatchParams::default(), &Patch::Merge(&scale(1)))
        .await
        .expect("start the database");
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    archiver_streaming(&client, &namespace, context).await;
    let db = connect(&ip).await;
    assert_eq!(slots(&db).await, ["pgbackup_nightly"]);
    let schedule = schedules.get("nightly").await.expect("schedule");
    let record: serde_json::Value =
        serde_json::from_str(&schedule.annotations()["pgbackup.io/wal-slot"]).expect("record");
    assert_eq!(record["slot"], "pgbackup_nightly", "the slot is held again");
}
