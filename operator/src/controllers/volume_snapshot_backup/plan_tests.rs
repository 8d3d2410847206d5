//! The plan through each mode, recording, and bad input.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{world::*, *};
use crate::controllers::volume_snapshot_backup::{build, check::check};

#[test]
fn an_online_backup_holds_backup_mode_across_the_snapshots_and_keeps_the_label() {
    let mut backup = backup("online", serde_json::json!({}));
    let mut world = World::new(1);

    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(
        plan.steps,
        [Step::StartSession(SessionKind::Online {
            label: "pgbackup shop/snap".into()
        })]
    );
    assert_eq!(stage(&backup), Some(SnapshotStage::Preparing));
    assert_eq!(plan.event.map(|e| e.reason), Some("Started".into()));

    // In backup mode: both volumes are snapshotted with the class, from the primary's claims.
    let plan = reconcile(&mut backup, &mut world);
    let Some(Step::CreateSnapshots(snapshots)) = plan.steps.first() else {
        panic!("{:?}", plan.steps);
    };
    let sources: Vec<(String, Option<String>, Option<String>)> = snapshots
        .iter()
        .map(|s| {
            (
                s.name_any(),
                s.spec.source.persistent_volume_claim_name.clone(),
                s.spec.volume_snapshot_class_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            (
                "snap-data".into(),
                Some("data-pg-0".into()),
                Some("csi-snap".into())
            ),
            (
                "snap-wal".into(),
                Some("wal-pg-0".into()),
                Some("csi-snap".into())
            ),
        ]
    );
    assert!(
        snapshots[0].metadata.owner_references.is_none(),
        "Retain: the snapshots outlive the object"
    );
    assert_eq!(stage(&backup), Some(SnapshotStage::Snapshotting));

    // Not cut yet: backup mode is held, nothing else happens.
    let plan = reconcile(&mut backup, &mut world);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);

    world.tick();
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(plan.steps, [Step::StopSession]);
    assert_eq!(stage(&backup), Some(SnapshotStage::Releasing));

    let plan = reconcile(&mut backup, &mut world);
    let Some(Step::AnnotateSnapshots(annotations)) = plan.steps.first() else {
        panic!("{:?}", plan.steps);
    };
    assert_eq!(annotations[build::ANNOTATION_BACKUP_LABEL], LABEL);
    assert_eq!(annotations[build::ANNOTATION_END_LSN], "0/3000138");
    assert_eq!(plan.steps.last(), Some(&Step::EndSession));
    let status = backup.status.clone().expect("status");
    assert_eq!(status.backup_label.as_deref(), Some(LABEL));
    assert_eq!(status.begin_lsn.as_deref(), Some("0/3000028"));
    assert_eq!(status.end_lsn.as_deref(), Some("0/3000138"));
    assert_eq!(status.timeline, Some(1));
    assert_eq!(ready(&status), ("False".into(), "Running".into()));

    // Ready only when every snapshot is ready to use.
    world.tick();
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Completed));
    let status = backup.status.clone().expect("status");
    assert_eq!(ready(&status), ("True".into(), "Completed".into()));
    assert!(
        status
            .snapshots
            .iter()
            .all(|s| s.ready_to_use && s.restore_size.as_deref() == Some("10Gi"))
    );
    assert_eq!(plan.requeue, None);
    assert_eq!(world.observed.session, SessionState::Absent);
}

#[test]
fn deletion_policy_delete_makes_the_object_own_its_snapshots() {
    let backup = backup(
        "checkpoint",
        serde_json::json!({"deletionPolicy": "Delete"}),
    );
    let volume = &build::volumes(&backup).expect("volumes")[0];
    let snapshot = build::volume_snapshot(&backup, volume);
    let owners = snapshot.metadata.owner_references.expect("owned");
    assert_eq!(owners[0].kind, "VolumeSnapshotBackup");
    assert_eq!(owners[0].uid, "uid-snap");
}

