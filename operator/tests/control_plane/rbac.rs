//! The chart's rules (`charts/pgbackup/files/operator-rules.yaml`) are the least the
//! operator needs: one operator takes every path that needs a distinct permission (a
//! schedule with archiving and a restore test, an online and an offline snapshot, a clone
//! from a snapshot, a snapshot deleted with its VolumeSnapshots, archiving turned off),
//! and the API server asks RBAC about every rule for it (its authorization checks,
//! recorded as it makes them, including those made inside a request: the `create` of a
//! first server-side apply, admission's `update` on an owner's finalizers), or the
//! operator grants the rule in a Role it makes. That no call is refused is checked for
//! every test when its operator stops.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    core::v1::Secret,
    events::v1::Event,
    rbac::v1::{PolicyRule, Role},
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pgbackup::api::{BackupPhase, BackupSchedule, PostgresBackup, VolumeSnapshotBackup};

use crate::cluster::{
    apply_all, backup_with, delete, finished_restore, gone, logs, orders_database, quota, restore,
    wait_for,
};
use crate::schedules::{archiver_streaming, archiving_schedule, completed_backup};
use crate::snapshots::{completed_snapshot, snapshot_backup};
use crate::support::{
    controlplane::{ControlPlane, apply, operator::Operator, test_namespace},
    s3::S3Server,
};

type Call = (String, String, String);

fn call(group: &str, resource: &str, verb: &str) -> Call {
    (group.into(), resource.into(), verb.into())
}

/// Every `(group, resource, verb)` that `rules` grant.
fn granted(rules: &[PolicyRule]) -> BTreeSet<Call> {
    let mut calls = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    calls.insert(call(group, resource, verb));
                }
            }
        }
    }
    calls
}

fn chart_rules() -> Vec<PolicyRule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/pgbackup/files/operator-rules.yaml"
    );
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("rules file")).expect("rules")
}

/// What the operator granted in the Roles it made: RBAC lets it grant only what it holds,
/// a check made apart from the authorizers.
async fn granted_in_roles(client: &kube::Client, namespace: &str) -> BTreeSet<Call> {
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    let made = roles.list(&Default::default()).await.expect("roles");
    made.items
        .iter()
        .filter(|role| {
            role.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.api_version.starts_with("pgbackup.io/"))
        })
        .flat_map(|role| granted(role.rules.as_deref().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn every_rule_of_the_chart_is_used() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "rbac").await;
    let operator =
        Operator::start_with(plane, &namespace, &namespace, &["--pod-start-timeout=10"]).await;
    let context = || logs(&operator);
    let s3 = S3Server::start().await;
    orders_database(&client, &namespace, context).await;
    let mut objects = archiving_schedule(&namespace, &s3);
    objects[1]["spec"]["verify"] = serde_json::json!({"schedule": "0 5 * * 0"});
    apply_all(&client, &objects).await;
    archiver_streaming(&client, &namespace, context).await;
    // Through the database's Service, whose selector is read before credentials go there.
    let mut logical = backup_with(&namespace, "logical", "pg-auth", "username");
    logical["spec"]["target"]["host"] = "pg-headless".into();
    apply_all(&client, &serde_json::json!([logical])).await;
    completed_backup(&client, &namespace, "logical", context).await;
    // Read as a restore's source, and refused: a logical backup has no WAL to replay.
    let wrong = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "from-logical"},
            "spec": {"source": {"backupSchedule": null, "postgresBackup": "logical"}}}),
    );
    apply::apply(&client, &wrong, apply::Mode::Apply)
        .await
        .expect("restore");
    let refused = finished_restore(&client, &namespace, "from-logical", context).await;
    assert!(refused.2.contains("is a logical backup"), "{refused:?}");

    // An online snapshot recorded in the schedule's repository, cloned; an offline one,
    // restored in place.
    let mut online = snapshot_backup(&namespace, "online", "online");
    online["spec"]["repository"] = objects[1]["spec"]["template"]["repository"].clone();
    completed_snapshot(&client, &online, context).await;
    let drill = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "drill"},
            "spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": "online"},
                     "target": {"dataSubPath": "pgdata"}, "mode": "clone", "confirm": false,
                     "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &drill, apply::Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(&client, &namespace, "drill", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let mut offline = snapshot_backup(&namespace, "offline", "offline");
    offline["spec"]["deletionPolicy"] = "Delete".into();
    completed_snapshot(&client, &offline, context).await;
    // Restored in place: the claim replaced, its volume kept (read and patched).
    let back = restore(
        &namespace,
        serde_json::json!({"metadata": {"name": "back"},
            "spec": {"source": {"backupSchedule": null, "volumeSnapshotBackup": "offline"},
                     "target": {"dataSubPath": "pgdata"}, "mode": "inPlace", "confirm": true,
                     "recoveryTarget": {"time": null, "immediate": true}}}),
    );
    apply::apply(&client, &back, apply::Mode::Apply)
        .await
        .expect("restore");
    let ready = finished_restore(&client, &namespace, "back", context).await;
    assert_eq!(ready.0, "True", "{ready:?}\n{}", context());
    let snapshots: Api<VolumeSnapshotBackup> = Api::namespaced(client.clone(), &namespace);
    delete(&snapshots, "offline").await;
    gone(&snapshots, "offline", 120, context).await;

    // No restore test and no archiving any more: the CronJob, the archiver and the slot go.
    // The Job that drops the slot cannot be made at first (its Secret is gone): its
    // Warning repeats as one Event whose count goes up.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut secret = secrets.get("pg-auth").await.expect("secret");
    delete(&secrets, "pg-auth").await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({"spec": {"verify": null, "walArchiving": {"enabled": false}}});
    schedules
        .patch("nightly", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("archiving off");
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        150,
        "the repeated Warning to be counted",
        context,
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("nightly")
                        && e.type_.as_deref() == Some("Warning")
                        && e.series.as_ref().is_some_and(|s| s.count >= 2)
                })
                .then_some(())
        },
    )
    .await;
    secret.metadata = kube::api::ObjectMeta {
        name: secret.metadata.name.take(),
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("secret back");
    wait_for(180, "the slot to be let go", context, || async {
        let schedule = schedules.get("nightly").await.ok()?;
        let held = schedule
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "pgbackup.io/wal-slot");
        (!held).then_some(())
    })
    .await;

    // A backup whose pod the namespace's quota refuses: stopped, with the refusal read from
    // its Job's events.
    quota(&client, &namespace, "pods", 0, context).await;
    apply_all(
        &client,
        &serde_json::json!([backup_with(&namespace, "no-room", "pg-auth", "username")]),
    )
    .await;
    let backups: Api<PostgresBackup> = Api::namespaced(client.clone(), &namespace);
    wait_for(120, "the backup without a pod to fail", context, || async {
        let status = backups.get("no-room").await.ok()?.status?;
        (status.phase? == BackupPhase::Failed).then_some(())
    })
    .await;

    let rules = chart_rules();
    // Every check RBAC was asked to make for the operator, as the API server made it.
    let mut used: BTreeSet<Call> = operator
        .authorizations()
        .iter()
        .map(|check| check.call())
        .collect();
    used.extend(granted_in_roles(&client, &namespace).await);
    let unused: Vec<Call> = granted(&rules).difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "rules the operator never used: {unused:?}"
    );
    assert!(
        !granted(&rules).iter().any(|(_, r, v)| r == "*" || v == "*"),
        "no wildcards"
    );
}
