//! Two operator replicas on one Lease, against an in-memory Kubernetes API: one leads, the
//! other stands by; a released Lease passes over at once, an abandoned one once it has sat
//! unrenewed for its duration.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use pgbackup::k8s::leader::LeaderElector;
use support::cluster::{NAMESPACE, fake_api};

#[tokio::test]
async fn only_one_replica_leads_and_a_released_lease_passes_over() {
    let client = fake_api(Vec::new()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let a = LeaderElector::new(
        leases.clone(),
        "pgbackup",
        "replica-a",
        Duration::from_secs(15),
    );
    let b = LeaderElector::new(
        leases.clone(),
        "pgbackup",
        "replica-b",
        Duration::from_secs(15),
    );

    assert!(a.try_lead().await.expect("a"), "a free Lease is taken");
    assert!(!b.try_lead().await.expect("b"), "a live Lease is respected");
    assert!(a.try_lead().await.expect("a renews"));
    let lease = leases.get("pgbackup").await.expect("lease");
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));

    b.release()
        .await
        .expect("b releases nothing it does not hold");
    assert_eq!(
        leases
            .get("pgbackup")
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
    let spec = leases
        .get("pgbackup")
        .await
        .expect("lease")
        .spec
        .expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn an_abandoned_lease_is_taken_once_it_sat_unrenewed_for_its_duration() {
    let client = fake_api(Vec::new()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let gone = LeaderElector::new(
        leases.clone(),
        "pgbackup",
        "replica-a",
        Duration::from_secs(2),
    );
    let follower = LeaderElector::new(
        leases.clone(),
        "pgbackup",
        "replica-b",
        Duration::from_secs(2),
    );
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