#[test]
fn a_class_that_retains_storage_snapshots_is_said_up_front() {
    let kept = |backup: &VolumeSnapshotBackup| {
        crate::api::find_condition(
            &backup.status.clone().unwrap_or_default().conditions,
            CONDITION_STORAGE_KEPT,
        )
        .map(|c| (c.status.clone(), c.message.clone()))
    };
    let mut world = World::new(1);
    world.observed.class_retains = true;
    let mut deleting = backup(
        "checkpoint",
        serde_json::json!({"deletionPolicy": "Delete"}),
    );
    reconcile(&mut deleting, &mut world);
    let (status, message) = kept(&deleting).expect("said before the snapshot is taken");
    assert_eq!(status, "True");
    assert!(message.contains("csi-snap"), "{message}");
    run_to_end(&mut deleting, &mut world);
    assert_eq!(phase(&deleting), Some(BackupPhase::Completed));
    assert!(kept(&deleting).is_some(), "and still there once completed");

    // Snapshots kept with the object's deletion anyway: nothing to say.
    let mut retaining = backup("checkpoint", serde_json::json!({}));
    reconcile(&mut retaining, &mut world);
    assert_eq!(kept(&retaining), None);
}

#[test]
fn a_checkpoint_backup_records_where_recovery_starts() {
    let mut backup = backup("checkpoint", serde_json::json!({}));
    let mut world = World::new(1);
    run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed));
    assert_eq!(status.begin_lsn.as_deref(), Some("0/4000028"));
    assert_eq!(status.timeline, Some(2));
    assert_eq!(status.backup_label, None);
    let annotations = world.observed.snapshots[0].annotations();
    assert_eq!(annotations[build::ANNOTATION_BEGIN_LSN], "0/4000028");
    assert_eq!(annotations[build::ANNOTATION_MODE], "checkpoint");
}

#[test]
fn an_offline_backup_scales_to_zero_and_back() {
    let mut backup = backup("offline", serde_json::json!({}));
    let mut world = World::new(3);
    // First the count to go back to is in the status, then the StatefulSet is scaled.
    let plan = reconcile(&mut backup, &mut world);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert_eq!(
        backup.status.as_ref().and_then(|s| s.original_replicas),
        Some(3)
    );
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(
        plan.steps,
        [Step::Scale {
            replicas: 0,
            original: Some(3)
        }]
    );
    assert_eq!(
        world.sts_annotations()[build::ANNOTATION_ORIGINAL_REPLICAS],
        "3"
    );
    // The pods are still there: no snapshot yet.
    let plan = reconcile(&mut backup, &mut world);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert!(world.observed.snapshots.is_empty());
    run_to_end(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Completed));
    assert_eq!(world.replicas(), 3);
    assert!(world.sts_annotations().is_empty());
}

#[test]
fn replicas_set_back_during_an_offline_backup_end_it_without_a_fight() {
    let mut backup = backup("offline", serde_json::json!({}));
    let mut world = World::new(3);
    reconcile(&mut backup, &mut world);
    reconcile(&mut backup, &mut world);
    assert_eq!(world.replicas(), 0);
    // A self-heal sets the replicas back before the pods are gone (keeping the record).
    world
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts")
        .spec
        .as_mut()
        .expect("spec")
        .replicas = Some(3);
    let plan = reconcile(&mut backup, &mut world);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Scale { replicas: 0, .. })
                || matches!(s, Step::CreateSnapshots(_))),
        "no scaling against it, no snapshot: {:?}",
        plan.steps
    );
    run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed), "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("ReplicasSetBack"));
    assert_eq!(world.replicas(), 3);
    assert!(world.observed.snapshots.is_empty());
}

