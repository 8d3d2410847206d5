//! PostgresBackups on the node: a logical backup and an encrypted physical one, each
//! restore-tested by its verify Job.

use kube::Api;
use pgbackup::api::PostgresBackup;

use crate::cluster::{logs, orders_database, wait_for};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

#[tokio::test]
async fn a_logical_backup_runs_on_the_node_and_its_restore_test_passes() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "logical").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    orders_database(&client, &namespace, context).await;

    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "first", "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}},
                 "verify": {"enabled": true}},
    });
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let done = verified(&client, &namespace, "first", context).await;
    let verified = done
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .expect("Verified");
    assert_eq!(verified.status, "True", "{verified:?}\n{}", context());
    assert_eq!(done.phase, Some(pgbackup::api::BackupPhase::Completed));
    let verification = done.verification.clone().expect("verification");
    assert_eq!(
        verification.rows,
        Some(4321),
        "{verification:?}\n{}",
        context()
    );
}

/// Waits until backup `name` has a restore test result; its status.
async fn verified(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    context: impl Fn() -> String,
) -> pgbackup::api::PostgresBackupStatus {
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), namespace);
    wait_for(300, &format!("{name} to be verified"), context, || async {
        let backup = backups.get(name).await.ok()?;
        let status = backup.status.clone()?;
        let verified = status.conditions.iter().find(|c| c.type_ == "Verified")?;
        (verified.status != "Unknown").then_some(status)
    })
    .await
}

#[tokio::test]
async fn an_encrypted_physical_backup_is_restore_tested_with_its_key_from_a_secret() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "encrypted").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    orders_database(&client, &namespace, context).await;
    let key = pgbackup::repository::Keys::generate();
    let objects = serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "backup-key", "namespace": namespace},
         "stringData": {"key": key.as_str()}},
        {"apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
         "metadata": {"name": "sealed", "namespace": namespace},
         "spec": {"method": "physical",
                  "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                  "repository": {"volume": {"claimName": "backups"},
                                 "encryption": {"secretName": "backup-key"}},
                  "verify": {"enabled": true}}},
    ]);
    crate::cluster::apply_all(&client, &objects).await;
    let done = verified(&client, &namespace, "sealed", context).await;
    let verified = done
        .conditions
        .iter()
        .find(|c| c.type_ == "Verified")
        .expect("Verified");
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("True", "RestoreTestPassed"),
        "{verified:?}\n{}",
        context()
    );
    assert!(
        verified.message.contains("4321 rows"),
        "{}",
        verified.message
    );
    let figures = done.verification.clone().expect("figures");
    assert_eq!(figures.backup_id, done.backup_id);
    assert_eq!(figures.tables, figures.matched);

    // What the repository holds cannot be read without the key: an age file, no zstd.
    let stored = crate::cluster::claim_dir(&client, &namespace, "backups")
        .await
        .join(format!("{namespace}-pg/base"))
        .join(done.backup_id.expect("backup id"))
        .join("data.tar.zst");
    let bytes = std::fs::read(&stored).expect("the stored data");
    assert!(
        bytes.starts_with(b"age-encryption.org/v1"),
        "{}",
        stored.display()
    );
}
