//! Volume snapshots restored in place, where the PersistentVolume controller really binds
//! and releases volumes: ordinal 0's claim is replaced by one made from the snapshot, the
//! volume it was bound to is kept until the restore is proven, and a restore that fails
//! binds that volume back; a schedule of snapshots restores the one that reaches the
//! target fastest.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{PersistentVolume, PersistentVolumeClaim},
};
use kube::{Api, Client};
use pgbackup::api::{PointInTimeRestore, RestorePhase, find_condition};

use kube::ResourceExt;

use crate::cluster::{
    apply_all, claim_dir, connect, count, finished_restore, logs, orders_database, ready_pod_ip,
    restore, wait_for,
};
use crate::schedules::{archiver_streaming, archiving_schedule, run_now};
use crate::snapshots::{archived_past, completed_snapshot, noon_then_mistake, snapshot_backup};
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

/// A restore `name` of VolumeSnapshotBackup `source` in place to `target`.
pub(crate) fn in_place(
    namespace: &str,
    name: &str,
    source: &str,
    target: serde_json::Value,
) -> serde_json::Value {
    restore(
        namespace,
        serde_json::json!({"metadata": {"name": name},
            "spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": source},
                     "target": {"dataSubPath": "pgdata"}, "mode": "inPlace", "confirm": true,
                     "recoveryTarget": target}}),
    )
}

/// Restores VolumeSnapshotBackup `source` in place to `target`; the restore at the end.
async fn restored_in_place(
    client: &Client,
    namespace: &str,
    name: &str,
    source: &str,
    target: serde_json::Value,
    context: impl Fn() -> String,
) -> PointInTimeRestore {
    apply::apply(
        client,
        &in_place(namespace, name, source, target),
        Mode::Apply,
    )
    .await
    .expect("restore");
    finished_restore(client, namespace, name, &context).await;
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), namespace);
    restores.get(name).await.expect("restore")
}

pub(crate) fn as_taken() -> serde_json::Value {
    serde_json::json!({"time": null, "immediate": true})
}

/// The volume claim `claim` is bound to, and the claim's UID.
pub(crate) async fn bound_volume(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> (String, String) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims.get(claim).await.expect("claim");
    (
        claim.spec.and_then(|s| s.volume_name).expect("bound"),
        claim.metadata.uid.expect("uid"),
    )
}

#[tokio::test]
async fn a_snapshot_restored_in_place_keeps_the_old_volume_and_a_failed_one_binds_it_back() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-in-place").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    completed_snapshot(
        &client,
        &snapshot_backup(&namespace, "before", "checkpoint"),
        context,
    )
    .await;
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");
    drop(db);
    let (old_volume, old_claim) = bound_volume(&client, &namespace, "data-pg-0").await;

    let done = restored_in_place(&client, &namespace, "back", "before", as_taken(), context).await;
    let status = done.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(RestorePhase::Completed),
        "{status:?}\n{}",
        context()
    );
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let db = connect(&ip).await;
    assert_eq!(count(&db).await, 4321, "the rows of the snapshot");
    let (new_volume, new_claim) = bound_volume(&client, &namespace, "data-pg-0").await;
    assert!(new_volume != old_volume && new_claim != old_claim);
    // The old volume is kept, released, with everything it held.
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let kept = volumes
        .get(&old_volume)
        .await
        .expect("the old volume is kept");
    let spec = kept.spec.clone().expect("spec");
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(
        kept.metadata
            .annotations
            .unwrap_or_default()
            .get("pgbackup.io/replaced-by-restore"),
        Some(&format!("{namespace}/back"))
    );
    let old_data = std::path::PathBuf::from(spec.host_path.expect("local").path);
    assert!(old_data.join("pgdata/PG_VERSION").exists(), "{old_data:?}");
    let kept_note = find_condition(&status.conditions, "PreviousVolumes").expect("said");
    assert!(kept_note.message.contains(&old_volume), "{kept_note:?}");

    // A snapshot whose content is damaged: the restore fails on it and binds back the
    // volume it replaced, with the rows written since.
    db.batch_execute("INSERT INTO orders SELECT i, 'after' FROM generate_series(6000, 6099) i")
        .await
        .expect("rows after the restore");
    drop(db);
    damaged_snapshot(&client, &namespace, "broken", context).await;
    let (volume_before, claim_before) = bound_volume(&client, &namespace, "data-pg-0").await;

    let failed =
        restored_in_place(&client, &namespace, "again", "broken", as_taken(), context).await;
    let status = failed.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(RestorePhase::RolledBack),
        "{status:?}\n{}",
        context()
    );
    let (_, claim_after) = bound_volume(&client, &namespace, "data-pg-0").await;
    assert_ne!(claim_after, claim_before, "by a claim of the same name");
    bound_back(&client, &namespace, &volume_before, 4421, context).await;
}

