//! VolumeSnapshotBackups when something goes wrong, on the node: storage that does not cut
//! in time, a backup deleted half-way, an operator killed while it holds backup mode, and
//! bad input. The StatefulSet is always given back, no half-made VolumeSnapshot stays, and
//! the database keeps every row.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, Client};
use pgbackup::api::{BackupPhase, VolumeSnapshotBackup};
use pgbackup::k8s::generated::volume_snapshot::VolumeSnapshot;

use crate::cluster::{
    claim_dir, connect, count, delete, gone, logs, orders_database, pod_uid, ready_pod_ip, wait_for,
};
use crate::snapshots::snapshot_backup;
use crate::support::{
    controlplane::{
        ControlPlane,
        apply::{self, Mode},
        operator::Operator,
        test_namespace,
    },
    free_port,
    node::storage::pause_snapshots,
};

/// Waits until backup `name` reached `phase`; the backup.
async fn in_phase(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: BackupPhase,
    context: impl Fn() -> String,
) -> VolumeSnapshotBackup {
    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(240, &format!("{name} to be {phase:?}"), context, || async {
        let backup = backups.get_opt(name).await.ok()??;
        (backup.status.as_ref()?.phase? == phase).then_some(backup)
    })
    .await
}

/// The backup's Ready condition as `(status, reason, message)`, once there is one.
fn ready_condition(backup: &VolumeSnapshotBackup) -> Option<(String, String, String)> {
    let ready = backup
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

/// The Ready condition of a backup that has one.
fn ready(backup: &VolumeSnapshotBackup) -> (String, String, String) {
    ready_condition(backup).unwrap_or_else(|| panic!("no Ready condition: {backup:?}"))
}

async fn volume_snapshots(client: &Client, namespace: &str) -> Vec<String> {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&Default::default())
        .await
        .expect("volume snapshots");
    list.items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

async fn replicas(client: &Client, namespace: &str) -> Option<i32> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    sets.get("pg").await.expect("statefulset").spec?.replicas
}

/// The StatefulSet is back at one ready replica with all 4321 rows, and no
/// VolumeSnapshot is left.
async fn given_back(client: &Client, namespace: &str, context: impl Fn() -> String) {
    assert_eq!(replicas(client, namespace).await, Some(1), "scaled back");
    let ip = ready_pod_ip(client, namespace, "pg-0", &context).await;
    assert_eq!(count(&connect(&ip).await).await, 4321);
    wait_for(60, "the half-made snapshots to go", context, || async {
        volume_snapshots(client, namespace)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

/// Sessions the operator holds on the database (backup mode of an online snapshot).
async fn operator_sessions(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbackup'",
        &[],
    )
    .await
    .expect("sessions")
    .get(0)
}

#[tokio::test]
async fn an_offline_snapshot_the_storage_never_cuts_is_undone_at_its_deadline() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "deadline").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(orders_database(&client, &namespace, context).await);
    pause_snapshots(&client, &namespace, true).await;

    let mut doc = snapshot_backup(&namespace, "slow", "offline");
    doc["spec"]["deadline"] = "20s".into();
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("snapshot backup");
    let failed = in_phase(&client, &namespace, "slow", BackupPhase::Failed, context).await;
    let (status, reason, message) = ready(&failed);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeadlineExceeded"),
        "{message}"
    );
    given_back(&client, &namespace, context).await;
}

#[tokio::test]
async fn deleting_an_offline_snapshot_half_way_gives_the_stateful_set_back() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "half-way").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(orders_database(&client, &namespace, context).await);
    pause_snapshots(&client, &namespace, true).await;

    apply::apply(
        &client,
        &snapshot_backup(&namespace, "cold", "offline"),
        Mode::Apply,
    )
    .await
    .expect("snapshot backup");
    wait_for(120, "the snapshot to be under way", context, || async {
        let scaled = replicas(&client, &namespace).await == Some(0);
        let cutting = !volume_snapshots(&client, &namespace).await.is_empty();
        (scaled && cutting).then_some(())
    })
    .await;
    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
    delete(&backups, "cold").await;
    gone(&backups, "cold", 120, context).await;
    given_back(&client, &namespace, context).await;
}

