//! The VolumeSnapshotBackup reconciler against an in-memory Kubernetes API and a real
//! PostgreSQL: the operator holds backup mode on its own session while the (simulated)
//! CSI driver cuts the snapshot — a copy of the running server's data directory — and the
//! label it keeps restores that copy to a consistent server. Offline snapshots scale the
//! StatefulSet to 0 and back, also when the deadline passes or the object is deleted
//! half-way; bad input leaves a condition and touches nothing.

mod support;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, Client, ResourceExt};
use pgbackup::{
    api::{BackupPhase, CONDITION_READY, VolumeSnapshotBackup, find_condition},
    controllers::{Context, Metrics, Settings, volume_snapshot_backup},
    k8s::generated::volume_snapshot::VolumeSnapshot,
};
use support::{
    agent::{TestRepo, pgbackup, run_ok},
    cluster::{
        NAMESPACE, begin_deletion_of, cut_snapshot, data_claim, fake_api, finish_job,
        follow_replicas, ready_pod, run_job, secret, snapshot_class, stateful_set_with_data,
    },
    postgres::{PgConfig, PgServer, SUPERUSER},
    snapshot::{archive_dir, archiving_into, restore_snapshot, snapshot, standby_of},
};

fn backup(
    name: &str,
    mode: &str,
    target: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "target": target,
        "volumeSnapshotClassName": "csi-snap",
        "mode": mode,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": format!("uid-{name}")},
        "spec": spec,
    })
}

/// The target: the test server on loopback.
fn local_target(pg: &PgServer) -> serde_json::Value {
    serde_json::json!({
        "statefulSet": "pg", "host": "127.0.0.1", "port": pg.port(), "sslMode": "disable",
        "credentialsSecret": {"name": "pg-auth"},
    })
}

/// The objects of a cluster running `pg` with `replicas`: StatefulSet, pods, claim,
/// credentials, snapshot class.
fn cluster(replicas: i32, password: &str) -> Vec<serde_json::Value> {
    let mut objects = vec![
        stateful_set_with_data(replicas),
        data_claim("data-pg-0"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", password)],
        ),
        snapshot_class("csi-snap"),
    ];
    objects.extend((0..replicas).map(|i| ready_pod("pg", i)));
    objects
}

fn context(client: &Client) -> Arc<Context> {
    Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ))
}

async fn get(client: &Client, name: &str) -> VolumeSnapshotBackup {
    Api::<VolumeSnapshotBackup>::namespaced(client.clone(), NAMESPACE)
        .get(name)
        .await
        .expect("backup object")
}

async fn reconcile(client: &Client, ctx: &Arc<Context>, name: &str) {
    volume_snapshot_backup::reconcile(Arc::new(get(client, name).await), ctx.clone())
        .await
        .expect("reconcile");
}

fn phase(backup: &VolumeSnapshotBackup) -> Option<BackupPhase> {
    backup.status.as_ref().and_then(|s| s.phase)
}

