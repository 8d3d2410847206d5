//! BackupSchedules on the node: the CronJob's trigger creating backups, retention deleting
//! them with their data, the WAL archiver Deployment streaming into S3, the window it opens,
//! and a point-in-time restore in place to a moment inside it.

use std::time::Duration;

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pgbackup::api::{BackupPhase, BackupSchedule, PostgresBackup};

use crate::cluster::{
    apply_all, claim_dir, connect, count, finished_restore, logs, orders_database, ready_pod_ip,
    restore, wait_for,
};
use crate::support::{
    controlplane::{
        ControlPlane,
        apply::{self, Mode},
        operator::Operator,
        test_namespace,
    },
    s3::S3Server,
};

/// A physical schedule `nightly` of `pg` into `s3`, archiving WAL, with a Secret for its keys.
pub(crate) fn archiving_schedule(namespace: &str, s3: &S3Server) -> serde_json::Value {
    serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys", "namespace": namespace},
         "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key(), "AWS_SECRET_ACCESS_KEY": s3.secret_key()}},
        {"apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
         "metadata": {"name": "nightly", "namespace": namespace},
         "spec": {"schedule": "0 3 * * *", "method": "physical",
                  "walArchiving": {"enabled": true, "partialUploadSeconds": 2,
                                   "windowCheckSeconds": 5},
                  "template": {
                      "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                      "repository": {"s3": {"bucket": s3.bucket(), "endpoint": s3.endpoint(),
                                            "region": "us-east-1", "forcePathStyle": true,
                                            "credentialsSecret": {"name": "s3-keys"}}}}}},
    ])
}

/// Runs the schedule's CronJob now, as `kubectl create job --from=cronjob/…` does.
pub(crate) async fn trigger_now(
    client: &kube::Client,
    namespace: &str,
    job: &str,
    context: impl Fn() -> String,
) {
    run_now(client, namespace, "-trigger", job, context).await;
}

/// Runs the CronJob whose name ends with `suffix` now, as a Job named `job`.
pub(crate) async fn run_now(
    client: &kube::Client,
    namespace: &str,
    suffix: &str,
    job: &str,
    context: impl Fn() -> String,
) {
    let cron_jobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(client.clone(), namespace);
    let cron_job = wait_for(120, &format!("the CronJob *{suffix}"), context, || async {
        cron_jobs
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(suffix))
            })
    })
    .await;
    let template = cron_job.spec.expect("spec").job_template;
    let doc = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job, "namespace": namespace},
        "spec": template.spec,
    });
    apply::apply(client, &doc, Mode::Apply).await.expect("job");
}

/// Waits until the schedule's backup `name` completed; its id in the repository.
pub(crate) async fn completed_backup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> String {
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    let status = wait_for(
        180,
        &format!("backup {name} to finish"),
        &context,
        || async {
            let status = backups.get_opt(name).await.ok()??.status?;
            matches!(
                status.phase,
                Some(BackupPhase::Completed | BackupPhase::Failed)
            )
            .then_some(status)
        },
    )
    .await;
    assert_eq!(
        status.phase,
        Some(BackupPhase::Completed),
        "{status:?}\n{}",
        context()
    );
    status.backup_id.expect("a backup id")
}

/// The names of the backups `nightly` created, oldest first, once there are `count`.
pub(crate) async fn scheduled_backups(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    context: impl Fn() -> String,
) -> Vec<PostgresBackup> {
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(
        120,
        &format!("{count} scheduled backup(s)"),
        context,
        || async {
            let mut items = backups.list(&Default::default()).await.ok()?.items;
            items.sort_by_key(|b| b.metadata.name.clone());
            (items.len() == count).then_some(items)
        },
    )
    .await
}

/// Whether a directory named `id` is anywhere under `dir`.
fn holds(dir: &std::path::Path, id: &str) -> bool {
    std::fs::read_dir(dir).expect("read dir").any(|entry| {
        let entry = entry.expect("entry");
        entry.file_type().expect("type").is_dir()
            && (entry.file_name() == id || holds(&entry.path(), id))
    })
}