#[tokio::test]
async fn an_online_snapshot_whose_operator_died_in_backup_mode_is_undone_and_taken_again() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "session-lost").await;
    let mut operator = Operator::start(plane, &namespace, "first").await;
    let db = orders_database(&client, &namespace, || logs(&operator)).await;
    pause_snapshots(&client, &namespace, true).await;

    apply::apply(
        &client,
        &snapshot_backup(&namespace, "hot", "online"),
        Mode::Apply,
    )
    .await
    .expect("snapshot backup");
    wait_for(
        120,
        "backup mode while the snapshot is cut",
        || logs(&operator),
        || async {
            let held = operator_sessions(&db).await == 1;
            let cutting = !volume_snapshots(&client, &namespace).await.is_empty();
            (held && cutting).then_some(())
        },
    )
    .await;

    // The operator dies with the session that holds backup mode; another one takes over.
    operator.kill();
    let operator = Operator::start(plane, &namespace, "second").await;
    let context = || logs(&operator);
    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
    wait_for(120, "the second attempt", context, || async {
        let status = backups.get("hot").await.ok()?.status?;
        (status.attempt == Some(2)).then_some(())
    })
    .await;
    // What `kubectl describe` shows: why the first attempt was given up.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), &namespace);
    let lost = wait_for(60, "a SessionLost event", context, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SessionLost")
                && e.involved_object.name.as_deref() == Some("hot")
        })
    })
    .await;
    assert_eq!(lost.type_.as_deref(), Some("Warning"), "{lost:?}");
    pause_snapshots(&client, &namespace, false).await;

    let done = in_phase(&client, &namespace, "hot", BackupPhase::Completed, context).await;
    let status = done.status.expect("status");
    assert_eq!(status.attempt, Some(2));
    assert!(status.backup_label.is_some(), "{status:?}");
    assert_eq!(volume_snapshots(&client, &namespace).await.len(), 1);
    assert_eq!(operator_sessions(&db).await, 0, "backup mode was ended");
    assert_eq!(count(&db).await, 4321);
}

#[tokio::test]
async fn bad_input_leaves_a_condition_and_touches_nothing() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-input").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    let before = pod_uid(&client, &namespace, "pg-0").await;

    let port = free_port();
    let cases = [
        (
            "no-class",
            serde_json::json!({"volumeSnapshotClassName": "gone"}),
            "VolumeSnapshotClassNotFound",
        ),
        (
            "no-wal",
            serde_json::json!({"includeVolumes": ["wal"]}),
            "ClaimTemplateNotFound",
        ),
    ];
    for (name, change, reason) in &cases {
        let mut doc = snapshot_backup(&namespace, name, "offline");
        crate::cluster::merge(&mut doc["spec"], change.clone());
        apply::apply(&client, &doc, Mode::Apply)
            .await
            .expect("snapshot backup");
        let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
        let message = wait_for(120, &format!("{name} to be refused"), context, || async {
            let backup = backups.get(name).await.ok()?;
            let (_, found, message) = ready_condition(&backup)?;
            (found == *reason).then_some(message)
        })
        .await;
        let backup = backups.get(name).await.expect("backup");
        assert_eq!(
            backup.status.and_then(|s| s.phase),
            Some(BackupPhase::Pending),
            "{name}: {message}"
        );
    }
    let mut unreachable = snapshot_backup(&namespace, "unreachable", "checkpoint");
    unreachable["spec"]["target"]["host"] = "127.0.0.1".into();
    unreachable["spec"]["target"]["allowExternalHost"] = true.into();
    unreachable["spec"]["target"]["port"] = port.into();
    apply::apply(&client, &unreachable, Mode::Apply)
        .await
        .expect("snapshot backup");
    let failed = in_phase(
        &client,
        &namespace,
        "unreachable",
        BackupPhase::Failed,
        context,
    )
    .await;
    let (_, reason, message) = ready(&failed);
    assert_eq!(reason, "DatabaseUnreachable", "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert_eq!(
        failed.status.and_then(|s| s.attempt),
        Some(3),
        "tried three times"
    );

    // Nothing was stopped or cut.
    assert_eq!(pod_uid(&client, &namespace, "pg-0").await, before);
    assert_eq!(replicas(&client, &namespace).await, Some(1));
    assert!(volume_snapshots(&client, &namespace).await.is_empty());
    assert_eq!(count(&db).await, 4321);
}

#[tokio::test]
async fn an_online_snapshot_of_a_standby_fails_as_not_primary_without_snapshots() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "standby").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(orders_database(&client, &namespace, context).await);
    // The server restarts as a standby (of no primary): in recovery, answering reads.
    let data = claim_dir(&client, &namespace, "data-pg-0")
        .await
        .join("pgdata");
    std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    let before = pod_uid(&client, &namespace, "pg-0").await;
    pods.delete("pg-0", &Default::default())
        .await
        .expect("restart the server");
    wait_for(120, "a new pg-0", context, || async {
        let pod = pods.get_opt("pg-0").await.ok()??;
        (pod.metadata.uid != Some(before.clone())).then_some(())
    })
    .await;
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let standby = connect(&ip).await;
    let in_recovery: bool = standby
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("recovery")
        .get(0);
    assert!(in_recovery, "the server is a standby");

    apply::apply(
        &client,
        &snapshot_backup(&namespace, "hot", "online"),
        Mode::Apply,
    )
    .await
    .expect("snapshot backup");
    let failed = in_phase(&client, &namespace, "hot", BackupPhase::Failed, context).await;
    let (_, reason, message) = ready(&failed);
    assert_eq!(reason, "NotPrimary", "{message}");
    assert!(volume_snapshots(&client, &namespace).await.is_empty());
    assert_eq!(operator_sessions(&standby).await, 0);
}
