//! PostgresBackups that cannot succeed, on the node: a refused login and an unreachable
//! repository fail with the agent's reason (and no Secret value in status), bad input
//! leaves a condition and starts no Job, and a backup deleted while its Job runs still
//! takes its data along.

use k8s_openapi::api::batch::v1::Job;
use kube::{Api, Client};
use pgbackup::api::{BackupPhase, PostgresBackup, PostgresBackupStatus};

use crate::cluster::{
    apply_all, backup_with, claim_dir, database, delete, gone, logs, quota, ready_pod_ip, wait_for,
};
use crate::support::{
    controlplane::{
        ControlPlane,
        apply::{self, Mode},
        operator::Operator,
        test_namespace,
    },
    free_port,
};

/// Waits until backup `name` failed or completed; its status.
async fn finished(
    client: &Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> PostgresBackupStatus {
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(240, &format!("{name} to finish"), context, || async {
        let status = backups.get(name).await.ok()?.status?;
        matches!(
            status.phase,
            Some(BackupPhase::Completed | BackupPhase::Failed)
        )
        .then_some(status)
    })
    .await
}

/// The condition `type_` as `(status, reason, message)`.
fn condition(status: &PostgresBackupStatus, type_: &str) -> Option<(String, String, String)> {
    let found = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((
        found.status.clone(),
        found.reason.clone(),
        found.message.clone(),
    ))
}

/// The names of the Jobs in `namespace`.
async fn jobs(client: &Client, namespace: &str) -> Vec<String> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&Default::default()).await.expect("jobs");
    list.items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect()
}

/// A namespace with the database running and an operator for it.
async fn with_database(prefix: &str) -> (Client, String, Operator) {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, prefix).await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    apply_all(&client, &database(&namespace)).await;
    ready_pod_ip(&client, &namespace, "pg-0", || logs(&operator)).await;
    (client, namespace, operator)
}

#[tokio::test]
async fn a_refused_login_fails_the_backup_with_the_reason_and_no_secret_value() {
    let (client, namespace, operator) = with_database("login").await;
    let context = || logs(&operator);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stale", "namespace": namespace},
        "stringData": {"username": "postgres", "password": "an old password"},
    });
    apply::apply(&client, &secret, Mode::Apply)
        .await
        .expect("secret");
    let backup = backup_with(&namespace, "refused", "stale", "username");
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let status = finished(&client, &namespace, "refused", context).await;
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    let (_, reason, message) = condition(&status, "Failed").expect("Failed");
    assert_eq!(reason, "DatabaseLoginFailed", "{message}");
    assert!(message.contains("refused the login"), "{message}");
    let everything = format!("{status:?}");
    assert!(!everything.contains("an old password"), "{everything}");
    assert!(status.backup_id.is_none());

    // Retain: deleting it starts no Job and touches nothing.
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    delete(&backups, "refused").await;
    gone(&backups, "refused", 120, context).await;
    let left = jobs(&client, &namespace).await;
    assert!(
        !left.iter().any(|j| j.ends_with("-delete")),
        "no delete Job for Retain: {left:?}"
    );
}

#[tokio::test]
async fn an_unreachable_repository_fails_the_backup_and_records_nothing() {
    let (client, namespace, operator) = with_database("no-repository").await;
    let context = || logs(&operator);
    let closed = free_port();
    let objects = serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys", "namespace": namespace},
         "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}},
        {"apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
         "metadata": {"name": "nowhere", "namespace": namespace},
         "spec": {"method": "logical",
                  "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                  "repository": {"s3": {"bucket": "backups", "endpoint": format!("http://127.0.0.1:{closed}"),
                                        "forcePathStyle": true, "region": "us-east-1",
                                        "credentialsSecret": {"name": "s3-keys"}}}}},
    ]);
    apply_all(&client, &objects).await;
    let status = finished(&client, &namespace, "nowhere", context).await;
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    let (_, reason, message) = condition(&status, "Failed").expect("Failed");
    assert_eq!(reason, "RepositoryError", "{message}");
    assert!(
        message.contains(&closed.to_string()) || message.contains("s3://backups"),
        "the message says which repository: {message}"
    );
    assert!(status.backup_id.is_none());
}

