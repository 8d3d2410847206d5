//! The operator killed (SIGKILL) at every step of an in-place restore from a volume
//! snapshot — the volume recorded, kept (`Retain`), its claim replaced, the restore Job,
//! scaling, verification, release — and at every step of rolling back one that fails: a
//! new process resumes from the status, and the restore either completes with the
//! snapshot's rows or binds the old volume back with every row, the StatefulSet at its
//! replicas. A claim someone else's pod mounts is waited for `waitTimeout`, then nothing
//! is replaced.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{Api, Client};
use pgbackup::api::{PointInTimeRestore, RestorePhase};

use crate::cluster::{connect, count, finished_restore, logs, orders_database, ready_pod_ip};
use crate::snapshot_restores::{as_taken, bound_back, bound_volume, damaged_snapshot, in_place};
use crate::snapshots::{completed_snapshot, snapshot_backup};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

/// Where an in-place snapshot restore is, as the API shows it.
#[derive(Clone, Debug, PartialEq)]
struct Step {
    phase: Option<RestorePhase>,
    /// Volumes recorded in `status.replacedVolumes`.
    recorded: usize,
    /// The reclaim policy of the volume the claim was bound to.
    old_policy: Option<String>,
    /// Claim `data-pg-0`: `old`, `gone`, `new`, or `back` (a new claim bound to the old
    /// volume).
    claim: &'static str,
    /// The restore Job was made.
    job: bool,
}

async fn step(
    client: &Client,
    namespace: &str,
    restore: &PointInTimeRestore,
    (old_volume, old_uid): &(String, String),
) -> Step {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claim = match claims.get_opt("data-pg-0").await.expect("claim") {
        None => "gone",
        Some(c) if c.metadata.uid.as_ref() == Some(old_uid) => "old",
        Some(c) if c.spec.as_ref().and_then(|s| s.volume_name.as_ref()) == Some(old_volume) => {
            "back"
        }
        Some(_) => "new",
    };
    let old_policy = volumes
        .get_opt(old_volume)
        .await
        .expect("volume")
        .and_then(|v| v.spec?.persistent_volume_reclaim_policy);
    let status = restore.status.clone().unwrap_or_default();
    Step {
        phase: status.phase,
        recorded: status.replaced_volumes.len(),
        old_policy,
        claim,
        job: status.restore_job_name.is_some(),
    }
}

