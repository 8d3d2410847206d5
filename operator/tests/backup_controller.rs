//! The PostgresBackup reconciler against an in-memory Kubernetes API, with the Job's
//! command run for real against a throwaway PostgreSQL and a repository on disk: a new
//! object gets its Job, the Job's report becomes the status, a failure its reason, bad
//! input a condition and nothing else, and deletion with `Delete` removes the data.

mod support;

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use kube::{Api, Client, api::PostParams};
use pgbackup::{
    api::{BackupPhase, CONDITION_FAILED, CONDITION_READY, PostgresBackup, find_condition},
    controllers::{Context, Metrics, Settings, postgres_backup},
};
use support::{
    agent::{TestRepo, pgbackup, run_ok},
    cluster::{
        NAMESPACE, begin_deletion, fake_api, finish_job, job_container, run_job, run_job_as,
        secret, stateful_set,
    },
    postgres::{PgServer, SUPERUSER},
    wal::{binary_for_cluster_user, fs_repo_for},
};

fn backup(name: &str, method: &str, policy: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
            "repository": {"volume": {"claimName": "backups"}, "serverName": "test-pg"},
            "method": method,
            "deletionPolicy": policy,
        }
    })
}

async fn get(client: &Client, name: &str) -> PostgresBackup {
    Api::<PostgresBackup>::namespaced(client.clone(), NAMESPACE)
        .get(name)
        .await
        .expect("backup object")
}

async fn reconcile(client: &Client, ctx: &Arc<Context>, name: &str) {
    postgres_backup::reconcile(Arc::new(get(client, name).await), ctx.clone())
        .await
        .expect("reconcile");
}

async fn job(client: &Client, name: &str) -> Option<Job> {
    Api::<Job>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .expect("get job")
}

fn context(client: &Client) -> Arc<Context> {
    Arc::new(Context::new(
        client.clone(),
        Settings::default(),
        Metrics::new(),
    ))
}

/// Where a Job's container would reach the test's database and repository.
fn overrides(pg: &PgServer, repo: &TestRepo<'_>) -> Vec<(&'static str, String)> {
    let mut overrides = database_overrides(pg);
    overrides.push(("PGBACKUP_REPOSITORY", repo.url()));
    overrides
}

/// Where a Job's container would reach the test's database (its repository as the Job says).
fn database_overrides(pg: &PgServer) -> Vec<(&'static str, String)> {
    vec![
        ("PGHOST", "127.0.0.1".into()),
        ("PGPORT", pg.port().to_string()),
        ("PGSSLMODE", "disable".into()),
        ("PGBACKUP_PG_BIN", pg.bin_dir().display().to_string()),
    ]
}

