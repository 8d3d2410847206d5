//! PostgresBackups on the node: a logical backup and its restore test.

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
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    let done = wait_for(240, "the backup to be verified", context, || async {
        let backup = backups.get("first").await.ok()?;
        let status = backup.status.clone()?;
        let verified = status.conditions.iter().find(|c| c.type_ == "Verified")?;
        (verified.status != "Unknown").then_some(status)
    })
    .await;
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