/// Bad input: the backup waits with a condition naming the problem and touches nothing.
#[test]
fn bad_input_waits_with_a_clear_condition_and_no_step() {
    type Breaker = fn(&mut VolumeSnapshotBackup, &mut World);
    let cases: Vec<(&str, &str, Breaker)> = vec![
        ("online", "VolumeSnapshotClassNotFound", |_, w| {
            w.observed.class_found = Some(false)
        }),
        ("online", "ClaimTemplateNotFound", |b, _| {
            b.spec.target.data_volume_claim_template = "pgdata".into();
        }),
        ("offline", "ClaimNotFound", |_, w| {
            w.observed.claims.retain(|c| c != "wal-pg-0")
        }),
        ("online", "PodNotReady", |_, w| {
            w.observed.pods = vec![pod("pg-0", false)]
        }),
        ("checkpoint", "PodNotReady", |_, w| w.observed.pods.clear()),
        ("offline", "StatefulSetNotFound", |_, w| {
            w.observed.references.stateful_set = None
        }),
        ("online", "SecretNotFound", |_, w| {
            w.observed.references.secrets.insert("pg-auth".into(), None);
        }),
        ("online", "PodNotOfStatefulSet", |b, _| {
            b.spec.target.pod = Some("other-0".into())
        }),
        ("offline", "ClaimsDeletedWhenScaled", |_, w| {
            let sts = w.observed.references.stateful_set.as_mut().expect("sts");
            crate::k8s::fixtures::delete_claims_when_scaled(sts);
        }),
        ("offline", "StatefulSetBusy", |_, w| {
            let sts = w.observed.references.stateful_set.as_mut().expect("sts");
            sts.metadata.annotations = Some(BTreeMap::from([(
                build::ANNOTATION_SCALED_DOWN_BY.to_string(),
                "PointInTimeRestore/put-back".to_string(),
            )]));
        }),
    ];
    for (mode, reason, breaker) in cases {
        let mut backup = backup(mode, serde_json::json!({}));
        let mut world = World::new(1);
        breaker(&mut backup, &mut world);
        let plan = plan(
            &backup,
            &world.observed,
            &AgentSettings::default(),
            world.now,
        );
        assert!(plan.steps.is_empty(), "{reason}: {:?}", plan.steps);
        assert_eq!(plan.status.phase, Some(BackupPhase::Pending), "{reason}");
        assert_eq!(ready(&plan.status), ("False".into(), reason.into()));
        assert_eq!(plan.requeue, Some(RETRY));
        let event = plan.event.expect("an event");
        assert!(event.warning, "{reason}");
        assert!(!plan.status.message.unwrap_or_default().is_empty());
    }
}

#[test]
fn offline_backups_need_no_database_credentials() {
    let backup = backup("offline", serde_json::json!({}));
    let mut world = World::new(1);
    world.observed.references.secrets.clear();
    world.observed.pods.clear();
    assert_eq!(check(&backup, &world.observed), Ok(()));
}

#[test]
fn deleting_a_completed_backup_deletes_snapshots_only_when_asked() {
    let mut backup = backup("checkpoint", serde_json::json!({}));
    let mut world = World::new(1);
    run_to_end(&mut backup, &mut world);
    let (steps, _) = cleanup(&backup, &world.observed, false);
    assert!(steps.is_empty(), "{steps:?}");
    let (steps, _) = cleanup(&backup, &world.observed, true);
    assert_eq!(steps, [Step::DeleteSnapshots(vec!["snap-data".into()])]);
}

#[test]
fn a_backup_with_a_repository_is_recorded_once_its_snapshots_are_ready() {
    let repository = serde_json::json!({"repository": {
        "s3": {"bucket": "b", "credentialsSecret": {"name": "s3-keys"}}
    }});
    let mut backup = backup("online", repository.clone());
    let mut world = World::new(1);
    run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert_eq!(status.backup_id.as_deref(), Some("20261121T103000Z"));
    assert_eq!(status.server_version.as_deref(), Some("16.4"));
    let record = world.recorded.clone().expect("recorded");
    assert_eq!(record.begin_lsn, "0/3000028");
    assert_eq!(record.end_lsn.as_deref(), Some("0/3000138"));
    assert_eq!(record.server_version_num, 160004);
    assert_eq!(record.details.backup_label.as_deref(), Some(LABEL));
    assert_eq!(record.details.volume_snapshots.len(), 2);
    assert!(
        record
            .details
            .volume_snapshots
            .iter()
            .all(|s| s.restore_size.is_some())
    );
    let limit = |world: &World| {
        let job = world.record_job_made.as_ref().expect("record job");
        let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let resources = pod.expect("pod").containers[0].resources.clone();
        resources.and_then(|r| r.limits?.get("memory").cloned())
    };
    assert_eq!(limit(&world).map(|q| q.0).as_deref(), Some("256Mi"));
    let mut sized = repository.clone();
    sized["resources"] = serde_json::json!({"limits": {"memory": "1Gi"}});
    let mut big = self::backup("online", sized);
    let mut world = World::new(1);
    run_to_end(&mut big, &mut world);
    assert_eq!(
        limit(&world).map(|q| q.0).as_deref(),
        Some("1Gi"),
        "spec.resources sizes the record Job"
    );

    // A record that cannot be written fails the backup, and keeps the snapshots.
    let mut backup = self::backup("checkpoint", repository);
    let mut world = World::new(1);
    world.record_fails = true;
    run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(ready(&status), ("False".into(), "RecordFailed".into()));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("bucket not found")
    );
    assert_eq!(world.observed.snapshots.len(), 1, "the snapshot is kept");
}