#[tokio::test]
async fn a_schedules_trigger_creates_its_backups_and_retention_deletes_the_older_with_its_data() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "trigger").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    apply_all(&admin, &crate::cluster::database(&namespace)).await;
    ready_pod_ip(&admin, &namespace, "pg-0", context).await;
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "method": "logical", "retention": {"keepLast": 1},
                 "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                              "repository": {"volume": {"claimName": "backups"}}}},
    });
    apply::apply(&admin, &schedule, Mode::Apply)
        .await
        .expect("schedule");

    // The trigger Job runs under the agent's ServiceAccount and creates a labelled backup.
    trigger_now(&admin, &namespace, "first-run", context).await;
    let first = scheduled_backups(&admin, &namespace, 1, context)
        .await
        .remove(0);
    let first_name = first.metadata.name.clone().expect("name");
    assert_eq!(
        first
            .metadata
            .labels
            .unwrap_or_default()
            .get("pgbackup.io/schedule")
            .map(String::as_str),
        Some("nightly")
    );
    let first_id = completed_backup(&admin, &namespace, &first_name, context).await;
    let repository = claim_dir(&admin, &namespace, "backups").await;
    assert!(
        holds(&repository, &first_id),
        "the first backup's data is stored"
    );

    // A second run (a second later: backup names carry the second) leaves one to keep.
    tokio::time::sleep(Duration::from_secs(1)).await;
    trigger_now(&admin, &namespace, "second-run", context).await;
    let both = scheduled_backups(&admin, &namespace, 2, context).await;
    let second_name = both[1].metadata.name.clone().expect("name");
    let second_id = completed_backup(&admin, &namespace, &second_name, context).await;
    let kept = scheduled_backups(&admin, &namespace, 1, context).await;
    assert_eq!(kept[0].metadata.name.as_deref(), Some(second_name.as_str()));
    wait_for(60, "the first backup's data to go", context, || async {
        (!holds(&repository, &first_id)).then_some(())
    })
    .await;
    assert!(
        holds(&repository, &second_id),
        "the kept backup's data stays"
    );
}

#[tokio::test]
async fn an_incremental_schedule_starts_chains_by_its_policy_and_retention_deletes_them_whole() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "incremental").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    summarizing_database(&admin, &namespace, context).await;
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "method": "physical", "retention": {"keepLast": 1},
                 "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                              "repository": {"volume": {"claimName": "backups"}},
                              "physical": {"incremental": true, "fullEvery": 2}}},
    });
    apply::apply(&admin, &schedule, Mode::Apply)
        .await
        .expect("schedule");
    let backups: Api<PostgresBackup> = Api::namespaced(admin.clone(), &namespace);
    let status_of = |name: String| {
        let backups = backups.clone();
        async move {
            backups
                .get(&name)
                .await
                .expect("backup")
                .status
                .expect("status")
        }
    };

    // A full backup starts the chain, an incremental one builds on it.
    let mut ids = Vec::new();
    let mut names = Vec::new();
    for run in 0..2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger_now(&admin, &namespace, &format!("run-{run}"), context).await;
        let all = scheduled_backups(&admin, &namespace, run + 1, context).await;
        let name = all[run].metadata.name.clone().expect("name");
        ids.push(completed_backup(&admin, &namespace, &name, context).await);
        names.push(name);
    }
    let full = status_of(names[0].clone()).await;
    assert_eq!(
        (
            full.kind.as_deref(),
            full.chain_length,
            full.parent.as_deref()
        ),
        (Some("full"), Some(1), None)
    );
    let incremental = status_of(names[1].clone()).await;
    assert_eq!(
        (
            incremental.kind.as_deref(),
            incremental.chain_length,
            incremental.parent.as_deref()
        ),
        (Some("incremental"), Some(2), Some(ids[0].as_str())),
        "{:?}",
        incremental.message
    );
    // keepLast 1 keeps the incremental one, and with it the full one it builds on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    scheduled_backups(&admin, &namespace, 2, context).await;

    // The chain holds 2: the third run is a full backup, and the old chain goes, newest
    // first, data and all.
    trigger_now(&admin, &namespace, "run-2", context).await;
    let all = scheduled_backups(&admin, &namespace, 3, context).await;
    let third = all[2].metadata.name.clone().expect("name");
    let third_id = completed_backup(&admin, &namespace, &third, context).await;
    let status = status_of(third.clone()).await;
    assert_eq!(status.kind.as_deref(), Some("full"), "{:?}", status.message);
    let kept = scheduled_backups(&admin, &namespace, 1, context).await;
    assert_eq!(kept[0].metadata.name.as_deref(), Some(third.as_str()));
    let repository = claim_dir(&admin, &namespace, "backups").await;
    wait_for(60, "the old chain's data to go", context, || async {
        ids.iter().all(|id| !holds(&repository, id)).then_some(())
    })
    .await;
    assert!(
        holds(&repository, &third_id),
        "the kept backup's data stays"
    );
}