#[tokio::test]
async fn bad_input_ends_in_a_condition_and_starts_nothing() {
    let (client, namespace, operator) = with_database("backup-input").await;
    let context = || logs(&operator);
    let mut no_such_secret = backup_with(&namespace, "no-such-secret", "nope", "username");
    no_such_secret["spec"]["method"] = "physical".into();
    let mut no_sts = backup_with(&namespace, "no-sts", "pg-auth", "username");
    no_sts["spec"]["target"]["statefulSet"] = "gone".into();
    // Credentials go only to the StatefulSet's pods: not to a host of one's choosing, nor
    // to a Service of the namespace that selects other pods.
    let other_service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other-app", "namespace": namespace},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 5432}]}});
    apply::apply(&client, &other_service, Mode::Apply)
        .await
        .expect("service");
    let mut elsewhere = backup_with(&namespace, "elsewhere", "pg-auth", "username");
    elsewhere["spec"]["target"]["host"] = "db.attacker.example".into();
    let mut other_app = backup_with(&namespace, "other-app", "pg-auth", "username");
    other_app["spec"]["target"]["host"] = "other-app".into();
    let mut other_pod = backup_with(&namespace, "other-pod", "pg-auth", "username");
    other_pod["spec"]["target"]["pod"] = "other-0".into();
    let cases = [
        (
            backup_with(&namespace, "no-key", "pg-auth", "user"),
            "SecretKeyNotFound",
        ),
        (no_such_secret, "SecretNotFound"),
        (no_sts, "StatefulSetNotFound"),
        (elsewhere, "HostNotOfStatefulSet"),
        (other_app, "HostNotOfStatefulSet"),
        (other_pod, "PodNotOfStatefulSet"),
    ];
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    for (doc, reason) in &cases {
        apply::apply(&client, doc, Mode::Apply)
            .await
            .expect("backup");
        let name = doc["metadata"]["name"].as_str().expect("name");
        let status = wait_for(120, &format!("{name} to be refused"), context, || async {
            let status = backups.get(name).await.ok()?.status?;
            let (_, found, _) = condition(&status, "Ready")?;
            (found == *reason).then_some(status)
        })
        .await;
        assert_eq!(status.phase, Some(BackupPhase::Pending), "{name}");
    }
    assert_eq!(jobs(&client, &namespace).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_backup_deleted_while_its_job_runs_still_takes_its_data_along() {
    let (client, namespace, operator) = with_database("deleted-early").await;
    let context = || logs(&operator);
    // Enough rows that the dump is still running when the object is deleted (a backup
    // that ends in the very instant of the delete is a known limit, docs/known-limits.md).
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    crate::cluster::connect(&ip)
        .await
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) || md5(random()::text) AS t \
             FROM generate_series(1, 1000000) g",
        )
        .await
        .expect("rows");
    let mut backup = backup_with(&namespace, "quick", "pg-auth", "username");
    backup["spec"]["deletionPolicy"] = "Delete".into();
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    wait_for(120, "the backup Job", context, || async {
        jobs(&client, &namespace)
            .await
            .iter()
            .any(|j| j == "quick-backup")
            .then_some(())
    })
    .await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    delete(&backups, "quick").await;
    gone(&backups, "quick", 240, context).await;
    let logical = claim_dir(&client, &namespace, "backups")
        .await
        .join(format!("{namespace}-pg/logical"));
    let left: Vec<_> = std::fs::read_dir(&logical)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the repository still holds {left:?}");
}