/// The completed VolumeSnapshotBackups of schedule `nightly`, once there are `n`.
async fn scheduled_snapshots(
    client: &Client,
    namespace: &str,
    n: usize,
    context: impl Fn() -> String,
) -> Vec<pgbackup::api::VolumeSnapshotBackup> {
    let api: Api<pgbackup::api::VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(
        240,
        &format!("{n} scheduled snapshot(s)"),
        context,
        || async {
            let listed = api
                .list(&kube::api::ListParams::default().labels("pgbackup.io/schedule=nightly"))
                .await
                .ok()?
                .items;
            let done = listed
                .iter()
                .filter(|b| {
                    b.status.as_ref().and_then(|s| s.phase)
                        == Some(pgbackup::api::BackupPhase::Completed)
                })
                .count();
            (done == n).then_some(listed)
        },
    )
    .await
}

#[tokio::test]
async fn a_schedule_of_snapshots_restores_its_newest_snapshot_before_the_moment() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-schedule").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    let mut objects = archiving_schedule(&namespace, &s3);
    objects[1]["spec"]["method"] = "volumeSnapshot".into();
    objects[1]["spec"]["template"]["target"]["dataSubPath"] = "pgdata".into();
    objects[1]["spec"]["template"]["volumeSnapshot"] = serde_json::json!({
        "mode": "checkpoint", "volumeSnapshotClassName": storage::CLASS, "deadline": "3m"});
    apply_all(&client, &objects).await;
    archiver_streaming(&client, &namespace, context).await;
    run_now(&client, &namespace, "-trigger", "first", context).await;
    let first = scheduled_snapshots(&client, &namespace, 1, context).await[0].name_any();

    let (moment, mistake) = noon_then_mistake(&db).await;
    drop(db);
    // A second snapshot after the mistake: too late for the moment.
    run_now(&client, &namespace, "-trigger", "second", context).await;
    scheduled_snapshots(&client, &namespace, 2, context).await;
    archived_past(&client, &namespace, mistake, context).await;

    let doc = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "noon"},
            "spec": {"target": {"dataSubPath": "pgdata"}, "mode": "clone", "confirm": false,
                     "recoveryTarget": {"time": moment}}}),
    );
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(&client, &namespace, "noon", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let status = restores
        .get("noon")
        .await
        .expect("restore")
        .status
        .expect("status");
    assert_eq!(
        status.volume_snapshot_backup.as_deref(),
        Some(first.as_str()),
        "the newest snapshot taken before the moment"
    );
    let clone = status.restored_stateful_set.expect("clone");
    let ip = ready_pod_ip(&client, &namespace, &format!("{clone}-0"), context).await;
    let db = connect(&ip).await;
    assert_eq!(count(&db).await, 5000, "every row of noon, none deleted");
    let late: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE note = 'late'", &[])
        .await
        .expect("late")
        .get(0);
    assert_eq!(late, 0);
}

