//! A schedule's second copy on the node: the copy's CronJob, run under the chart's RBAC,
//! copies the schedule's backup from its volume repository into another store with the
//! copy's own keys; its status says so; a copy dropped from the spec loses its CronJob and
//! keeps its data.

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pgbackup::api::BackupSchedule;

use crate::cluster::{apply_all, logs, ready_pod_ip, wait_for};
use crate::schedules::{completed_backup, run_now, scheduled_backups};
use crate::support::{
    controlplane::{ControlPlane, operator::Operator, test_namespace},
    s3::S3Server,
};

#[tokio::test]
async fn a_schedules_copy_job_copies_its_backups_into_another_store_with_its_own_keys() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "copies").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    apply_all(&admin, &crate::cluster::database(&namespace)).await;
    ready_pod_ip(&admin, &namespace, "pg-0", context).await;
    let objects = serde_json::json!([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dr-keys", "namespace": namespace},
         "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key(), "AWS_SECRET_ACCESS_KEY": s3.secret_key()}},
        {"apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
         "metadata": {"name": "nightly", "namespace": namespace},
         "spec": {"schedule": "0 3 * * *", "method": "logical",
                  "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                               "repository": {"volume": {"claimName": "backups"}}},
                  "copies": [{"name": "dr", "schedule": "0 5 * * *",
                              "s3": {"bucket": s3.bucket(), "prefix": "dr", "endpoint": s3.endpoint(),
                                     "region": "us-east-1", "forcePathStyle": true,
                                     "credentialsSecret": {"name": "dr-keys"}},
                              "retention": {"keepLast": 3}}]}},
    ]);
    apply_all(&admin, &objects).await;

    let schedules: Api<BackupSchedule> = Api::namespaced(admin.clone(), &namespace);
    let copied = |run: &'static str| {
        let schedules = schedules.clone();
        async move {
            let status = schedules.get("nightly").await.ok()?.status?;
            let copy = status.copies.into_iter().find(|c| c.name == "dr")?;
            (copy.job_name.as_deref() == Some(run)).then_some((copy, status.conditions))
        }
    };
    run_now(&admin, &namespace, "-trigger", "first-run", context).await;
    let backup = scheduled_backups(&admin, &namespace, 1, context)
        .await
        .remove(0);
    let id = completed_backup(
        &admin,
        &namespace,
        &backup.metadata.name.expect("name"),
        context,
    )
    .await;

    run_now(&admin, &namespace, "-copy-dr", "copy-1", context).await;
    let (copy, conditions) = wait_for(180, "the copy's run to be recorded", context, || {
        copied("copy-1")
    })
    .await;
    assert_eq!(copy.succeeded, Some(true), "{copy:?}\n{}", context());
    assert!(
        copy.message
            .as_deref()
            .is_some_and(|m| m.starts_with("1 backup(s) and ")),
        "{copy:?}"
    );
    assert_eq!(copy.cron_job_name.as_deref(), Some("nightly-copy-dr"));
    let condition = conditions
        .iter()
        .find(|c| c.type_ == "Copied")
        .expect("Copied");
    assert_eq!(condition.status, "True", "{condition:?}");
    let keys = s3.keys("dr/").await;
    assert!(
        keys.iter()
            .any(|k| k.contains(&id) && k.ends_with("manifest.json")),
        "the backup's manifest is in the copy: {keys:?}"
    );

    // The copy dropped from the spec: its CronJob goes, its data stays.
    schedules
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"copies": null}})),
        )
        .await
        .expect("drop the copy");
    let cron_jobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(admin.clone(), &namespace);
    wait_for(60, "the copy's CronJob to go", context, || async {
        cron_jobs
            .get_opt("nightly-copy-dr")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        cron_jobs
            .get_opt("nightly-trigger")
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(s3.keys("dr/").await, keys, "the copy's data stays");
}
