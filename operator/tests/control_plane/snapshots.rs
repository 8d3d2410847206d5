//! VolumeSnapshotBackups on the node: the StatefulSet controller really stops and starts
//! the server for an offline snapshot, a checkpoint snapshot leaves it running, each
//! snapshot starts as a database with the rows it was cut with, and an online snapshot
//! recorded in the schedule's repository clones with archived WAL; checkpoint and offline
//! snapshots clone as they were taken, and recorded ones to a later moment.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, Client};
use pgbackup::api::{BackupPhase, PointInTimeRestore, VolumeSnapshotBackup};

use crate::cluster::{
    apply_all, connect, count, database, finished_restore, logs, orders_database, pod_uid,
    ready_pod_ip, restore, wait_for,
};
use crate::schedules::{archiver_streaming, archiving_schedule, server_second};
use crate::support::{
    controlplane::{
        ControlPlane,
        apply::{self, Mode},
        operator::Operator,
        test_namespace,
    },
    node::storage,
    s3::S3Server,
};

/// A VolumeSnapshotBackup `name` of `pg`'s data volume in `mode`.
pub(crate) fn snapshot_backup(namespace: &str, name: &str, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"},
                            "dataVolumeClaimTemplate": "data", "dataSubPath": "pgdata"},
                 "volumeSnapshotClassName": storage::CLASS, "mode": mode, "deadline": "3m"},
    })
}

/// Creates `doc` and waits until the backup it describes completed; the backup.
pub(crate) async fn completed_snapshot(
    client: &Client,
    doc: &serde_json::Value,
    context: impl Fn() -> String,
) -> VolumeSnapshotBackup {
    apply::apply(client, doc, Mode::Apply)
        .await
        .expect("snapshot backup");
    let name = doc["metadata"]["name"].as_str().expect("name");
    let namespace = doc["metadata"]["namespace"].as_str().expect("namespace");
    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
    let backup = wait_for(
        240,
        &format!("snapshot {name} to finish"),
        &context,
        || async {
            let backup = backups.get(name).await.ok()?;
            let phase = backup.status.as_ref()?.phase?;
            matches!(phase, BackupPhase::Completed | BackupPhase::Failed).then_some(backup)
        },
    )
    .await;
    let status = backup.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(BackupPhase::Completed),
        "{status:?}\n{}",
        context()
    );
    assert!(
        status.snapshots.iter().all(|s| s.ready_to_use),
        "{status:?}"
    );
    backup
}

/// Starts a StatefulSet `name` like `pg` whose data volume is made from `volume_snapshot`;
/// the rows of its `orders`.
async fn rows_of_a_database_made_from(
    client: &Client,
    namespace: &str,
    name: &str,
    volume_snapshot: &str,
    context: impl Fn() -> String,
) -> i64 {
    let mut set = database(namespace)[2].clone();
    set["metadata"]["name"] = name.into();
    set["spec"]["selector"]["matchLabels"]["app"] = name.into();
    set["spec"]["template"]["metadata"]["labels"]["app"] = name.into();
    set["spec"]["volumeClaimTemplates"][0]["spec"]["dataSource"] = serde_json::json!({
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": volume_snapshot,
    });
    apply::apply(client, &set, Mode::Apply)
        .await
        .expect("stateful set");
    let ip = ready_pod_ip(client, namespace, &format!("{name}-0"), context).await;
    count(&connect(&ip).await).await
}