#[tokio::test]
async fn a_backup_others_build_on_is_deleted_after_them() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "chain-delete").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    summarizing_database(&admin, &namespace, context).await;
    let backup = |name: &str, incremental: bool| {
        serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"method": "physical", "deletionPolicy": "Delete",
                     "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                     "repository": {"volume": {"claimName": "backups"}},
                     "physical": {"incremental": incremental}},
        })
    };
    let mut ids = Vec::new();
    for (name, incremental) in [("base", false), ("next", true)] {
        apply::apply(&admin, &backup(name, incremental), Mode::Apply)
            .await
            .expect("backup");
        ids.push(completed_backup(&admin, &namespace, name, context).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let backups: Api<PostgresBackup> = Api::namespaced(admin.clone(), &namespace);
    let next = backups
        .get("next")
        .await
        .expect("next")
        .status
        .expect("status");
    assert_eq!(next.parent.as_deref(), Some(ids[0].as_str()));

    // The full backup's object is deleted first: its data waits for the incremental's.
    crate::cluster::delete(&backups, "base").await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    wait_for(60, "a WaitingForIncrementals event", context, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("WaitingForIncrementals")
                    && e.message.as_deref().is_some_and(|m| m.contains("next"))
            })
            .then_some(())
    })
    .await;
    let repository = claim_dir(&admin, &namespace, "backups").await;
    assert!(holds(&repository, &ids[0]), "the full backup's data stays");

    // Once the incremental goes, so does the backup it built on.
    crate::cluster::delete(&backups, "next").await;
    for name in ["next", "base"] {
        crate::cluster::gone(&backups, name, 120, context).await;
    }
    for id in &ids {
        assert!(!holds(&repository, id), "backup {id}'s data is deleted");
    }
}

/// A PostgreSQL 18 StatefulSet `pg` that summarizes its WAL (incremental backups), ready.
async fn summarizing_database(
    client: &kube::Client,
    namespace: &str,
    context: impl Fn() -> String,
) {
    let server_args = ["-c", "wal_level=replica", "-c", "summarize_wal=on"];
    apply_all(
        client,
        &crate::cluster::database_of(namespace, "postgres:18.1", &server_args),
    )
    .await;
    ready_pod_ip(client, namespace, "pg-0", context).await;
}

/// Waits until the pod of the archiver of [`archiving_schedule`] is ready: streaming.
pub(crate) async fn archiver_streaming(
    client: &kube::Client,
    namespace: &str,
    context: impl Fn() -> String,
) {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), namespace);
    wait_for(180, "the WAL archiver to stream", context, || async {
        let status = deployments
            .get_opt("nightly-wal-archiver")
            .await
            .ok()??
            .status?;
        (status.ready_replicas? == 1).then_some(())
    })
    .await;
}

/// While WAL flows, the archiver's progress changes the schedule's status at every look;
/// that write must not make the schedule reconcile again. Five changes of the user's (an
/// annotation), each while new WAL is being stored, are five reconciles, not ten.
async fn reconciles_do_not_feed_on_their_own_status(
    client: &kube::Client,
    namespace: &str,
    operator: &Operator,
    db: &tokio_postgres::Client,
) {
    let reconciles = || {
        operator
            .metric("pgbackup_reconciles_total{kind=\"BackupSchedule\"}")
            .expect("the schedule's reconciles on the operator's /metrics")
    };
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), namespace);
    let stored = || async {
        schedules
            .get("nightly")
            .await
            .expect("schedule")
            .status
            .and_then(|s| s.wal_archiving)
            .and_then(|w| w.last_archived_wal)
    };
    let before = reconciles();
    let mut writes = 0;
    for poke in 0..5 {
        let last = stored().await;
        for round in 0..3 {
            db.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS flow (x int); INSERT INTO flow VALUES ({round}); \
                 SELECT pg_switch_wal()"
            ))
            .await
            .expect("write WAL");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let annotation = serde_json::json!({"metadata": {"annotations": {"example.com/poke": poke.to_string()}}});
        schedules
            .patch(
                "nightly",
                &PatchParams::default(),
                &Patch::Merge(&annotation),
            )
            .await
            .expect("annotate");
        tokio::time::sleep(Duration::from_secs(2)).await;
        if stored().await != last {
            writes += 1;
        }
    }
    let counted = reconciles() - before;
    assert!(
        writes >= 4,
        "the archiver's progress reached status {writes} times of 5"
    );
    assert!(
        (5.0..=6.0).contains(&counted),
        "{counted} reconciles of the schedule for 5 changes (and at most one resync): its own status writes feed back"
    );
}

