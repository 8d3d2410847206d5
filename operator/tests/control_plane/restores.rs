//! PointInTimeRestores under the chart's RBAC: every source kind read, a physical backup
//! restored in place and into a clone, a corrupt one rolled back, a target outside the
//! window refused before anything changes, a StatefulSet that would lose its claims
//! never scaled, and one whose replicas a GitOps self-heal sets back left untouched.

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::PersistentVolumeClaim};
use kube::{Api, Client};
use pgbackup::api::{BackupPhase, PointInTimeRestore, PostgresBackup, RestorePhase};

use crate::cluster::{
    apply_all, claim_dir, condition, connect, count, database, eventually, finished_restore, logs,
    orders_database, pod_uid, quota, ready_pod_ip, restore, wait_for,
};
use crate::resumption::kstatus;
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

#[tokio::test]
async fn restores_from_every_kind_of_source_are_read_under_the_charts_rbac() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "sources").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&client, &database(&namespace)).await;

    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let sources = [
        ("postgresBackup", "inPlace"),
        ("backupSchedule", "inPlace"),
        ("volumeSnapshotBackup", "inPlace"),
        ("postgresBackup", "clone"),
        ("backupSchedule", "clone"),
        ("volumeSnapshotBackup", "clone"),
    ];
    for (kind, mode) in sources {
        let name = format!("{}-{}", kind.to_lowercase(), mode.to_lowercase());
        let doc = restore(
            &namespace,
            serde_json::json!({"metadata": {"name": name},
                               "spec": {"source": {"backupSchedule": null, kind: "gone"}, "mode": mode}}),
        );
        apply::apply(&client, &doc, Mode::Apply)
            .await
            .expect("restore");
    }
    for (kind, mode) in sources {
        let name = format!("{}-{}", kind.to_lowercase(), mode.to_lowercase());
        let (_, reason, message) = eventually(&operator, &format!("{name} to fail"), || async {
            let restore = restores.get(&name).await.expect("restore");
            condition(&restore, "Failed").filter(|(status, ..)| status == "True")
        })
        .await;
        assert_eq!(reason, "SourceNotFound", "{name}: {message}");
    }
    let log = operator.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused a call:\n{log}"
    );
}

/// A completed physical backup `base` of `pg` into the volume repository `backups`, then
/// rows 4322..=5000 written after it: the rows a restore of `base` must take away.
pub(crate) async fn physical_backup_then_late_rows(
    client: &Client,
    namespace: &str,
    context: impl Fn() -> String,
) -> tokio_postgres::Client {
    let db = orders_database(client, namespace, &context).await;
    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "base", "namespace": namespace},
        "spec": {"method": "physical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}}},
    });
    apply::apply(client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    let phase = wait_for(240, "the physical backup to finish", &context, || async {
        let status = backups.get("base").await.ok()?.status?;
        status
            .phase
            .filter(|p| matches!(p, BackupPhase::Completed | BackupPhase::Failed))
    })
    .await;
    assert_eq!(phase, BackupPhase::Completed, "{}", context());
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");
    assert_eq!(count(&db).await, 5000);
    db
}

/// A restore `name` of backup `base` to its end, in `mode`.
pub(crate) fn restore_of_base(namespace: &str, name: &str, mode: &str) -> serde_json::Value {
    restore(
        namespace,
        serde_json::json!({"metadata": {"name": name},
            "spec": {"source": {"backupSchedule": null, "postgresBackup": "base"},
                     "target": {"dataSubPath": "pgdata"}, "mode": mode,
                     "recoveryTarget": {"time": null, "immediate": true}}}),
    )
}

