//! Leader election on the API server's Leases, as the operator's ServiceAccount: two
//! operator processes, one leads and the other takes over when the first is killed; a
//! released Lease passes over at once, an abandoned one once it sat unrenewed for its
//! duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use pgbackup::{api::PointInTimeRestore, k8s::leader::LeaderElector};

use crate::cluster::{condition, eventually, restore};
use crate::support::controlplane::{
    ControlPlane, OPERATOR_NAMESPACE,
    apply::{self, Mode},
    operator::{Operator, service_account_token},
    test_namespace,
};

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_is_killed() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let lease = format!("pgbackup-{namespace}");
    let holder = || async {
        leases
            .get_opt(&lease)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut first = Operator::start(plane, &namespace, "first").await;
    eventually(&first, "the first operator to lead", || async {
        (holder().await.as_deref() == Some("first")).then_some(())
    })
    .await;
    let second = Operator::start(plane, &namespace, "second").await;
    // Longer than a Lease lasts (5 s): the standby must not take it while the leader renews.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(holder().await.as_deref(), Some("first"));
    assert!(!second.log().contains("leading"), "{}", second.log());

    first.kill();
    eventually(&second, "the second operator to lead", || async {
        (holder().await.as_deref() == Some("second")).then_some(())
    })
    .await;
    // And it reconciles: a restore of a source that does not exist is refused.
    let doc = restore(
        &namespace,
        serde_json::json!({"spec": {"source": {"backupSchedule": "gone"}}}),
    );
    apply::apply(&client, &doc, Mode::Apply)
        .await
        .expect("restore");
    let restores: Api<PointInTimeRestore> = Api::namespaced(client.clone(), &namespace);
    let (_, reason, _) = eventually(&second, "the restore to be refused", || async {
        let restore = restores.get("oops").await.ok()?;
        condition(&restore, "Failed").filter(|(status, ..)| status == "True")
    })
    .await;
    assert_eq!(reason, "StatefulSetNotFound");
}

/// The Leases of the operator's namespace, read and written as the operator's
/// ServiceAccount: the chart's Role must grant what leader election does.
async fn operator_leases() -> Api<Lease> {
    let plane = ControlPlane::shared().await;
    let token = service_account_token(plane).await;
    let kubeconfig = plane.token_kubeconfig("leases", &token);
    let client = plane.client(&kubeconfig).await;
    Api::namespaced(client, OPERATOR_NAMESPACE)
}

#[tokio::test]
async fn only_one_replica_leads_and_a_released_lease_passes_over() {
    const LEASE: &str = "pgbackup-pass-over";
    let leases = operator_leases().await;
    let a = LeaderElector::new(leases.clone(), LEASE, "replica-a", Duration::from_secs(15));
    let b = LeaderElector::new(leases.clone(), LEASE, "replica-b", Duration::from_secs(15));

    assert!(a.try_lead().await.expect("a"), "a free Lease is taken");
    assert!(!b.try_lead().await.expect("b"), "a live Lease is respected");
    assert!(a.try_lead().await.expect("a renews"));
    let lease = leases.get(LEASE).await.expect("lease");
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));

    b.release()
        .await
        .expect("b releases nothing it does not hold");
    assert_eq!(
        leases
            .get(LEASE)
            .await
            .expect("lease")
            .spec
            .expect("spec")
            .holder_identity
            .as_deref(),
        Some("replica-a")
    );

    a.release().await.expect("release");
    assert!(
        b.try_lead().await.expect("b"),
        "a released Lease passes over at once"
    );
    assert!(
        !a.try_lead().await.expect("a"),
        "the old leader now stands by"
    );
    let spec = leases.get(LEASE).await.expect("lease").spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn an_abandoned_lease_is_taken_once_it_sat_unrenewed_for_its_duration() {
    const LEASE: &str = "pgbackup-abandoned";
    let leases = operator_leases().await;
    let gone = LeaderElector::new(leases.clone(), LEASE, "replica-a", Duration::from_secs(2));
    let follower = LeaderElector::new(leases.clone(), LEASE, "replica-b", Duration::from_secs(2));
    assert!(gone.try_lead().await.expect("a"));
    // replica-a stops renewing (its node died).
    assert!(
        !follower.try_lead().await.expect("b"),
        "first sight of a held Lease: wait"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !follower.try_lead().await.expect("b"),
        "not yet a whole duration"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        follower.try_lead().await.expect("b"),
        "unrenewed for its duration: taken"
    );
    assert!(
        !gone.try_lead().await.expect("a"),
        "the old leader finds it taken"
    );
}