fn listed_ids(pg: &PgServer, repo: &TestRepo<'_>) -> Vec<String> {
    let listed: serde_json::Value =
        serde_json::from_str(&run_ok(pgbackup(pg, repo, &["list", "--json"]))).expect("json");
    listed["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["backupId"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_runs_as_a_job_reports_its_manifest_and_its_data_goes_with_it() {
    let pg = PgServer::start();
    pg.psql(
        "postgres",
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 1000);",
    );
    let repo = TestRepo::fs();
    let work = tempfile::tempdir().expect("tempdir");
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", pg.password())],
        ),
        backup("manual-1", "logical", "Delete"),
    ])
    .await;
    let ctx = context(&client);

    // Create → the Job appears, the object holds our finalizer and says Pending.
    reconcile(&client, &ctx, "manual-1").await;
    let created = job(&client, "manual-1-backup")
        .await
        .expect("the backup Job");
    let object = get(&client, "manual-1").await;
    assert!(
        object
            .metadata
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .contains(&postgres_backup::FINALIZER.to_string())
    );
    let status = object.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Pending));
    assert_eq!(status.job_name.as_deref(), Some("manual-1-backup"));

    // The Job's own command, run here, stores a real backup; it succeeds → Completed with
    // the manifest's facts.
    let (ok, message) = run_job(&client, &created, &overrides(&pg, &repo), work.path()).await;
    assert!(ok, "the Job's command must succeed: {message}");
    finish_job(&client, "manual-1-backup", true, &message).await;
    reconcile(&client, &ctx, "manual-1").await;
    let status = get(&client, "manual-1").await.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    let ids = listed_ids(&pg, &repo);
    assert_eq!(
        status.backup_id.as_ref(),
        ids.first(),
        "the status names the stored backup"
    );
    assert!(status.stored_size.expect("storedSize") > 0);
    assert!(status.databases.contains(&"postgres".to_string()));
    assert!(
        status
            .server_version
            .as_deref()
            .expect("version")
            .starts_with(
                &pg.psql("postgres", "SHOW server_version")
                    .split('.')
                    .next()
                    .expect("major")
                    .trim()
                    .to_string()
            )
    );
    let ready = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Completed")
    );
    assert!(
        ctx.metrics_text()
            .contains("pgbackup_backup_size_bytes{namespace=\"shop\",name=\"manual-1\"}")
    );

    // A second reconcile changes nothing.
    let version = get(&client, "manual-1").await.metadata.resource_version;
    reconcile(&client, &ctx, "manual-1").await;
    assert_eq!(
        get(&client, "manual-1").await.metadata.resource_version,
        version,
        "an idle reconcile writes nothing"
    );

    // Delete with deletionPolicy: Delete → a delete Job; once it ran, the data and the
    // finalizer are gone.
    let client = begin_deletion(&client, "manual-1").await;
    let ctx = context(&client);
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    reconcile(&client, &ctx, "manual-1").await;
    assert!(
        backups.get_opt("manual-1").await.expect("get").is_some(),
        "held until the data is deleted"
    );
    let delete = job(&client, "manual-1-delete")
        .await
        .expect("the delete Job");
    let args = job_container(&delete).args.expect("args");
    assert_eq!(
        args[..3],
        ["prune".to_string(), "--backup-id".into(), ids[0].clone()]
    );
    let (ok, message) = run_job(&client, &delete, &overrides(&pg, &repo), work.path()).await;
    assert!(ok, "{message}");
    assert!(
        listed_ids(&pg, &repo).is_empty(),
        "the repository data is gone"
    );
    finish_job(&client, "manual-1-delete", true, &message).await;
    reconcile(&client, &ctx, "manual-1").await;
    assert!(
        backups.get_opt("manual-1").await.expect("get").is_none(),
        "finalizer removed, object gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_fails_the_backup_with_the_agents_reason_and_retain_keeps_data() {
    let pg = PgServer::start();
    let repo = TestRepo::fs();
    let work = tempfile::tempdir().expect("tempdir");
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", "wrong password")],
        ),
        backup("manual-2", "logical", "Retain"),
    ])
    .await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "manual-2").await;
    let created = job(&client, "manual-2-backup").await.expect("job");
    let (ok, message) = run_job(&client, &created, &overrides(&pg, &repo), work.path()).await;
    assert!(!ok);
    finish_job(&client, "manual-2-backup", false, &message).await;
    reconcile(&client, &ctx, "manual-2").await;
    let status = get(&client, "manual-2").await.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    let failed = find_condition(&status.conditions, CONDITION_FAILED).expect("Failed");
    assert_eq!(failed.reason, "DatabaseLoginFailed", "{failed:?}");
    assert!(
        failed.message.contains("refused the login"),
        "{}",
        failed.message
    );
    assert!(
        !failed.message.contains("wrong password"),
        "no secret in status"
    );

    // Retain: deleting the object touches no data and starts no Job.
    let client = begin_deletion(&client, "manual-2").await;
    let ctx = context(&client);
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    reconcile(&client, &ctx, "manual-2").await;
    assert!(backups.get_opt("manual-2").await.expect("get").is_none());
    assert!(job(&client, "manual-2-delete").await.is_none());
}