fn ready_reason(backup: &VolumeSnapshotBackup) -> Option<(String, String)> {
    let status = backup.status.as_ref()?;
    find_condition(&status.conditions, CONDITION_READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn snapshots(client: &Client) -> Vec<VolumeSnapshot> {
    Api::<VolumeSnapshot>::namespaced(client.clone(), NAMESPACE)
        .list(&Default::default())
        .await
        .expect("snapshots")
        .items
}

async fn replicas(
    client: &Client,
) -> (
    Option<i32>,
    Option<std::collections::BTreeMap<String, String>>,
) {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    (
        sts.spec.and_then(|s| s.replicas),
        sts.metadata.annotations.filter(|a| !a.is_empty()),
    )
}

/// Reconciles an offline backup, the StatefulSet's pods following, until its snapshot is
/// made.
async fn until_snapshot_made(client: &Client, ctx: &Arc<Context>) {
    for _ in 0..10 {
        reconcile(client, ctx, "snap").await;
        follow_replicas(client, "pg").await;
        if !snapshots(client).await.is_empty() {
            return;
        }
    }
    panic!(
        "no snapshot was made: {:?}",
        get(client, "snap").await.status
    );
}

/// Reconciles until the backup reaches `phase` (each look after a short pause, while the
/// operator's session works).
async fn reconcile_until_phase(
    client: &Client,
    ctx: &Arc<Context>,
    phase: BackupPhase,
) -> VolumeSnapshotBackup {
    for _ in 0..200 {
        reconcile(client, ctx, "snap").await;
        let backup = get(client, "snap").await;
        if self::phase(&backup) == Some(phase) {
            return backup;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never {phase:?}: {:?}", get(client, "snap").await.status);
}

/// The storage's part for the one snapshot of a backup: cut it, and once cut, make it
/// ready.
async fn storage_works(client: &Client) {
    if let [taken] = snapshots(client).await.as_slice() {
        let cut = taken
            .status
            .as_ref()
            .is_some_and(|s| s.creation_time.is_some());
        cut_snapshot(client, &taken.name_any(), cut).await;
    }
}

/// Connections of the operator's sessions still open on the server.
fn operator_sessions(pg: &PgServer) -> String {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbackup'",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_online_snapshot_taken_through_the_controller_restores() {
    let archive = archive_dir();
    let pg = PgServer::start_with(PgConfig {
        settings: archiving_into(archive.path()),
        ..PgConfig::default()
    });
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    let mut objects = cluster(1, pg.password());
    objects.push(backup(
        "snap",
        "online",
        local_target(&pg),
        serde_json::json!({}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    let staging = tempfile::tempdir().expect("tempdir");

    let mut cut = false;
    for _ in 0..100 {
        reconcile(&client, &ctx, "snap").await;
        let backup = get(&client, "snap").await;
        if phase(&backup) == Some(BackupPhase::Completed) {
            break;
        }
        if let [taken] = snapshots(&client).await.as_slice() {
            if !cut {
                assert_eq!(
                    taken.spec.source.persistent_volume_claim_name.as_deref(),
                    Some("data-pg-0")
                );
                assert_eq!(
                    taken.spec.volume_snapshot_class_name.as_deref(),
                    Some("csi-snap")
                );
                assert_eq!(
                    operator_sessions(&pg),
                    "1",
                    "backup mode is held on a session"
                );
                // Work goes on while the storage cuts the snapshot, and after it.
                pg.psql(
                    "postgres",
                    "INSERT INTO t SELECT generate_series(1001, 2000)",
                );
                snapshot(&pg.data_dir(), staging.path());
                cut_snapshot(&client, &taken.name_any(), false).await;
                pg.psql(
                    "postgres",
                    "INSERT INTO t SELECT generate_series(2001, 3000)",
                );
                cut = true;
            } else if backup
                .status
                .as_ref()
                .and_then(|s| s.backup_label.as_ref())
                .is_some()
            {
                cut_snapshot(&client, &taken.name_any(), true).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backup = get(&client, "snap").await;
    assert_eq!(
        phase(&backup),
        Some(BackupPhase::Completed),
        "{:?}",
        backup.status
    );
    assert_eq!(
        ready_reason(&backup),
        Some(("True".into(), "Completed".into()))
    );
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT generate_series(3001, 4000)",
    );
    let status = backup.status.expect("status");
    assert!(status.snapshots[0].ready_to_use);
    assert_eq!(status.timeline, Some(1));
    let label = status.backup_label.expect("backup label in status");
    assert!(label.contains("LABEL: pgbackup shop/snap"), "{label}");
    let annotated = &snapshots(&client).await[0];
    assert_eq!(
        annotated.annotations().get("pgbackup.io/backup-label"),
        Some(&label),
        "the label travels with the snapshot"
    );
    assert_eq!(operator_sessions(&pg), "0", "the session is closed");

    // The snapshot plus its label restores: what was committed before backup mode ended.
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let end = status.end_lsn.expect("end LSN");
    let end = pgbackup::postgres::parse_lsn(&end).expect("LSN");
    support::snapshot::wait_for_archived(
        archive.path(),
        &pgbackup::postgres::lsn_to_wal_file(1, end, 16 * 1024 * 1024),
    );
    let restored = restore_snapshot(&pg, staging.path(), &label, archive.path());
    assert_eq!(
        restored.psql("postgres", "SELECT count(*), max(id) FROM t"),
        "3000|3000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_target_fails_as_not_primary_without_snapshots() {
    let pg = PgServer::start();
    let standby = standby_of(&pg);
    let mut objects = cluster(1, standby.password());
    objects.push(backup(
        "snap",
        "online",
        local_target(&standby),
        serde_json::json!({}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    reconcile_until_phase(&client, &ctx, BackupPhase::Failed).await;
    let backup = get(&client, "snap").await;
    assert_eq!(
        ready_reason(&backup),
        Some(("False".into(), "NotPrimary".into()))
    );
    assert!(snapshots(&client).await.is_empty());
    assert_eq!(operator_sessions(&standby), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_retried_then_fails_without_snapshots() {
    let port = support::free_port();
    let mut objects = cluster(1, "secret");
    let target = serde_json::json!({
        "statefulSet": "pg", "host": "127.0.0.1", "port": port, "sslMode": "disable",
        "credentialsSecret": {"name": "pg-auth"},
    });
    objects.push(backup("snap", "checkpoint", target, serde_json::json!({})));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    reconcile_until_phase(&client, &ctx, BackupPhase::Failed).await;
    let backup = get(&client, "snap").await;
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    assert_eq!(status.attempt, Some(3));
    assert_eq!(
        ready_reason(&backup),
        Some(("False".into(), "DatabaseUnreachable".into()))
    );
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains(&format!("127.0.0.1:{port}"))
    );
    assert!(snapshots(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_snapshot_scales_to_zero_and_back() {
    let mut objects = cluster(3, "unused");
    objects.push(backup(
        "snap",
        "offline",
        serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}),
        serde_json::json!({"deletionPolicy": "Delete"}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);

    // The count to go back to is written first, then the StatefulSet is scaled.
    reconcile(&client, &ctx, "snap").await;
    assert_eq!(replicas(&client).await.0, Some(3));
    reconcile(&client, &ctx, "snap").await;
    let (count, annotations) = replicas(&client).await;
    assert_eq!(count, Some(0));
    let annotations = annotations.expect("recorded");
    assert_eq!(annotations["pgbackup.io/original-replicas"], "3");
    assert_eq!(
        annotations["pgbackup.io/scaled-down-by"],
        "VolumeSnapshotBackup/snap"
    );
    // The pods have not stopped yet: no snapshot of a running database's volume.
    reconcile(&client, &ctx, "snap").await;
    assert!(snapshots(&client).await.is_empty());

    follow_replicas(&client, "pg").await;
    reconcile(&client, &ctx, "snap").await;
    let taken = snapshots(&client).await;
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0]
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].name.clone()),
        Some("snap".into()),
        "deletionPolicy Delete: owned by the backup"
    );
    cut_snapshot(&client, "snap-data", false).await;
    reconcile(&client, &ctx, "snap").await;
    assert_eq!(
        replicas(&client).await,
        (Some(3), None),
        "scaled back once cut"
    );
    cut_snapshot(&client, "snap-data", true).await;
    reconcile(&client, &ctx, "snap").await;
    assert_eq!(
        phase(&get(&client, "snap").await),
        Some(BackupPhase::Completed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_snapshot_past_its_deadline_puts_the_stateful_set_back() {
    let mut objects = cluster(2, "unused");
    objects.push(backup(
        "snap",
        "offline",
        serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}),
        serde_json::json!({"deadline": "1s"}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    until_snapshot_made(&client, &ctx).await;
    // The storage never cuts it: the deadline passes.
    reconcile_until_phase(&client, &ctx, BackupPhase::Failed).await;
    let backup = get(&client, "snap").await;
    assert_eq!(
        phase(&backup),
        Some(BackupPhase::Failed),
        "{:?}",
        backup.status
    );
    assert_eq!(
        ready_reason(&backup),
        Some(("False".into(), "DeadlineExceeded".into()))
    );
    assert_eq!(replicas(&client).await, (Some(2), None));
    assert!(
        snapshots(&client).await.is_empty(),
        "the half-made snapshot is deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_offline_snapshot_half_way_puts_the_stateful_set_back() {
    let mut objects = cluster(2, "unused");
    objects.push(backup(
        "snap",
        "offline",
        serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}}),
        serde_json::json!({}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    until_snapshot_made(&client, &ctx).await;
    assert_eq!(replicas(&client).await.0, Some(0));

    let client = begin_deletion_of(&client, "VolumeSnapshotBackup", "snap").await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "snap").await;
    assert_eq!(replicas(&client).await, (Some(2), None));
    assert!(
        snapshots(&client).await.is_empty(),
        "Retain keeps only finished snapshots"
    );
    let gone = Api::<VolumeSnapshotBackup>::namespaced(client.clone(), NAMESPACE)
        .get_opt("snap")
        .await
        .expect("get");
    assert!(gone.is_none(), "the finalizer is released: {gone:?}");
}

/// Bad input through the API: a condition naming the problem; the StatefulSet untouched,
/// no snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_changes_nothing() {
    let target = serde_json::json!({"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}});
    let cases = [
        (
            "VolumeSnapshotClassNotFound",
            serde_json::json!({"volumeSnapshotClassName": "gone"}),
        ),
        (
            "ClaimTemplateNotFound",
            serde_json::json!({"includeVolumes": ["wal"]}),
        ),
    ];
    for (reason, extra) in cases {
        let mut objects = cluster(2, "unused");
        objects.push(backup("snap", "offline", target.clone(), extra));
        let client = fake_api(objects).await;
        let ctx = context(&client);
        reconcile(&client, &ctx, "snap").await;
        let backup = get(&client, "snap").await;
        assert_eq!(phase(&backup), Some(BackupPhase::Pending), "{reason}");
        assert_eq!(ready_reason(&backup), Some(("False".into(), reason.into())));
        assert_eq!(replicas(&client).await, (Some(2), None), "{reason}");
        assert!(snapshots(&client).await.is_empty(), "{reason}");
    }
    // A pod that is not ready: online snapshots wait.
    let mut objects = cluster(1, "unused");
    objects.retain(|o| o["kind"] != "Pod");
    let mut not_ready = ready_pod("pg", 0);
    not_ready["status"]["conditions"][0]["status"] = "False".into();
    objects.push(not_ready);
    objects.push(backup("snap", "online", target, serde_json::json!({})));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "snap").await;
    reconcile(&client, &ctx, "snap").await;
    let backup = get(&client, "snap").await;
    assert_eq!(
        ready_reason(&backup),
        Some(("False".into(), "PodNotReady".into()))
    );
    assert!(snapshots(&client).await.is_empty());
    assert_eq!(
        ctx.sessions.state("uid-snap"),
        pgbackup::controllers::volume_snapshot_backup::session::SessionState::Absent,
        "no session was opened"
    );
}

/// The Job `name`, once the operator made it.
async fn job(client: &Client, name: &str) -> Option<k8s_openapi::api::batch::v1::Job> {
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .expect("get job")
}

/// What `pgbackup list --json` shows of the repository.
fn listed(pg: &PgServer, repo: &TestRepo<'_>) -> Vec<serde_json::Value> {
    let out = run_ok(pgbackup(
        pg,
        repo,
        &["list", "--json", "--server", "test-pg"],
    ));
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    listed["backups"].as_array().expect("backups").clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_snapshot_is_listed_and_forgotten_with_its_object() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let work = tempfile::tempdir().expect("work dir");
    let overrides = vec![("PGBACKUP_REPOSITORY", repo.url())];
    let mut objects = cluster(1, pg.password());
    objects.push(backup(
        "snap",
        "checkpoint",
        local_target(&pg),
        serde_json::json!({
            "deletionPolicy": "Delete",
            "repository": {"volume": {"claimName": "backups"}, "serverName": "test-pg"},
        }),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    for _ in 0..100 {
        reconcile(&client, &ctx, "snap").await;
        let backup = get(&client, "snap").await;
        if phase(&backup) == Some(BackupPhase::Completed) {
            break;
        }
        storage_works(&client).await;
        if let Some(record) = job(&client, "snap-record").await
            && record.status.is_none()
        {
            let (ok, message) = run_job(&client, &record, &overrides, work.path()).await;
            assert!(ok, "the record Job's command must succeed: {message}");
            finish_job(&client, "snap-record", true, &message).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = get(&client, "snap").await.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    let backup_id = status.backup_id.clone().expect("recorded");
    let backups = listed(&pg, &repo);
    assert_eq!(backups.len(), 1);
    let entry = &backups[0];
    assert_eq!(entry["backupId"], backup_id.as_str());
    assert_eq!(entry["kind"], "snapshot");
    let manifest = &entry["manifest"];
    assert_eq!(
        manifest["beginLsn"],
        status.begin_lsn.clone().expect("LSN").as_str()
    );
    assert_eq!(
        manifest["snapshot"]["volumeSnapshots"][0]["name"],
        "snap-data"
    );
    assert_eq!(manifest["snapshot"]["mode"], "checkpoint");
    assert_eq!(
        manifest["serverVersionNum"].as_u64(),
        Some(u64::from(
            pg.psql("postgres", "SHOW server_version_num")
                .parse::<u32>()
                .expect("num")
        ))
    );

    // Deleted with deletionPolicy Delete: the snapshots go, and so does the record.
    let client = begin_deletion_of(&client, "VolumeSnapshotBackup", "snap").await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "snap").await;
    assert!(snapshots(&client).await.is_empty());
    let forget = job(&client, "snap-forget").await.expect("forget Job");
    let (ok, message) = run_job(&client, &forget, &overrides, work.path()).await;
    assert!(ok, "{message}");
    assert!(listed(&pg, &repo).is_empty(), "the record is gone");
    finish_job(&client, "snap-forget", true, &message).await;
    reconcile(&client, &ctx, "snap").await;
    let gone = Api::<VolumeSnapshotBackup>::namespaced(client.clone(), NAMESPACE)
        .get_opt("snap")
        .await
        .expect("get");
    assert!(gone.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_restart_mid_snapshot_rolls_back_and_tries_again() {
    let pg = PgServer::start();
    let mut objects = cluster(1, pg.password());
    objects.push(backup(
        "snap",
        "online",
        local_target(&pg),
        serde_json::json!({}),
    ));
    let client = fake_api(objects).await;
    let ctx = context(&client);
    for _ in 0..100 {
        reconcile(&client, &ctx, "snap").await;
        if !snapshots(&client).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(operator_sessions(&pg), "1", "backup mode is held");

    // The operator dies: its connection closes with it; a new one starts without sessions.
    ctx.sessions.end("uid-snap");
    let ctx = context(&client);
    let mut seen_rollback = false;
    for _ in 0..200 {
        reconcile(&client, &ctx, "snap").await;
        let backup = get(&client, "snap").await;
        let status = backup.status.clone().unwrap_or_default();
        seen_rollback |= status.failure_reason.as_deref() == Some("SessionLost");
        if status.phase == Some(BackupPhase::Completed) {
            break;
        }
        if status.attempt == Some(2) {
            storage_works(&client).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = get(&client, "snap").await.status.expect("status");
    assert!(seen_rollback, "the lost session was reported");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert_eq!(status.attempt, Some(2));
    assert!(status.backup_label.is_some());
    assert_eq!(operator_sessions(&pg), "0");
}
