//! Two operator processes: one leads, the other takes over when the first is killed.

use std::time::Duration;

use kube::Api;
use pgbackup::api::PointInTimeRestore;

use crate::cluster::{condition, eventually, restore};
use crate::support::controlplane::{
    ControlPlane,
    apply::{self, Mode},
    operator::Operator,
    test_namespace,
};

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_is_killed() {
    let plane = ControlPlane::shared().await;
    let client = plane.admin().await;
    let namespace = test_namespace(&client, "leader").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(
        client.clone(),
        crate::support::controlplane::OPERATOR_NAMESPACE,
    );
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