#[tokio::test]
async fn a_physical_backup_restored_in_place_puts_back_the_rows_of_the_backup() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "in-place").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);

    apply::apply(
        &client,
        &restore_of_base(&namespace, "back", "inPlace"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let ready = finished_restore(&client, &namespace, "back", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup, no later ones"
    );
}

/// A name as long as a restore may have, with dots: the clone's StatefulSet and headless
/// Service still get valid names (a Service's must be a DNS-1035 label of at most 63).
const LONG_NAME: &str = "copy.of.the.orders.database.as.it.was.before.the.late.rows.came";

#[tokio::test]
async fn a_clone_with_a_long_dotted_name_runs_beside_the_untouched_database() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "clone").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = physical_backup_then_late_rows(&client, &namespace, context).await;
    let before = pod_uid(&client, &namespace, "pg-0").await;

    apply::apply(
        &client,
        &restore_of_base(&namespace, LONG_NAME, "clone"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let ready = finished_restore(&client, &namespace, LONG_NAME, context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let clone = restores
        .get(LONG_NAME)
        .await
        .expect("restore")
        .status
        .and_then(|s| s.restored_stateful_set)
        .expect("the clone's name in status");
    assert!(clone.starts_with("pg-copy-of-the-orders"), "{clone}");
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &namespace);
    assert!(
        services.get_opt(&clone).await.expect("service").is_some(),
        "the clone's headless Service {clone}"
    );
    let ip = ready_pod_ip(&client, &namespace, &format!("{clone}-0"), context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup"
    );
    assert_eq!(count(&db).await, 5000, "the original keeps its rows");
    assert_eq!(
        pod_uid(&client, &namespace, "pg-0").await,
        before,
        "the original was never stopped"
    );
}

#[tokio::test]
async fn a_clone_of_a_deleted_stateful_set_is_made_from_the_one_stored_with_its_backup() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "gone").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);

    // `helm uninstall`, or a slip: the StatefulSet goes, its claims stay.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    crate::cluster::delete(&sets, "pg").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    crate::cluster::gone(&pods, "pg-0", 120, context).await;

    apply::apply(
        &client,
        &restore_of_base(&namespace, "after-the-fall", "clone"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let ready = finished_restore(&client, &namespace, "after-the-fall", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let status = restores
        .get("after-the-fall")
        .await
        .expect("restore")
        .status
        .expect("status");
    let clone = status.restored_stateful_set.expect("the clone's name");
    let ip = ready_pod_ip(&client, &namespace, &format!("{clone}-0"), context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup, in a clone of the StatefulSet as it was stored"
    );
    assert!(
        sets.get_opt("pg").await.expect("get").is_none(),
        "the StatefulSet that was deleted is not made again"
    );
}

#[tokio::test]
async fn a_clone_the_api_server_refuses_ends_with_its_words_and_leaves_the_source_alone() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "clone-refused").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = physical_backup_then_late_rows(&client, &namespace, context).await;
    // The namespace may hold one StatefulSet: the database's.
    quota(&client, &namespace, "count/statefulsets.apps", 1, context).await;

    apply::apply(
        &client,
        &restore_of_base(&namespace, "no-room", "clone"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let (ready, reason, message) = finished_restore(&client, &namespace, "no-room", context).await;
    assert_eq!(ready, "False", "{message}");
    assert_eq!(reason, "Refused", "{message}\n{}", context());
    assert!(
        message.contains("the API server refused to create StatefulSet")
            && message.contains("exceeded quota"),
        "{message}"
    );
    assert_eq!(count(&db).await, 5000, "the source is untouched");
}

#[tokio::test]
async fn a_restore_from_a_corrupt_backup_rolls_back_to_the_data_it_replaced() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "roll-back").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claim_uid = claims.get("data-pg-0").await.expect("claim").metadata.uid;

    // Someone with write access to the repository flips a byte of the base backup.
    let data = largest_file(&claim_dir(&client, &namespace, "backups").await);
    let mut bytes = std::fs::read(&data).expect("backup data");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&data, bytes).expect("corrupt");

    apply::apply(
        &client,
        &restore_of_base(&namespace, "back", "inPlace"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let (ready, reason, message) = finished_restore(&client, &namespace, "back", context).await;
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let restore = restores.get("back").await.expect("restore");
    let phase = restore.status.as_ref().and_then(|s| s.phase);
    assert_eq!(
        (phase, ready.as_str(), reason.as_str()),
        (Some(RestorePhase::RolledBack), "False", "Corrupt"),
        "{message}\n{}",
        context()
    );
    let name = data
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        message.contains(&name) && message.contains("the old data is back"),
        "the status names the corrupt object and says the data is safe: {message}"
    );
    let failed = condition(&restore, "Failed").expect("a Failed condition");
    assert_eq!((failed.0.as_str(), failed.1.as_str()), ("True", "Corrupt"));
    assert_eq!(
        kstatus(&restore),
        "Failed",
        "kubectl wait and Flux see it failed"
    );

    // The StatefulSet runs again on its own claim with every row it had, nothing left
    // aside on the volume, no mark of the restore on the StatefulSet.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
    let marks = set.metadata.annotations.unwrap_or_default();
    assert!(
        !marks.keys().any(|k| k.starts_with("pgbackup.io")),
        "{marks:?}"
    );
    let volume = claim_dir(&client, &namespace, "data-pg-0").await;
    let aside: Vec<_> = std::fs::read_dir(volume.join("pgdata"))
        .expect("data directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".pgbackup"))
        .collect();
    assert!(aside.is_empty(), "left on the volume: {aside:?}");
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(count(&connect(&ip).await).await, 5000, "no row lost");
    assert_eq!(
        claims.get("data-pg-0").await.expect("claim").metadata.uid,
        claim_uid
    );
}

#[tokio::test]
async fn a_target_outside_the_window_fails_and_changes_nothing() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "out-of-reach").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = physical_backup_then_late_rows(&client, &namespace, context).await;
    let before = pod_uid(&client, &namespace, "pg-0").await;

    let mut doc = restore_of_base(&namespace, "back", "inPlace");
    doc["spec"]["recoveryTarget"] = serde_json::json!({"time": "2020-01-01T00:00:00Z"});
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let (ready, reason, message) = finished_restore(&client, &namespace, "back", context).await;
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let restore = restores.get("back").await.expect("restore");
    assert_eq!(
        (
            restore.status.as_ref().and_then(|s| s.phase),
            ready.as_str()
        ),
        (Some(RestorePhase::Failed), "False"),
        "{message}\n{}",
        context()
    );
    assert_eq!(reason, "TargetNotRestorable", "{message}");
    assert!(
        message.contains("2020-01-01"),
        "the message names the target: {message}"
    );
    assert_eq!(kstatus(&restore), "Failed");

    // Nothing was stopped: same pod, same session, every row.
    assert_eq!(pod_uid(&client, &namespace, "pg-0").await, before);
    assert_eq!(count(&db).await, 5000);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
}

