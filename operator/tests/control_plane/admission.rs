//! What the API server admits and refuses: every manifest a user is shown, the CRDs' CEL
//! rules, and the admission policy that keeps a tenant from using Secrets it may not read.

use crate::cluster::{backup_with, database, forbidden, refusal, restore};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    repository_root, test_namespace,
};

/// Every manifest a user is shown, in `namespace` when it is namespaced.
fn user_manifests() -> Vec<(String, serde_json::Value)> {
    let root = repository_root();
    let mut all = Vec::new();
    for dir in ["manifests/examples", "manifests/walkthrough"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("manifest dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("manifest");
            for doc in apply::documents(&text) {
                all.push((file.display().to_string(), doc));
            }
        }
    }
    all
}

#[tokio::test]
async fn every_example_and_walkthrough_manifest_is_admitted_by_the_api_server() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let manifests = user_manifests();
    assert!(
        manifests.len() > 10,
        "found only {} manifests",
        manifests.len()
    );
    // The namespaces they name must exist for a dry run of their objects.
    let namespaces: std::collections::BTreeSet<&str> = manifests
        .iter()
        .filter_map(|(_, doc)| doc["metadata"]["namespace"].as_str())
        .collect();
    for name in namespaces {
        let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        apply::apply(&client, &namespace, Mode::Apply)
            .await
            .expect("namespace");
    }
    let mut refused = Vec::new();
    for (file, doc) in &manifests {
        if let Err(err) = apply::apply(&client, doc, Mode::DryRun).await {
            refused.push(format!(
                "{file}: {} {}: {err}",
                doc["kind"], doc["metadata"]["name"]
            ));
        }
    }
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));
}

#[tokio::test]
async fn the_api_server_refuses_bad_specs_with_the_rules_message() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "refusals").await;

    apply::apply(
        &client,
        &restore(&namespace, serde_json::json!({})),
        Mode::DryRun,
    )
    .await
    .expect("the valid restore is admitted");
    let cases = [
        (
            serde_json::json!({"spec": {"recoveryTarget": {"lsn": "0/3000000"}}}),
            "set exactly one of recoveryTarget.time, lsn, xid, name, immediate: true or latest: true",
        ),
        (
            serde_json::json!({"spec": {"confirm": false}}),
            "mode: inPlace replaces the StatefulSet's data; set confirm: true to go ahead",
        ),
        (
            serde_json::json!({"spec": {"source": {"postgresBackup": "b"}}}),
            "set exactly one of source.postgresBackup, source.volumeSnapshotBackup or source.backupSchedule",
        ),
    ];
    for (changes, rule) in cases {
        let message = refusal(&client, &restore(&namespace, changes.clone())).await;
        assert!(message.contains(rule), "{changes}: {message}");
    }

    // A backup's spec cannot change once it exists.
    let backup = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "PostgresBackup",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {"method": "logical",
                 "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"volume": {"claimName": "backups"}}},
    });
    apply::apply(&client, &backup, Mode::Apply)
        .await
        .expect("backup");
    let mut changed = backup.clone();
    changed["spec"]["method"] = "physical".into();
    let message = refusal(&client, &changed).await;
    assert!(message.contains("cannot change"), "{message}");
}

