//! PostgresBackups on the node: a logical backup and its restore test, and deletion that
//! takes the data along.

use kube::Api;
use pgbackup::api::PostgresBackup;

use crate::cluster::{
    apply_all, backup_with, claim_dir, database, logs, orders_database, ready_pod_ip, wait_for,
};
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
        (status.phase == Some(pgbackup::api::BackupPhase::Completed)).then_some(status)
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

    backups
        .delete("doomed", &Default::default())
        .await
        .expect("delete");
    wait_for(180, "the backup object to go", context, || async {
        backups
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !stored.exists(),
        "the repository still holds {}",
        stored.display()
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        120,
        "the garbage collector to remove the backup's Job",
        context,
        || async { jobs.get_opt(&job).await.ok()?.is_none().then_some(()) },
    )
    .await;
}