/// The largest file under `dir`: the data of the one backup in a repository.
fn largest_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut largest = (0, None);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.len() > largest.0 {
                largest = (meta.len(), Some(entry.path()));
            }
        }
    }
    largest.1.expect("a file in the repository")
}

#[tokio::test]
async fn a_stateful_set_that_deletes_its_claims_when_scaled_is_never_scaled() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "when-scaled").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let mut objects = database(&namespace);
    objects[2]["spec"]["persistentVolumeClaimRetentionPolicy"] =
        serde_json::json!({"whenScaled": "Delete", "whenDeleted": "Retain"});
    apply_all(&client, &objects).await;
    let context = || logs(&operator);
    ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claim_uid = claims.get("data-pg-0").await.expect("claim").metadata.uid;
    let offline = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": "cold", "namespace": namespace},
        "spec": {"mode": "offline", "volumeSnapshotClassName": "local",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}},
    });
    apply::apply(&client, &offline, Mode::Apply)
        .await
        .expect("snapshot");
    let in_place = restore(
        &namespace,
        serde_json::json!({"spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": "cold"},
                                    "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &in_place, Mode::Apply)
        .await
        .expect("restore");

    let snapshots: Api<pgbackup::api::VolumeSnapshotBackup> =
        Api::namespaced(client.clone(), &namespace);
    // It waits (Pending) for the policy to change, saying what to change.
    let message = eventually(&operator, "the offline snapshot to be held", || async {
        let status = snapshots.get("cold").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "ClaimsDeletedWhenScaled").then(|| ready.message.clone())
    })
    .await;
    assert!(message.contains("set whenScaled: Retain"), "{message}");
    // The in-place restore refuses too, without waiting for its source: scaling the
    // StatefulSet would delete its claims.
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let (_, reason, _) = eventually(&operator, "the restore to fail", || async {
        let restore = restores.get("oops").await.ok()?;
        condition(&restore, "Failed").filter(|(status, ..)| status == "True")
    })
    .await;
    assert_eq!(reason, "ClaimsDeletedWhenScaled");
    // Nothing was scaled: the StatefulSet still runs its pod on the same claim.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
    assert_eq!(
        claims.get("data-pg-0").await.expect("claim").metadata.uid,
        claim_uid
    );
}

/// Argo CD's self-heal, as the cluster sees it: whenever the StatefulSet's replicas are 0,
/// they are set back to 1 (a merge patch of `spec.replicas` alone, under its own field
/// manager), until `stop`.
async fn self_heal(client: Client, namespace: String, stop: tokio_util::sync::CancellationToken) {
    let sets: Api<StatefulSet> = Api::namespaced(client, &namespace);
    let params = kube::api::PatchParams {
        field_manager: Some("argocd-controller".into()),
        ..Default::default()
    };
    let back = serde_json::json!({"spec": {"replicas": 1}});
    while !stop.is_cancelled() {
        if let Ok(sts) = sets.get("pg").await
            && sts.spec.as_ref().and_then(|s| s.replicas) == Some(0)
        {
            let _ = sets
                .patch("pg", &params, &kube::api::Patch::Merge(&back))
                .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_self_heal_that_sets_the_replicas_back_stops_the_restore_before_it_writes() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "self-heal").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);
    // The StatefulSet is Argo CD's (its tracking annotation), and its sync is not paused.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let tracked = serde_json::json!({"metadata": {"annotations": {
        "argocd.argoproj.io/tracking-id": "orders:apps/StatefulSet:default/pg"}}});
    sets.patch(
        "pg",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&tracked),
    )
    .await
    .expect("annotate");
    let stop = tokio_util::sync::CancellationToken::new();
    let healer = tokio::spawn(self_heal(client.clone(), namespace.clone(), stop.clone()));

    apply::apply(
        &client,
        &restore_of_base(&namespace, "back", "inPlace"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let ended = finished_restore(&client, &namespace, "back", context).await;
    stop.cancel();
    healer.await.expect("self-heal");
    assert_eq!(ended.1, "ReplicasSetBack", "{ended:?}\n{}", context());
    assert!(ended.2.contains("Argo CD"), "{ended:?}");
    // No restore Job was ever made, and the database has every row it had.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &namespace);
    let made: Vec<String> = jobs
        .list(&Default::default())
        .await
        .expect("jobs")
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .filter(|n| n.contains("-restore-"))
        .collect();
    assert!(made.is_empty(), "{made:?}");
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        5000,
        "the data was never touched"
    );
}