#[tokio::test]
async fn a_backup_whose_pod_is_refused_fails_with_the_api_servers_words_and_never_runs_later() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "no-pod").await;
    let operator =
        Operator::start_with(plane, &namespace, &namespace, &["--pod-start-timeout=10"]).await;
    let context = || logs(&operator);
    apply_all(&client, &database(&namespace)).await;
    ready_pod_ip(&client, &namespace, "pg-0", context).await;
    // The database's pod is all the namespace's quota allows.
    quota(&client, &namespace, "pods", 1, context).await;

    apply::apply(
        &client,
        &backup_with(&namespace, "no-room", "pg-auth", "username"),
        Mode::Apply,
    )
    .await
    .expect("backup");
    let status = finished(&client, &namespace, "no-room", context).await;
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    let (_, reason, message) = condition(&status, "Failed").expect("Failed");
    assert_eq!(reason, "PodNotCreated", "{message}");
    assert!(
        message.contains("exceeded quota"),
        "the API server's words: {message}"
    );

    // The Job is finished (a CronJob behind it would move on) and, once there is room
    // again, makes no pod: the backup does not run after it was reported failed.
    let job_name = status.job_name.clone().expect("the Job's name");
    let job_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    wait_for(60, "the Job to be failed", context, || async {
        let conditions = job_api.get(&job_name).await.ok()?.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True")
            .then_some(())
    })
    .await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), &namespace);
    quotas
        .delete("limit", &Default::default())
        .await
        .expect("quota gone");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    let made = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("batch.kubernetes.io/job-name={job_name}")),
        )
        .await
        .expect("pods");
    assert!(
        made.items.is_empty(),
        "a pod ran after the failure: {made:?}"
    );
}

#[tokio::test]
async fn agents_run_under_the_repositorys_service_account_once_its_owner_lends_it() {
    let (client, namespace, operator) = with_database("agent-identity").await;
    let context = || logs(&operator);
    let s3 = crate::support::s3::S3Server::start().await;
    let keys = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-keys", "namespace": namespace},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key(), "AWS_SECRET_ACCESS_KEY": s3.secret_key()}});
    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "with-identity", "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"s3": {"bucket": s3.bucket(), "endpoint": s3.endpoint(),
                                       "region": "us-east-1", "forcePathStyle": true,
                                       "credentialsSecret": {"name": "s3-keys"},
                                       "serviceAccountName": "backup-writer"}}},
    });
    apply_all(&client, &serde_json::json!([keys, backup])).await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let refused = |reason: &'static str| {
        let backups = backups.clone();
        async move {
            let status = backups.get("with-identity").await.ok()?.status?;
            let (_, found, message) = condition(&status, "Ready")?;
            (found == reason).then_some(message)
        }
    };
    wait_for(120, "ServiceAccountNotFound", context, || {
        refused("ServiceAccountNotFound")
    })
    .await;

    // An account the backup object names is not lent by that alone: its owner labels it.
    let account = |labels: serde_json::Value| {
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "backup-writer", "namespace": namespace, "labels": labels}})
    };
    apply::apply(&client, &account(serde_json::json!({})), Mode::Apply)
        .await
        .expect("service account");
    let message = wait_for(120, "ServiceAccountNotAllowed", context, || {
        refused("ServiceAccountNotAllowed")
    })
    .await;
    assert!(message.contains("pgbackup.io/agent-identity"), "{message}");
    assert_eq!(jobs(&client, &namespace).await, Vec::<String>::new());

    apply::apply(
        &client,
        &account(serde_json::json!({"pgbackup.io/agent-identity": "true"})),
        Mode::Apply,
    )
    .await
    .expect("service account");
    let status = finished(&client, &namespace, "with-identity", context).await;
    assert_eq!(
        status.phase,
        Some(BackupPhase::Completed),
        "{status:?}\n{}",
        context()
    );
    let job_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = job_api.get("with-identity-backup").await.expect("job");
    let pod = job.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("backup-writer"));
    assert_eq!(pod.automount_service_account_token, Some(false));
}