#[tokio::test]
async fn a_tenant_cannot_make_pgbackup_use_a_secret_it_may_not_read() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin().await;
    let namespace = test_namespace(&admin, "tenant").await;
    for doc in database(&namespace)
        .as_array()
        .expect("objects")
        .iter()
        .take(1)
    {
        apply::apply(&admin, doc, Mode::Apply)
            .await
            .expect("secret");
    }
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "other-app", "namespace": namespace}, "stringData": {"token": "s3cr3t"}});
    apply::apply(&admin, &secret, Mode::Apply)
        .await
        .expect("secret");
    let client = plane.tenant(&namespace, &["pg-auth"]).await;

    // The attack: a backup whose "user name" is another application's token, so that the
    // failed login would show it. The API server refuses it before anything runs.
    let message = forbidden(
        &client,
        &backup_with(&namespace, "steal", "other-app", "token"),
        Mode::Apply,
    )
    .await;
    assert!(
        message.contains(&format!("system:serviceaccount:{namespace}:tenant may not get Secret other-app in namespace {namespace}")),
        "{message}"
    );
    let schedule = serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": namespace},
        "spec": {"schedule": "@daily", "method": "logical",
                 "template": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                              "repository": {"s3": {"bucket": "backups", "credentialsSecret": {"name": "other-app"}}}}},
    });
    let message = forbidden(&client, &schedule, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );
    // A second copy's keys are a reference as well.
    let mut copying = schedule.clone();
    copying["spec"]["template"]["repository"] =
        serde_json::json!({"volume": {"claimName": "backups"}});
    copying["spec"]["copies"] = serde_json::json!([{"name": "dr", "schedule": "@daily",
        "s3": {"bucket": "dr-bucket", "credentialsSecret": {"name": "other-app"}}}]);
    let message = forbidden(&client, &copying, Mode::Apply).await;
    assert!(
        message.contains("may not get every Secret named in spec.copies[].s3.credentialsSecret"),
        "{message}"
    );
    let restore = restore(
        &namespace,
        serde_json::json!({"spec": {"target": {"credentialsSecret": {"name": "other-app"}}}}),
    );
    let message = forbidden(&client, &restore, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );

    // Restoring a backup of another cluster is for users who may change the StatefulSet.
    let foreign = crate::cluster::restore(
        &namespace,
        serde_json::json!({"spec": {"source": {"allowOtherCluster": true}}}),
    );
    let message = forbidden(&client, &foreign, Mode::Apply).await;
    assert!(
        message.contains("may not update StatefulSet pg") && message.contains("allowOtherCluster"),
        "{message}"
    );
    apply::apply(&admin, &foreign, Mode::DryRun)
        .await
        .expect("one who may update the StatefulSet may restore another cluster's backup");

    // What the tenant may read, it may use; an update that keeps the references is fine,
    // one that points them elsewhere is checked again.
    apply::apply(
        &client,
        &backup_with(&namespace, "fine", "pg-auth", "username"),
        Mode::Apply,
    )
    .await
    .expect("a backup with the tenant's own Secret is admitted");
    let mut labelled = backup_with(&namespace, "fine", "pg-auth", "username");
    labelled["metadata"]["labels"] = serde_json::json!({"team": "shop"});
    apply::apply(&client, &labelled, Mode::Apply)
        .await
        .expect("a label");
    let mut schedule = schedule.clone();
    schedule["spec"]["template"]["repository"] =
        serde_json::json!({"volume": {"claimName": "backups"}});
    apply::apply(&client, &schedule, Mode::Apply)
        .await
        .expect("schedule");
    schedule["spec"]["template"]["target"]["credentialsSecret"]["name"] = "other-app".into();
    let message = forbidden(&client, &schedule, Mode::Apply).await;
    assert!(
        message.contains("may not get Secret other-app"),
        "{message}"
    );

    // Where the credentials go counts as much as which: a user who may edit the schedule
    // but not read its Secret may not point it at a host of their choosing.
    schedule["spec"]["template"]["target"]["credentialsSecret"]["name"] = "pg-auth".into();
    let editor = plane.tenant(&namespace, &[]).await;
    let mut relabelled = schedule.clone();
    relabelled["metadata"]["labels"] = serde_json::json!({"team": "shop"});
    apply::apply(&editor, &relabelled, Mode::Apply)
        .await
        .expect("a change that sends the credentials nowhere new");
    let mut elsewhere = relabelled.clone();
    elsewhere["spec"]["template"]["target"]["host"] = "db.attacker.example".into();
    elsewhere["spec"]["template"]["target"]["allowExternalHost"] = true.into();
    let message = forbidden(&editor, &elsewhere, Mode::Apply).await;
    assert!(message.contains("may not get Secret pg-auth"), "{message}");
}