#[tokio::test]
async fn checkpoint_and_offline_snapshots_start_as_databases_with_the_rows_they_were_cut_with() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshots").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;

    // A checkpoint snapshot leaves the server running: same pod, same session.
    let before = pod_uid(&client, &namespace, "pg-0").await;
    let checkpoint = completed_snapshot(
        &client,
        &snapshot_backup(&namespace, "checkpoint", "checkpoint"),
        context,
    )
    .await;
    assert_eq!(pod_uid(&client, &namespace, "pg-0").await, before);
    db.batch_execute("INSERT INTO orders SELECT i, 'later' FROM generate_series(4322, 5000) i")
        .await
        .expect("the server answers throughout a checkpoint snapshot");
    drop(db);

    // An offline snapshot: the StatefulSet controller deletes the pod and makes a new one.
    let offline = completed_snapshot(
        &client,
        &snapshot_backup(&namespace, "offline", "offline"),
        context,
    )
    .await;
    assert_eq!(
        offline.status.as_ref().and_then(|s| s.original_replicas),
        Some(1)
    );
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("stateful set");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1), "scaled back");
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_ne!(
        pod_uid(&client, &namespace, "pg-0").await,
        before,
        "the server was stopped for the snapshot"
    );
    let db = connect(&ip).await;
    assert_eq!(count(&db).await, 5000, "the database is back with its rows");
    db.batch_execute("DELETE FROM orders")
        .await
        .expect("a mistake after the snapshots");

    let volume_snapshot = |backup: &VolumeSnapshotBackup| {
        let status = backup.status.as_ref().expect("status");
        assert_eq!(status.snapshots.len(), 1, "{status:?}");
        assert_eq!(status.snapshots[0].claim_name, "data-pg-0");
        status.snapshots[0].name.clone()
    };
    assert_eq!(
        rows_of_a_database_made_from(
            &client,
            &namespace,
            "from-checkpoint",
            &volume_snapshot(&checkpoint),
            context
        )
        .await,
        4321
    );
    assert_eq!(
        rows_of_a_database_made_from(
            &client,
            &namespace,
            "from-offline",
            &volume_snapshot(&offline),
            context
        )
        .await,
        5000
    );
}

#[tokio::test]
async fn an_online_snapshot_clones_with_archived_wal_beside_the_running_database() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "online").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    let schedule = archiving_schedule(&namespace, &s3);
    apply_all(&client, &schedule).await;
    archiver_streaming(&client, &namespace, context).await;

    let before = pod_uid(&client, &namespace, "pg-0").await;
    let mut doc = snapshot_backup(&namespace, "online", "online");
    doc["spec"]["repository"] = schedule[1]["spec"]["template"]["repository"].clone();
    completed_snapshot(&client, &doc, context).await;
    assert_eq!(pod_uid(&client, &namespace, "pg-0").await, before);
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");

    let doc = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "drill"},
            "spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": "online"},
                     "target": {"dataSubPath": "pgdata"}, "mode": "clone", "confirm": false,
                     "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(&client, &namespace, "drill", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let clone = restores
        .get("drill")
        .await
        .expect("restore")
        .status
        .and_then(|s| s.restored_stateful_set)
        .expect("the clone's name in status");
    assert_ne!(clone, "pg");
    let ip = ready_pod_ip(&client, &namespace, &format!("{clone}-0"), context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the clone has the rows of the snapshot"
    );
    assert_eq!(
        count(&db).await,
        5000,
        "the original kept running with its rows"
    );
    assert_eq!(pod_uid(&client, &namespace, "pg-0").await, before);
}

/// Restores `source` (a VolumeSnapshotBackup) into a clone `name` to `target`; the rows of
/// the clone's `orders`, and of those the ones noted `late`.
async fn rows_of_a_clone(
    client: &Client,
    namespace: &str,
    name: &str,
    source: &str,
    target: serde_json::Value,
    context: impl Fn() -> String,
) -> (i64, i64) {
    let doc = restore(
        namespace,
        serde_json::json!({"metadata": {"name": name},
            "spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": source},
                     "target": {"dataSubPath": "pgdata"}, "mode": "clone", "confirm": false,
                     "recoveryTarget": target}}),
    );
    apply::apply(client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(client, namespace, name, &context).await;
    assert_eq!(ready.0, "True", "{name}: {ready:?}\n{}", context());
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), namespace);
    let status = restores
        .get(name)
        .await
        .expect("restore")
        .status
        .expect("status");
    let guarantee = pgbackup::api::find_condition(&status.conditions, "SnapshotGuarantee")
        .expect("the restore says what the snapshot guarantees");
    assert_eq!(guarantee.status, "True", "{guarantee:?}");
    let clone = status.restored_stateful_set.expect("the clone's name");
    let ip = ready_pod_ip(client, namespace, &format!("{clone}-0"), context).await;
    let db = connect(&ip).await;
    let late: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE note = 'late'", &[])
        .await
        .expect("late")
        .get(0);
    (count(&db).await, late)
}