/// The server's clock, whole seconds, as RFC 3339.
pub(crate) async fn server_second(db: &tokio_postgres::Client) -> String {
    db.query_one(
        "SELECT to_char(date_trunc('second', clock_timestamp()) AT TIME ZONE 'UTC', \
                        'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        &[],
    )
    .await
    .expect("clock")
    .get(0)
}

#[tokio::test]
async fn archived_wal_restores_in_place_to_the_moment_before_a_mistake() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "archiving").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    apply_all(&client, &archiving_schedule(&namespace, &s3)).await;

    // The archiver's pod streams (its readiness is "streaming"), then a base backup.
    archiver_streaming(&client, &namespace, context).await;
    reconciles_do_not_feed_on_their_own_status(&client, &namespace, &operator, &db).await;
    trigger_now(&client, &namespace, "base", context).await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let phase = wait_for(240, "the base backup to complete", context, || async {
        let backup = backups
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()?;
        let phase = backup.status?.phase?;
        matches!(phase, BackupPhase::Completed | BackupPhase::Failed).then_some(phase)
    })
    .await;
    assert_eq!(
        phase,
        BackupPhase::Completed,
        "the base backup failed\n{}",
        context()
    );

    // Rows of "noon", the moment to go back to, then the mistake.
    db.batch_execute("INSERT INTO orders SELECT i, 'noon' FROM generate_series(4322, 5000) i")
        .await
        .expect("noon rows");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let moment = server_second(&db).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    db.batch_execute(
        "DELETE FROM orders WHERE id % 2 = 0; INSERT INTO orders VALUES (9999, 'late')",
    )
    .await
    .expect("the mistake");
    let mistake: jiff::Timestamp = server_second(&db).await.parse().expect("time");
    drop(db);

    // The schedule's status says when the mistake is archived: the window reaches past it.
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        180,
        "the recovery window to reach the mistake",
        context,
        || async {
            let window = schedules
                .get("nightly")
                .await
                .ok()?
                .status?
                .recovery_window?;
            (window.last_recoverability_point?.0 > mistake).then_some(())
        },
    )
    .await;
    // The archiver reads the repository back: the window rests on unbroken archived WAL
    // from the base backup's end on.
    let window = wait_for(
        60,
        "the window proven by the archived WAL",
        context,
        || async {
            let window = schedules
                .get("nightly")
                .await
                .ok()?
                .status?
                .recovery_window?;
            (window.proven_by.as_deref() == Some("walArchive")).then_some(window)
        },
    )
    .await;
    let base_end = backups
        .list(&Default::default())
        .await
        .expect("backups")
        .items[0]
        .status
        .as_ref()
        .and_then(|s| s.completed_at.clone())
        .expect("completed");
    assert!(
        window.first_recoverability_point.as_ref().expect("first").0 <= base_end.0,
        "{window:?}"
    );
    assert!(window.checked_at.is_some(), "{window:?}");
    // The base backup shows it too: from its own end to where the archive is proven.
    let reach = wait_for(
        60,
        "the backup's window proven by the archived WAL",
        context,
        || async {
            let backup = backups
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            let reach = backup.status?.recovery_window?;
            (reach.proven_by.as_deref() == Some("walArchive")).then_some(reach)
        },
    )
    .await;
    assert_eq!(
        reach.first_recoverability_point,
        Some(base_end.clone()),
        "{reach:?}"
    );
    assert!(
        reach.last_recoverability_point.as_ref().expect("last").0 > mistake,
        "{reach:?}"
    );

    let doc = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "before-the-mistake"},
            "spec": {"target": {"dataSubPath": "pgdata"},
                     "recoveryTarget": {"time": moment}}}),
    );
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(&client, &namespace, "before-the-mistake", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());

    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let db = connect(&ip).await;
    assert_eq!(count(&db).await, 5000, "the rows of noon, none deleted");
    let late: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE note = 'late'", &[])
        .await
        .expect("late")
        .get(0);
    assert_eq!(late, 0, "nothing written after the moment");
}