/// Follows restore `name` to its end, killing the operator the first time each step is
/// seen and starting another; the restore at the end and the steps killed in.
async fn kill_at_each_step(
    plane: &ControlPlane,
    client: &Client,
    namespace: &str,
    name: &str,
    operator: &RefCell<Operator>,
    old: &(String, String),
) -> (PointInTimeRestore, Vec<Step>) {
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), namespace);
    let mut killed_in: Vec<Step> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let restore = restores.get(name).await.expect("restore");
        let seen = step(client, namespace, &restore, old).await;
        if matches!(
            seen.phase,
            Some(RestorePhase::Completed | RestorePhase::RolledBack | RestorePhase::Failed)
        ) {
            return (restore, killed_in);
        }
        if seen.phase.is_some() && !killed_in.contains(&seen) {
            killed_in.push(seen);
            operator.borrow_mut().kill();
            let identity = format!("{name}-{}", killed_in.len());
            let next = Operator::start(plane, namespace, &identity).await;
            *operator.borrow_mut() = next;
        }
        assert!(
            Instant::now() < deadline,
            "restore {name} did not finish; killed in {killed_in:#?}\n{}",
            logs(&operator.borrow())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phases(steps: &[Step]) -> Vec<RestorePhase> {
    let mut phases: Vec<RestorePhase> = Vec::new();
    for phase in steps.iter().filter_map(|s| s.phase) {
        if !phases.contains(&phase) {
            phases.push(phase);
        }
    }
    phases
}

#[tokio::test]
async fn a_snapshot_restore_in_place_resumes_or_rolls_back_after_the_operator_is_killed_at_each_step()
 {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-resume").await;
    let operator = RefCell::new(Operator::start(plane, &namespace, "first").await);
    let context = || logs(&operator.borrow());
    let db = orders_database(&client, &namespace, context).await;
    completed_snapshot(
        &client,
        &snapshot_backup(&namespace, "before", "checkpoint"),
        context,
    )
    .await;
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");
    drop(db);

    // Restored, killed at every step on the way.
    let old = bound_volume(&client, &namespace, "data-pg-0").await;
    apply::apply(
        &client,
        &in_place(&namespace, "back", "before", as_taken()),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let (done, killed_in) =
        kill_at_each_step(plane, &client, &namespace, "back", &operator, &old).await;
    let status = done.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(RestorePhase::Completed),
        "{status:?}\nkilled in {killed_in:#?}\n{}",
        context()
    );
    assert_eq!(
        phases(&killed_in),
        [
            RestorePhase::Validating,
            RestorePhase::ScalingDown,
            RestorePhase::Restoring,
            RestorePhase::ScalingUp,
            RestorePhase::Verifying,
        ],
        "{killed_in:#?}"
    );
    let restoring = killed_in
        .iter()
        .filter(|s| s.phase == Some(RestorePhase::Restoring))
        .count();
    assert!(
        restoring >= 3,
        "killed while the volumes are swapped, more than once: {killed_in:#?}"
    );
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    let db = connect(&ip).await;
    assert_eq!(count(&db).await, 4321, "the rows of the snapshot");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let kept = volumes
        .get(&old.0)
        .await
        .expect("the replaced volume is kept");
    assert_eq!(
        kept.spec
            .and_then(|s| s.persistent_volume_reclaim_policy)
            .as_deref(),
        Some("Retain")
    );

    // A restore that fails, killed at every step on the way there and back.
    db.batch_execute("INSERT INTO orders SELECT i, 'after' FROM generate_series(6000, 6099) i")
        .await
        .expect("rows after the restore");
    drop(db);
    damaged_snapshot(&client, &namespace, "broken", context).await;
    let old = bound_volume(&client, &namespace, "data-pg-0").await;
    apply::apply(
        &client,
        &in_place(&namespace, "again", "broken", as_taken()),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let (failed, killed_in) =
        kill_at_each_step(plane, &client, &namespace, "again", &operator, &old).await;
    let status = failed.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(RestorePhase::RolledBack),
        "{status:?}\nkilled in {killed_in:#?}\n{}",
        context()
    );
    assert!(
        phases(&killed_in).contains(&RestorePhase::RollingBack),
        "{killed_in:#?}"
    );
    let rolling_back = killed_in
        .iter()
        .filter(|s| s.phase == Some(RestorePhase::RollingBack))
        .count();
    assert!(
        rolling_back >= 2,
        "killed while the volume is bound back, more than once: {killed_in:#?}"
    );
    bound_back(&client, &namespace, &old.0, 4421, context).await;
}

#[tokio::test]
async fn a_claim_someone_else_mounts_is_waited_for_then_nothing_is_replaced() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "snapshot-in-use").await;
    let operator = Operator::start(plane, &namespace, &namespace).await;
    let context = || logs(&operator);
    let db = orders_database(&client, &namespace, context).await;
    completed_snapshot(
        &client,
        &snapshot_backup(&namespace, "before", "checkpoint"),
        context,
    )
    .await;
    db.batch_execute("INSERT INTO orders SELECT i, 'late' FROM generate_series(4322, 5000) i")
        .await
        .expect("late rows");
    drop(db);
    // A debugging pod someone left mounting the database's claim.
    let debug: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "debug-shell", "namespace": namespace},
        "spec": {"containers": [{"name": "shell", "image": "pgbackup/agent:16-debug",
                                 "command": ["sleep", "3600"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-pg-0"}}]}
    }))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.create(&Default::default(), &debug)
        .await
        .expect("debug pod");
    let old = bound_volume(&client, &namespace, "data-pg-0").await;

    let mut doc = in_place(&namespace, "back", "before", as_taken());
    doc["spec"]["waitTimeout"] = "30s".into();
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    finished_restore(&client, &namespace, "back", context).await;
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let status = restores
        .get("back")
        .await
        .expect("restore")
        .status
        .expect("status");
    assert_eq!(
        (status.phase, status.failure_reason.as_deref()),
        (Some(RestorePhase::RolledBack), Some("ClaimInUse")),
        "{status:?}\n{}",
        context()
    );
    assert!(
        status
            .message
            .clone()
            .unwrap_or_default()
            .contains("debug-shell"),
        "says who holds it: {status:?}"
    );
    assert_eq!(
        bound_volume(&client, &namespace, "data-pg-0").await,
        old,
        "the same claim, on the same volume"
    );
    bound_back(&client, &namespace, &old.0, 5000, context).await;
}