#[tokio::test]
async fn checkpoint_and_offline_snapshots_clone_as_taken_and_to_a_later_moment() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-clones").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    let schedule = archiving_schedule(&namespace, &s3);
    apply_all(&client, &schedule).await;
    archiver_streaming(&client, &namespace, context).await;

    // A checkpoint and an offline snapshot recorded in the schedule's repository, where WAL
    // is archived (the offline one from the control file of a copy of its snapshot).
    let repository = schedule[1]["spec"]["template"]["repository"].clone();
    for mode in ["checkpoint", "offline"] {
        let mut doc = snapshot_backup(&namespace, mode, mode);
        doc["spec"]["repository"] = repository.clone();
        completed_snapshot(&client, &doc, context).await;
    }
    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
    let offline = backups.get("offline").await.expect("offline snapshot");
    let recorded = offline.status.expect("status");
    assert!(
        recorded.backup_id.is_some() && recorded.begin_lsn.is_some(),
        "the offline snapshot is recorded, from where its copy's WAL replay starts: {recorded:?}"
    );
    // The database was stopped for the offline snapshot: a new session.
    drop(db);
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let db = connect(&ip).await;

    let (moment, mistake) = noon_then_mistake(&db).await;
    drop(db);
    archived_past(&client, &namespace, mistake, context).await;

    for (clone, source) in [("noon", "checkpoint"), ("offline-noon", "offline")] {
        assert_eq!(
            rows_of_a_clone(
                &client,
                &namespace,
                clone,
                source,
                serde_json::json!({"time": moment}),
                context
            )
            .await,
            (5000, 0),
            "the {source} snapshot and the archived WAL to noon: every row, none deleted"
        );
    }
    assert_eq!(
        rows_of_a_clone(
            &client,
            &namespace,
            "as-stopped",
            "offline",
            serde_json::json!({"time": null, "immediate": true}),
            context
        )
        .await,
        (4321, 0),
        "the offline snapshot as the server stopped: before noon"
    );
}

/// Rows of "noon" (4322..=5000), the moment after them, then the mistake (the even rows
/// deleted, a `late` row): the moment (the server's clock, whole seconds) and when the
/// mistake was made.
pub(crate) async fn noon_then_mistake(db: &tokio_postgres::Client) -> (String, jiff::Timestamp) {
    db.batch_execute("INSERT INTO orders SELECT i, 'noon' FROM generate_series(4322, 5000) i")
        .await
        .expect("noon rows");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let moment = server_second(db).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    db.batch_execute(
        "DELETE FROM orders WHERE id % 2 = 0; INSERT INTO orders VALUES (9999, 'late')",
    )
    .await
    .expect("the mistake");
    let mistake = server_second(db).await.parse().expect("time");
    (moment, mistake)
}

/// Waits until schedule `nightly`'s archiver has stored WAL past `moment`. Without a base
/// backup the schedule has no window: the archiver's stores say how far the archive
/// reaches (it stores the segment being written every 2 s).
pub(crate) async fn archived_past(
    client: &Client,
    namespace: &str,
    moment: jiff::Timestamp,
    context: impl Fn() -> String,
) {
    let schedules: Api<pgbackup::api::BackupSchedule> = Api::namespaced(client.clone(), namespace);
    wait_for(
        180,
        "the archive to reach past the moment",
        context,
        || async {
            let archived = schedules
                .get("nightly")
                .await
                .ok()?
                .status?
                .wal_archiving?
                .last_archived_time?;
            (archived.0 > moment + jiff::SignedDuration::from_secs(4)).then_some(())
        },
    )
    .await;
}