#[test]
fn an_offline_backup_is_recorded_from_a_copy_of_its_data_snapshot() {
    let mut backup = backup(
        "offline",
        serde_json::json!({"repository": {"s3": {"bucket": "b"}}}),
    );
    let mut world = World::new(1);
    // A server of another major than the operator's default.
    world.database_container().image = Some("postgres:15.7".into());
    run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
    assert_eq!(world.replicas(), 1, "scaled back before the record");
    let record = world.recorded.clone().expect("recorded");
    assert_eq!(
        (record.timeline, record.begin_lsn.as_str()),
        (0, ""),
        "no running server tells an offline snapshot's positions: the Job reads them"
    );
    assert_eq!(record.details.mode, "offline");
    assert_eq!(
        (
            status.begin_lsn.as_deref(),
            status.timeline,
            status.server_version.as_deref()
        ),
        (Some("0/5000028"), Some(1), Some("16")),
        "what the copy told is in status"
    );
    assert_eq!(record.details.volume_snapshots.len(), 2);
    let job = world.record_job_made.clone().expect("record job");
    assert_eq!(job_env(&job, "PGBACKUP_CONTROL_DATA"), build::COPY_MOUNT);
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .expect("the record Job's pod");
    let copy = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "copy")
        .and_then(|v| v.ephemeral.clone())
        .and_then(|e| e.volume_claim_template)
        .expect("a volume made from the data snapshot, gone with the pod");
    let source = copy.spec.data_source.expect("made from the snapshot");
    assert_eq!(
        (source.kind.as_str(), source.name.as_str()),
        ("VolumeSnapshot", "snap-data")
    );
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "copy")
        .expect("mounted");
    assert_eq!(mount.read_only, Some(true), "the copy is only read");
    assert_eq!(
        pod.containers[0].image,
        Some(crate::k8s::agent_pod::AgentSettings::default().image_for(15)),
        "the agent of the StatefulSet's major reads its control file"
    );
    assert_eq!(
        job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
        Some(build::COPY_TTL_SECONDS),
        "the copy goes soon after the record"
    );
}

#[test]
fn checkpoint_snapshots_of_several_volumes_are_refused() {
    let backup = backup("checkpoint", serde_json::json!({"includeVolumes": ["wal"]}));
    let world = World::new(1);
    let problem = check(&backup, &world.observed).expect_err("refused");
    assert_eq!(problem.reason, "InvalidSpec");
    assert!(
        problem.message.contains("not consistent"),
        "{}",
        problem.message
    );
}

#[test]
fn an_offline_backup_whose_record_cannot_be_written_never_stops_the_database() {
    // The repository's Secret is missing: refused before anything is scaled.
    let backup = backup(
        "offline",
        serde_json::json!({"repository": {"s3": {"bucket": "b", "credentialsSecret": {"name": "gone"}}}}),
    );
    let world = World::new(1);
    let problem = check(&backup, &world.observed).expect_err("refused");
    assert_eq!(problem.reason, "SecretNotFound", "{}", problem.message);
    // The database's own credentials are not needed for an offline backup.
    let mut world = World::new(1);
    world.observed.references.secrets.remove("pg-auth");
    let backup = self::backup(
        "offline",
        serde_json::json!({"repository": {"s3": {"bucket": "b", "credentialsSecret": {"name": "s3-keys"}}}}),
    );
    check(&backup, &world.observed).expect("no database credentials needed");
    // A data directory the container keeps elsewhere than the spec says.
    let backup = self::backup(
        "offline",
        serde_json::json!({"repository": {"s3": {"bucket": "b"}},
                           "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}, "dataSubPath": "elsewhere"}}),
    );
    let mut world = World::new(1);
    let container = world.database_container();
    container.env = Some(vec![crate::k8s::agent_pod::env(
        "PGDATA",
        "/var/lib/postgresql/data/pgdata",
    )]);
    container.volume_mounts = Some(vec![
        serde_json::from_value(
            serde_json::json!({"name": "data", "mountPath": "/var/lib/postgresql/data"}),
        )
        .expect("mount"),
    ]);
    let problem = check(&backup, &world.observed).expect_err("refused");
    assert_eq!(problem.reason, "DataSubPathMismatch", "{}", problem.message);
}