#[tokio::test]
async fn bad_input_ends_in_a_condition_and_starts_nothing() {
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret("pg-auth", &[("username", "backup")]),
        backup("no-secret", "logical", "Retain"),
    ])
    .await;
    let ctx = context(&client);
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), NAMESPACE);
    let mut missing_secret: PostgresBackup =
        serde_json::from_value(backup("no-such-secret", "physical", "Retain")).expect("backup");
    missing_secret.spec.target.credentials_secret.name = "nope".into();
    backups
        .create(&PostParams::default(), &missing_secret)
        .await
        .expect("create");
    let mut missing_sts: PostgresBackup =
        serde_json::from_value(backup("no-sts", "physical", "Retain")).expect("backup");
    missing_sts.spec.target.stateful_set = "gone".into();
    backups
        .create(&PostParams::default(), &missing_sts)
        .await
        .expect("create");

    for (name, reason) in [
        ("no-secret", "SecretKeyNotFound"),
        ("no-such-secret", "SecretNotFound"),
        ("no-sts", "StatefulSetNotFound"),
    ] {
        reconcile(&client, &ctx, name).await;
        let status = get(&client, name).await.status.expect("status");
        assert_eq!(status.phase, Some(BackupPhase::Pending), "{name}");
        let ready = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason),
            "{name}"
        );
        assert!(
            job(&client, &format!("{name}-backup")).await.is_none(),
            "{name}: no Job"
        );
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
    assert!(
        jobs.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_backup_deleted_before_its_result_was_recorded_still_takes_its_data_along() {
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret("pg-auth", &[("username", "u"), ("password", "p")]),
        backup("quick", "logical", "Delete"),
    ])
    .await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "quick").await;
    let report = serde_json::json!({"backupId": "20261121T101500Z", "location": "file:///r", "manifestSha256": "00",
        "size": 1, "storedSize": 1, "serverVersion": "16.4", "beginTime": "2026-11-21T10:15:00Z", "endTime": "2026-11-21T10:15:01Z"});
    finish_job(&client, "quick-backup", true, &report.to_string()).await;
    // Deleted before any reconcile saw the Job succeed.
    let client = begin_deletion(&client, "quick").await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "quick").await;
    let delete = job(&client, "quick-delete").await.expect("the delete Job");
    let args = job_container(&delete).args.expect("args");
    assert_eq!(
        args[..3],
        [
            "prune".to_string(),
            "--backup-id".into(),
            "20261121T101500Z".into()
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_repository_fails_the_backup_with_a_reason_and_records_no_backup() {
    let pg = PgServer::start();
    let work = tempfile::tempdir().expect("tempdir");
    let closed = support::free_port();
    let mut object = backup("unreachable", "logical", "Retain");
    object["spec"]["repository"] = serde_json::json!({"s3": {
        "bucket": "backups", "endpoint": format!("http://127.0.0.1:{closed}"), "forcePathStyle": true,
        "region": "us-east-1", "credentialsSecret": {"name": "s3-keys"}}});
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", pg.password())],
        ),
        secret(
            "s3-keys",
            &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")],
        ),
        object,
    ])
    .await;
    let ctx = context(&client);
    reconcile(&client, &ctx, "unreachable").await;
    let created = job(&client, "unreachable-backup").await.expect("job");
    let (ok, message) = run_job(&client, &created, &database_overrides(&pg), work.path()).await;
    assert!(!ok, "{message}");
    finish_job(&client, "unreachable-backup", false, &message).await;
    reconcile(&client, &ctx, "unreachable").await;
    let status = get(&client, "unreachable").await.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    let failed = find_condition(&status.conditions, CONDITION_FAILED).expect("Failed");
    assert_eq!(failed.reason, "RepositoryError", "{failed:?}");
    assert!(
        failed.message.contains(&closed.to_string()) || failed.message.contains("s3://backups"),
        "{}",
        failed.message
    );
    assert!(status.backup_id.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_backup_with_verify_is_restore_tested_and_says_so() {
    let pg = PgServer::start();
    pg.psql(
        "postgres",
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 4321);",
    );
    let repo = fs_repo_for(&pg);
    let work = tempfile::tempdir().expect("tempdir");
    let key = pgbackup::repository::Keys::generate();
    let mut object = backup("checked-1", "physical", "Retain");
    object["spec"]["verify"] = serde_json::json!({"enabled": true});
    object["spec"]["repository"]["encryption"] = serde_json::json!({"secretName": "backup-key"});
    let client = fake_api(vec![
        stateful_set("postgres:16.4"),
        secret(
            "pg-auth",
            &[("username", SUPERUSER), ("password", pg.password())],
        ),
        secret("backup-key", &[("key", key.as_str())]),
        object,
    ])
    .await;
    let ctx = context(&client);
    let as_cluster_user = async |job: &Job| {
        let mut env = overrides(&pg, &repo);
        env.push(("PGBACKUP_SCRATCH_DIR", work.path().display().to_string()));
        run_job_as(
            &client,
            job,
            &env,
            work.path(),
            &binary_for_cluster_user(),
            pg.os_user(),
        )
        .await
    };

    reconcile(&client, &ctx, "checked-1").await;
    let backup_job = job(&client, "checked-1-backup").await.expect("backup Job");
    let (ok, message) = as_cluster_user(&backup_job).await;
    assert!(ok, "{message}");
    finish_job(&client, "checked-1-backup", true, &message).await;
    reconcile(&client, &ctx, "checked-1").await;
    let status = get(&client, "checked-1").await.status.expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed));
    let verified = find_condition(&status.conditions, "Verified").expect("Verified");
    assert_eq!(verified.status, "Unknown");

    // The restore test Job: the key reaches it from the Secret, it restores for real.
    let verify_job = job(&client, "checked-1-verify").await.expect("verify Job");
    let container = job_container(&verify_job);
    let key_var = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PGBACKUP_ENCRYPTION_KEY")
        .expect("the key, from its Secret");
    assert!(key_var.value.is_none() && key_var.value_from.is_some());
    let (ok, message) = as_cluster_user(&verify_job).await;
    assert!(ok, "{message}");
    finish_job(&client, "checked-1-verify", true, &message).await;
    reconcile(&client, &ctx, "checked-1").await;
    let status = get(&client, "checked-1").await.status.expect("status");
    let verified = find_condition(&status.conditions, "Verified").expect("Verified");
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("True", "RestoreTestPassed"),
        "{}",
        verified.message
    );
    assert!(
        verified.message.contains("4321 rows"),
        "{}",
        verified.message
    );
    let figures = status.verification.expect("figures");
    assert_eq!(figures.verified, Some(true));
    assert_eq!(figures.rows, Some(4321));
    assert_eq!(figures.tables, figures.matched);
    assert_eq!(figures.backup_id, status.backup_id);
}
