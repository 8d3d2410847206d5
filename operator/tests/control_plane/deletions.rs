//! Deleting each kind on the node: finalizers do what they must first (a backup's data
//! removed, a snapshot backup's VolumeSnapshots and record removed only when asked, an
//! archiving schedule's replication slot dropped and its backups kept, a restore under way
//! rolled back), and the garbage collector removes what each owned.

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::PersistentVolumeClaim,
};
use kube::Api;
use pgbackup::api::{
    BackupPhase, BackupSchedule, PointInTimeRestore, PostgresBackup, RestorePhase,
    VolumeSnapshotBackup,
};
use pgbackup::k8s::generated::volume_snapshot::VolumeSnapshot;

use crate::cluster::{
    apply_all, backup_with, claim_dir, connect, count, database, delete, gone, logs,
    orders_database, ready_pod_ip, wait_for,
};
use crate::restores::{physical_backup_then_late_rows, restore_of_base};
use crate::schedules::{
    archiver_streaming, archiving_schedule, completed_backup, scheduled_backups, trigger_now,
};
use crate::snapshots::{completed_snapshot, snapshot_backup};
use crate::support::{
    controlplane::{
        ControlPlane,
        apply::{self, Mode},
        operator::Operator,
        test_namespace,
    },
    s3::S3Server,
};

#[tokio::test]
async fn deleting_a_backup_with_deletion_policy_delete_removes_its_data_and_its_job() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "deletion").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&client, &database(&namespace)).await;
    let context = || logs(&operator);
    ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let mut backup = backup_with(&namespace, "doomed", "pg-auth", "username");
    backup["spec"]["deletionPolicy"] = "Delete".into();
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let status = wait_for(180, "the backup to complete", context, || async {
        let status = backups.get("doomed").await.ok()?.status?;
        (status.phase == Some(BackupPhase::Completed)).then_some(status)
    })
    .await;
    let stored = claim_dir(&client, &namespace, "backups")
        .await
        .join(format!("{namespace}-pg/logical"))
        .join(status.backup_id.expect("backup id"));
    assert!(
        stored.join("manifest.json").exists(),
        "{}",
        stored.display()
    );
    let job = status.job_name.expect("job");

    delete(&backups, "doomed").await;
    gone(&backups, "doomed", 180, context).await;
    assert!(
        !stored.exists(),
        "the repository still holds {}",
        stored.display()
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    gone(&jobs, &job, 120, context).await;
}

#[tokio::test]
async fn deleting_snapshot_backups_deletes_their_volume_snapshots_only_when_asked() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-deletion").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(orders_database(&client, &namespace, context).await);
    let mut snapshots = Vec::new();
    let mut records = Vec::new();
    let repository = claim_dir(&client, &namespace, "backups").await;
    for (name, policy) in [("kept", "Retain"), ("dropped", "Delete")] {
        let mut doc = snapshot_backup(&namespace, name, "checkpoint");
        doc["spec"]["deletionPolicy"] = policy.into();
        doc["spec"]["repository"] = serde_json::json!({"volume": {"claimName": "backups"}});
        let backup = completed_snapshot(&client, &doc, context).await;
        let status = backup.status.expect("status");
        snapshots.push(status.snapshots[0].name.clone());
        let record = repository
            .join(format!("{namespace}-pg/snapshots"))
            .join(status.backup_id.expect("recorded in the repository"));
        assert!(
            record.join("manifest.json").exists(),
            "{}",
            record.display()
        );
        records.push(record);
    }

    let backups: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
    for name in ["kept", "dropped"] {
        delete(&backups, name).await;
    }
    for name in ["kept", "dropped"] {
        gone(&backups, name, 120, context).await;
    }
    let volume_snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &namespace);
    gone(&volume_snapshots, &snapshots[1], 120, context).await;
    assert!(!records[1].exists(), "the record goes with the snapshots");
    let kept = volume_snapshots
        .get_opt(&snapshots[0])
        .await
        .expect("read the kept snapshot");
    assert!(
        kept.is_some(),
        "deletionPolicy Retain keeps the VolumeSnapshot"
    );
    assert!(records[0].exists(), "and its record");
}

#[tokio::test]
async fn deleting_an_archiving_schedule_drops_its_slot_keeps_its_backups_and_its_archiver_goes() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "schedule-deletion").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    let db = orders_database(&client, &namespace, context).await;
    apply_all(&client, &archiving_schedule(&namespace, &s3)).await;
    archiver_streaming(&client, &namespace, context).await;
    let slots = || async {
        db.query("SELECT slot_name FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .len()
    };
    assert_eq!(slots().await, 1, "the archiver streams from a slot");
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &namespace);
    let trigger = cron_jobs
        .list(&Default::default())
        .await
        .expect("cron jobs");
    assert_eq!(trigger.items.len(), 1, "the schedule's trigger CronJob");

    trigger_now(&client, &namespace, "one-run", context).await;
    let made = scheduled_backups(&client, &namespace, 1, context).await;
    let backup = made[0].metadata.name.clone().expect("name");
    completed_backup(&client, &namespace, &backup, context).await;

    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    delete(&schedules, "nightly").await;
    gone(&schedules, "nightly", 180, context).await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let kept = backups.get_opt(&backup).await.expect("read the backup");
    assert!(kept.is_some(), "the schedule's backups outlive it");
    assert_eq!(
        slots().await,
        0,
        "the slot is dropped before the schedule goes: the server keeps no WAL for it"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    gone(&deployments, "nightly-wal-archiver", 60, context).await;
    wait_for(120, "the trigger CronJob to go", context, || async {
        let left = cron_jobs.list(&Default::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_an_in_place_restore_under_way_puts_the_database_back_first() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "restore-deletion").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claim_uid = claims.get("data-pg-0").await.expect("claim").metadata.uid;

    apply::apply(
        &client,
        &restore_of_base(&namespace, "back", "inPlace"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        120,
        "the restore to take the StatefulSet",
        context,
        || async {
            let phase = restores.get("back").await.ok()?.status?.phase?;
            matches!(phase, RestorePhase::ScalingDown | RestorePhase::Restoring).then_some(())
        },
    )
    .await;
    delete(&restores, "back").await;
    gone(&restores, "back", 240, context).await;

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1), "scaled back");
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(count(&connect(&ip).await).await, 5000, "no row lost");
    assert_eq!(
        claims.get("data-pg-0").await.expect("claim").metadata.uid,
        claim_uid
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    wait_for(120, "the restore's Jobs to go", context, || async {
        let left = jobs.list(&Default::default()).await.ok()?.items;
        let names: Vec<_> = left
            .iter()
            .filter_map(|j| j.metadata.name.clone())
            .collect();
        (!names.iter().any(|n| n.starts_with("back-"))).then_some(())
    })
    .await;
}
