//! The PointInTimeRestore reconciler against an in-memory Kubernetes API and a real
//! PostgreSQL whose data directory plays the StatefulSet's volume: scaling the StatefulSet
//! stops and starts the server, and every Job the operator makes runs its own command here
//! (the same agent commands the restore tests exercise). An in-place restore to a time
//! puts back the rows of that time and not later ones; a target out of reach fails
//! without touching anything.

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::PostParams};
use pgbackup::{
    api::{PointInTimeRestore, RestorePhase, find_condition},
    controllers::{Context, Metrics, Settings, point_in_time_restore},
};
use support::{
    agent::{TestRepo, run_ok},
    cluster::{
        NAMESPACE, data_claim, fake_api, finish_job, ready_pod, run_job_as, secret,
        stateful_set_with_data,
    },
    postgres::{PgServer, SUPERUSER},
    wal::{
        binary_for_cluster_user, pgbackup_as_cluster_user, server_archiving_with_wal_push,
        switch_and_wait_archived,
    },
};

/// A completed physical backup object of `backup_id`, in a volume repository.
fn backup_object(backup_id: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "nightly", "namespace": NAMESPACE},
        "spec": {
            "method": "physical",
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "repository": {"volume": {"claimName": "backups"}, "serverName": "test-pg"}
        },
        "status": {"phase": "Completed", "backupId": backup_id}
    })
}

fn restore_object(pg: &PgServer, recovery_target: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PointInTimeRestore",
        "metadata": {"name": "back", "namespace": NAMESPACE},
        "spec": {
            "target": {"statefulSet": "pg", "host": "127.0.0.1", "port": pg.port(),
                       "sslMode": "disable", "credentialsSecret": {"name": "pg-auth"}},
            "source": {"postgresBackup": "nightly"},
            "recoveryTarget": recovery_target,
            "mode": "inPlace",
            "confirm": true
        }
    })
}

async fn get(client: &Client) -> PointInTimeRestore {
    Api::<PointInTimeRestore>::namespaced(client.clone(), NAMESPACE)
        .get("back")
        .await
        .expect("restore object")
}

/// The server, its archive and a base backup; `tea` and `coffee` before the returned time,
/// `cake` after it.
fn database() -> (PgServer, TestRepo<'static>, String, String) {
    let (pg, repo) = server_archiving_with_wal_push();
    pg.psql("postgres", "CREATE TABLE orders (item text)");
    run_ok(pgbackup_as_cluster_user(
        &pg,
        &repo,
        &["backup", "--method", "physical"],
    ));
    let listed = run_ok(pgbackup_as_cluster_user(&pg, &repo, &["list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let backup_id = listed["backups"][0]["backupId"]
        .as_str()
        .expect("id")
        .to_string();
    pg.psql("postgres", "INSERT INTO orders VALUES ('tea'), ('coffee')");
    std::thread::sleep(Duration::from_millis(1100));
    let noon = pg.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO orders VALUES ('cake')");
    switch_and_wait_archived(&pg, &repo);
    (pg, repo, backup_id, noon)
}

/// The StatefulSet controller's and the kubelet's part: the server runs exactly while
/// the StatefulSet asks for a replica, and its pod says so.
async fn follow_stateful_set(client: &Client, pg: &PgServer) {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    let wanted = sts.spec.and_then(|s| s.replicas).unwrap_or(1) > 0;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    match (wanted, pg.is_running()) {
        (false, true) => {
            pg.stop();
            pods.delete("pg-0", &Default::default())
                .await
                .expect("delete pod");
        }
        (true, false) => {
            pg.start_again();
            let mut pod = ready_pod("pg", 0);
            pod["spec"]["nodeName"] = "node-a".into();
            let pod: Pod = serde_json::from_value(pod).expect("pod");
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create pod");
        }
        _ => {}
    }
}

/// The Job controller's part: each new Job of the restore runs its command, as the
/// database's OS user, with the test's data directory and repository.
/// Runs the new Jobs; with `fail_restore` the restore Job runs for real and is then
/// reported failed (its pod killed at the very end, say), so the rollback must put the
/// old data back from under a complete restore.
async fn run_jobs(
    client: &Client,
    pg: &PgServer,
    repo: &TestRepo<'_>,
    work: &Path,
    fail_restore: bool,
) -> Vec<String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let mut ran = Vec::new();
    for job in jobs.list(&Default::default()).await.expect("jobs").items {
        if job.status.is_some() {
            continue;
        }
        let overrides = vec![
            ("PGBACKUP_REPOSITORY", repo.url()),
            ("PGBACKUP_PGDATA", pg.data_dir().display().to_string()),
            ("PGBACKUP_PG_BIN", pg.bin_dir().display().to_string()),
        ];
        let (ok, message) = run_job_as(
            client,
            &job,
            &overrides,
            work,
            &binary_for_cluster_user(),
            pg.os_user(),
        )
        .await;
        let killed = fail_restore && job.name_any().starts_with("back-restore");
        let (ok, message) = match killed {
            true => (
                false,
                r#"{"reason":"PodKilled","message":"the restore pod was killed"}"#.to_string(),
            ),
            false => (ok, message),
        };
        finish_job(client, &job.name_any(), ok, &message).await;
        // Without the restore's UID tag that ends each name.
        ran.push(
            job.name_any()
                .rsplit_once('-')
                .map_or(job.name_any(), |(step, _)| step.to_string()),
        );
    }
    ran
}

async fn run_restore(client: &Client, pg: &PgServer, repo: &TestRepo<'_>) -> Vec<String> {
    run_restore_failing(client, pg, repo, false).await
}

async fn run_restore_failing(
    client: &Client,
    pg: &PgServer,
    repo: &TestRepo<'_>,
    fail_restore: bool,
) -> Vec<String> {
    let ctx = Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ));
    let work = tempfile::tempdir().expect("work");
    let mut jobs = Vec::new();
    for _ in 0..60 {
        point_in_time_restore::reconcile(Arc::new(get(client).await), ctx.clone())
            .await
            .expect("reconcile");
        let phase = get(client).await.status.and_then(|s| s.phase);
        if matches!(
            phase,
            Some(RestorePhase::Completed | RestorePhase::Failed | RestorePhase::RolledBack)
        ) {
            // The StatefulSet controller's last move: the scale the restore ended with.
            follow_stateful_set(client, pg).await;
            return jobs;
        }
        follow_stateful_set(client, pg).await;
        jobs.extend(run_jobs(client, pg, repo, work.path(), fail_restore).await);
    }
    panic!("the restore did not finish: {:?}", get(client).await.status);
}