#[tokio::test]
async fn recorded_snapshots_of_every_mode_restore_in_place_to_a_later_moment() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-noon").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    let schedule = archiving_schedule(&namespace, &s3);
    apply_all(&client, &schedule).await;
    archiver_streaming(&client, &namespace, context).await;
    for mode in ["online", "checkpoint", "offline"] {
        let mut doc = snapshot_backup(&namespace, mode, mode);
        doc["spec"]["repository"] = schedule[1]["spec"]["template"]["repository"].clone();
        completed_snapshot(&client, &doc, context).await;
    }
    // Stopped for the offline snapshot: a new session.
    drop(db);
    let db = connect(&ready_pod_ip(&client, &namespace, "pg-0", context).await).await;
    let (moment, mistake) = noon_then_mistake(&db).await;
    drop(db);
    archived_past(&client, &namespace, mistake, context).await;

    // Each restore starts a timeline of its own: the later ones ask for the moment on the
    // first.
    for (name, source, target) in [
        ("online-noon", "online", serde_json::json!({"time": moment})),
        (
            "checkpoint-noon",
            "checkpoint",
            serde_json::json!({"time": moment, "timeline": "1"}),
        ),
        (
            "offline-noon",
            "offline",
            serde_json::json!({"time": moment, "timeline": "1"}),
        ),
    ] {
        // A row only the data being replaced has: gone once the snapshot is restored.
        let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
        connect(&ip)
            .await
            .batch_execute("INSERT INTO orders VALUES (7777, 'marker')")
            .await
            .expect("marker row");
        let (old_volume, _) = bound_volume(&client, &namespace, "data-pg-0").await;
        let done = restored_in_place(&client, &namespace, name, source, target, context).await;
        let status = done.status.clone().expect("status");
        assert_eq!(
            status.phase,
            Some(RestorePhase::Completed),
            "{name}: {status:?}\n{}",
            context()
        );
        let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
        let db = connect(&ip).await;
        assert_eq!(
            count(&db).await,
            5000,
            "{name}: every row of noon, none deleted"
        );
        let late: i64 = db
            .query_one("SELECT count(*) FROM orders WHERE note = 'late'", &[])
            .await
            .expect("late")
            .get(0);
        assert_eq!(late, 0, "{name}: nothing written after the moment");
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        let kept = volumes
            .get(&old_volume)
            .await
            .expect("the old volume is kept");
        let policy = kept.spec.and_then(|s| s.persistent_volume_reclaim_policy);
        assert_eq!(policy.as_deref(), Some("Retain"), "{name}");
    }
}

/// A completed checkpoint VolumeSnapshotBackup `name` whose content the storage lost a
/// file of (`global/pg_control`): a restore from it fails.
pub(crate) async fn damaged_snapshot(
    client: &Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) {
    let broken = completed_snapshot(
        client,
        &snapshot_backup(namespace, name, "checkpoint"),
        context,
    )
    .await;
    let snapshot_name = broken.status.expect("status").snapshots[0].name.clone();
    let snapshots: Api<pgbackup::k8s::generated::volume_snapshot::VolumeSnapshot> =
        Api::namespaced(client.clone(), namespace);
    let snapshot_uid = snapshots
        .get(&snapshot_name)
        .await
        .expect("snapshot")
        .metadata
        .uid
        .expect("uid");
    let node_root = claim_dir(client, namespace, "data-pg-0")
        .await
        .ancestors()
        .nth(2)
        .expect("the node's storage root")
        .to_path_buf();
    let content = storage::snapshot_dir(&node_root, &snapshot_uid);
    std::fs::remove_file(content.join("pgdata/global/pg_control")).expect("damage the snapshot");
}

/// After a rollback: claim `data-pg-0` bound to `volume` again, the volume's own reclaim
/// policy (`Delete`) back, the StatefulSet at 1 replica and its database with `rows` rows.
pub(crate) async fn bound_back(
    client: &Client,
    namespace: &str,
    volume: &str,
    rows: i64,
    context: impl Fn() -> String,
) {
    let (volume_after, _) = bound_volume(client, namespace, "data-pg-0").await;
    assert_eq!(volume_after, volume, "the same volume, bound again");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let policy = volumes
        .get(volume)
        .await
        .expect("volume")
        .spec
        .and_then(|s| s.persistent_volume_reclaim_policy);
    assert_eq!(policy.as_deref(), Some("Delete"), "its own policy again");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
    let ip = ready_pod_ip(client, namespace, "pg-0", context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        rows,
        "every row it had, none lost"
    );
}
