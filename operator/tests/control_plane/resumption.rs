//! The operator killed (SIGKILL, as a node failure would) in every phase of an in-place
//! restore: a new process, once the old one's Lease ran out, resumes from the status and
//! finishes. At every step the conditions tell kstatus readers (`kubectl wait
//! --for=condition=Ready`, Flux, Argo CD) the truth.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use pgbackup::api::{PointInTimeRestore, RestorePhase};

use crate::cluster::{condition, connect, count, logs, ready_pod_ip};
use crate::restores::{physical_backup_then_late_rows, restore_of_base};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

/// What a kstatus reader makes of a restore: `InProgress`, `Current` or `Failed`. Fails
/// when the conditions contradict each other, the phase or the generation.
pub(crate) fn kstatus(restore: &PointInTimeRestore) -> &'static str {
    let Some(status) = restore.status.as_ref() else {
        return "InProgress";
    };
    let present = |type_: &str| condition(restore, type_).map(|(status, ..)| status);
    let ready = present("Ready");
    let reconciling = present("Reconciling");
    let stalled = present("Stalled");
    let seen = format!("{:?} {status:?}", status.phase);
    if status.phase.is_none() {
        assert!(stalled.is_none(), "stalled before starting: {seen}");
        return "InProgress";
    }
    assert_eq!(
        status.observed_generation, restore.metadata.generation,
        "status written for another generation: {seen}"
    );
    assert!(
        ready.is_some(),
        "no Ready condition for kubectl wait: {seen}"
    );
    // kstatus wants the abnormal-true conditions only while they hold.
    for (type_, value) in [("Reconciling", &reconciling), ("Stalled", &stalled)] {
        assert!(
            value.as_deref().is_none_or(|v| v == "True"),
            "{type_} present but not True: {seen}"
        );
    }
    match status.phase {
        Some(RestorePhase::Completed) => {
            assert_eq!(ready.as_deref(), Some("True"), "{seen}");
            assert!(reconciling.is_none() && stalled.is_none(), "{seen}");
            "Current"
        }
        Some(RestorePhase::Failed | RestorePhase::RolledBack) => {
            assert_eq!(ready.as_deref(), Some("False"), "{seen}");
            assert!(stalled.is_some() && reconciling.is_none(), "{seen}");
            "Failed"
        }
        _ => {
            assert_eq!(ready.as_deref(), Some("False"), "ready too early: {seen}");
            assert!(stalled.is_none(), "stalled while under way: {seen}");
            "InProgress"
        }
    }
}

#[tokio::test]
async fn an_in_place_restore_resumes_after_the_operator_is_killed_in_each_phase() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "resume").await;
    let operator = RefCell::new(Operator::start(plane, &namespace, "resume-0").await);
    let context = || logs(&operator.borrow());
    drop(physical_backup_then_late_rows(&client, &namespace, context).await);

    apply::apply(
        &client,
        &restore_of_base(&namespace, "back", "inPlace"),
        Mode::Apply,
    )
    .await
    .expect("restore");
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let mut killed_in = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(400);
    let last = loop {
        let restore = restores.get("back").await.expect("restore");
        let state = kstatus(&restore);
        let phase = restore.status.as_ref().and_then(|s| s.phase);
        if state != "InProgress" {
            break restore;
        }
        if let Some(phase) = phase
            && !killed_in.contains(&phase)
        {
            killed_in.push(phase);
            operator.borrow_mut().kill();
            let identity = format!("resume-{}", killed_in.len());
            let next = Operator::start(plane, &namespace, &identity).await;
            *operator.borrow_mut() = next;
        }
        assert!(
            Instant::now() < deadline,
            "the restore did not finish; killed in {killed_in:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        kstatus(&last),
        "Current",
        "{:?}\n{}",
        last.status,
        context()
    );
    for phase in [
        RestorePhase::Validating,
        RestorePhase::ScalingDown,
        RestorePhase::Restoring,
        RestorePhase::ScalingUp,
        RestorePhase::Verifying,
    ] {
        assert!(
            killed_in.contains(&phase),
            "never killed in {phase:?}: {killed_in:?}"
        );
    }

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let set = sets.get("pg").await.expect("statefulset");
    assert_eq!(set.spec.and_then(|s| s.replicas), Some(1));
    let ip = ready_pod_ip(&client, &namespace, "pg-0", context).await;
    assert_eq!(
        count(&connect(&ip).await).await,
        4321,
        "the rows of the backup, no later ones"
    );
}