fn cluster(pg: &PgServer, backup_id: &str, restore: serde_json::Value) -> Vec<serde_json::Value> {
    let mut pod = ready_pod("pg", 0);
    pod["spec"]["nodeName"] = "node-a".into();
    vec![
        stateful_set_with_data(1),
        pod,
        data_claim("data-pg-0"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", pg.password())],
        ),
        backup_object(backup_id),
        restore,
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_place_restore_puts_back_the_rows_of_that_time_and_not_later_ones() {
    let (pg, repo, backup_id, noon) = database();
    let client = fake_api(cluster(
        &pg,
        &backup_id,
        restore_object(&pg, serde_json::json!({"time": noon})),
    ))
    .await;
    let jobs = run_restore(&client, &pg, &repo).await;

    let status = get(&client).await.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    assert_eq!(jobs, ["back-validate", "back-restore", "back-discard"]);
    assert_eq!(status.base_backup.as_deref(), Some(backup_id.as_str()));
    assert!(
        status.reached_lsn.is_some() && status.reached_timeline == Some(2),
        "{status:?}"
    );
    let last = status.last_transaction_time.expect("last transaction").0;
    assert!(last.to_string() <= noon, "{last} after {noon}");
    assert!(pg.is_running());
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(item, ',' ORDER BY item) FROM orders"
        ),
        "coffee,tea",
        "the rows of that time, not the cake of later"
    );
    assert_eq!(pg.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    let aside: Vec<_> = std::fs::read_dir(pg.data_dir())
        .expect("data dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".pgbackup-aside")
        })
        .collect();
    assert!(
        aside.is_empty(),
        "the old data is removed once the restore is proven"
    );
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(1));
    assert!(sts.metadata.annotations.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_out_of_reach_fails_and_changes_nothing() {
    let (pg, repo, backup_id, _) = database();
    let client = fake_api(cluster(
        &pg,
        &backup_id,
        restore_object(&pg, serde_json::json!({"lsn": "FF/0"})),
    ))
    .await;
    let jobs = run_restore(&client, &pg, &repo).await;
    let restore = get(&client).await;
    let status = restore.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(jobs, ["back-validate"]);
    let ready = find_condition(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.reason, "TargetNotRestorable");
    assert!(
        ready.message.contains("FF/0") || ready.message.contains("window"),
        "{}",
        ready.message
    );
    assert!(pg.is_running(), "the database was never stopped");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "3");
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_restore_leaves_the_source_running_and_answers_with_the_old_rows() {
    let (pg, repo, backup_id, noon) = database();
    let mut restore = restore_object(&pg, serde_json::json!({"time": noon}));
    restore["spec"]["mode"] = "clone".into();
    restore["spec"]["confirm"] = false.into();
    let client = fake_api(cluster(&pg, &backup_id, restore)).await;

    // The clone's volume is a directory here; its server starts once its pod would.
    let volume = tempfile::tempdir().expect("clone volume");
    if let Some((uid, gid)) = pg.os_user() {
        std::os::unix::fs::chown(volume.path(), Some(uid), Some(gid)).expect("chown");
    }
    let clone_data = volume.path().join("pgdata");
    let mut clone: Option<PgServer> = None;
    let mut settings = Settings::default();
    let work = tempfile::tempdir().expect("work");
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for _ in 0..60 {
        let ctx = Arc::new(Context::new(
            client.clone(),
            settings.clone(),
            Metrics::new(),
        ));
        point_in_time_restore::reconcile(Arc::new(get(&client).await), ctx)
            .await
            .expect("reconcile");
        let phase = get(&client).await.status.and_then(|s| s.phase);
        if matches!(phase, Some(RestorePhase::Completed | RestorePhase::Failed)) {
            break;
        }
        for job in jobs.list(&Default::default()).await.expect("jobs").items {
            if job.status.is_some() {
                continue;
            }
            let overrides = vec![
                ("PGBACKUP_REPOSITORY", repo.url()),
                ("PGBACKUP_PGDATA", clone_data.display().to_string()),
                ("PGBACKUP_PG_BIN", pg.bin_dir().display().to_string()),
            ];
            let (ok, message) = run_job_as(
                &client,
                &job,
                &overrides,
                work.path(),
                &binary_for_cluster_user(),
                pg.os_user(),
            )
            .await;
            finish_job(&client, &job.name_any(), ok, &message).await;
        }
        let made = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
            .get_opt("pg-back")
            .await
            .expect("get clone");
        if made.is_some() && clone.is_none() {
            // The clone's pod starts on the restored volume.
            let server = PgServer::start_restored(pg.password(), pg.bin_dir(), |dir| {
                let status = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", clone_data.display()))
                    .arg(dir)
                    .status()
                    .expect("cp");
                assert!(status.success());
            });
            settings.database_addresses.insert(
                format!("pg-back-0.pg-back.{NAMESPACE}.svc"),
                format!("127.0.0.1:{}", server.port()),
            );
            let mut pod = ready_pod("pg-back", 0);
            pod["metadata"]["labels"] =
                serde_json::json!({"app": "pg-back", "pgbackup.io/restore": "back"});
            let pod: Pod = serde_json::from_value(pod).expect("pod");
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("clone pod");
            clone = Some(server);
        }
    }
    let status = get(&client).await.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    assert_eq!(status.restored_stateful_set.as_deref(), Some("pg-back"));
    assert_eq!(
        status.connection.as_deref(),
        Some("pg-back-0.pg-back.shop.svc:".to_string() + &pg.port().to_string()).as_deref()
    );
    let clone = clone.expect("the clone ran");
    assert_eq!(
        clone.psql(
            "postgres",
            "SELECT string_agg(item, ',' ORDER BY item) FROM orders"
        ),
        "coffee,tea"
    );
    // The source went on untouched.
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM orders"), "3");
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(1));
    let clone_set = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg-back")
        .await
        .expect("clone");
    let selector = clone_set
        .spec
        .expect("spec")
        .selector
        .match_labels
        .expect("selector");
    assert_eq!(
        selector["app"], "pg-back",
        "the source's Service never selects the clone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_fails_at_the_end_is_rolled_back_with_the_old_data_in_place() {
    let (pg, repo, backup_id, noon) = database();
    let client = fake_api(cluster(
        &pg,
        &backup_id,
        restore_object(&pg, serde_json::json!({"time": noon})),
    ))
    .await;
    let jobs = run_restore_failing(&client, &pg, &repo, true).await;
    let status = get(&client).await.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::RolledBack), "{status:?}");
    assert_eq!(jobs, ["back-validate", "back-restore", "back-put-back"]);
    assert!(pg.is_running(), "the StatefulSet is back up");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(item, ',' ORDER BY item) FROM orders"
        ),
        "cake,coffee,tea",
        "the data as it was before the restore, cake and all"
    );
    let aside: Vec<_> = std::fs::read_dir(pg.data_dir())
        .expect("data dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".pgbackup-aside")
        })
        .collect();
    assert!(aside.is_empty());
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE)
        .get("pg")
        .await
        .expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(1));
    assert!(sts.metadata.annotations.unwrap_or_default().is_empty());
}
