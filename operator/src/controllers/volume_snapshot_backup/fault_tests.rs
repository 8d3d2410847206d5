//! The plan under faults: restarts, deadlines, lost status writes, deletion half-way,
//! someone else scaling or naming snapshots — the StatefulSet always ends as it was.

use std::collections::BTreeMap;

use super::{world::*, *};
use crate::{
    api::{CONDITION_FAILED, find_condition},
    controllers::volume_snapshot_backup::build,
    k8s::generated::volume_snapshot::{VolumeSnapshotStatus, VolumeSnapshotStatusError},
};

/// What goes wrong, and when.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The operator restarts: the session is gone.
    Restart,
    /// The deadline passes.
    Deadline,
    /// Someone (or a GitOps tool) scales the StatefulSet back up.
    ScaledUp,
    /// The object is deleted: the finalizer cleans up.
    Deleted,
    /// The status write of a reconcile fails (its object steps were made).
    StatusLost,
    /// The status write fails, then the object is deleted.
    StatusLostThenDeleted,
}

/// Runs a backup with `fault` injected before reconcile number `at`; the final state.
fn with_fault(mode: &str, fault: Fault, at: usize) -> (VolumeSnapshotBackup, World) {
    let mut backup = backup(mode, serde_json::json!({}));
    let mut world = World::new(2);
    for i in 0..60 {
        if i == at {
            match fault {
                Fault::Restart => world.observed.session = SessionState::Absent,
                Fault::Deadline => world.now += jiff::SignedDuration::from_hours(1),
                Fault::ScaledUp => {
                    let sts = world
                        .observed
                        .references
                        .stateful_set
                        .as_mut()
                        .expect("sts");
                    sts.spec.as_mut().expect("spec").replicas = Some(2);
                }
                Fault::Deleted => {
                    let (steps, done) = cleanup(&backup, &world.observed, false);
                    world.apply(&steps);
                    assert!(done);
                    return (backup, world);
                }
                Fault::StatusLost => {
                    reconcile_losing_status(&mut backup, &mut world, true);
                }
                Fault::StatusLostThenDeleted => {
                    reconcile_losing_status(&mut backup, &mut world, true);
                    let (steps, _) = cleanup(&backup, &world.observed, false);
                    world.apply(&steps);
                    return (backup, world);
                }
            }
        }
        let plan = reconcile(&mut backup, &mut world);
        if plan.requeue.is_none() {
            return (backup, world);
        }
        world.tick();
    }
    panic!("the backup did not finish: {:?}", backup.status);
}

#[test]
fn every_fault_at_every_step_leaves_the_stateful_set_as_it_was() {
    for mode in ["online", "checkpoint", "offline"] {
        for fault in [
            Fault::Restart,
            Fault::Deadline,
            Fault::ScaledUp,
            Fault::Deleted,
            Fault::StatusLost,
            Fault::StatusLostThenDeleted,
        ] {
            for at in 0..8 {
                let (backup, world) = with_fault(mode, fault, at);
                let case = format!(
                    "{mode} {fault:?} before reconcile {at}: {:?}",
                    backup.status
                );
                assert_eq!(world.replicas(), 2, "{case}");
                assert!(world.sts_annotations().is_empty(), "{case}");
                assert_eq!(world.observed.session, SessionState::Absent, "{case}");
                match phase(&backup) {
                    Some(BackupPhase::Completed) => {
                        let volumes = build::volumes(&backup).expect("volumes").len();
                        assert_eq!(world.observed.snapshots.len(), volumes, "{case}");
                    }
                    Some(BackupPhase::Failed) => {
                        assert!(world.observed.snapshots.is_empty(), "{case}");
                        let status = backup.status.as_ref().expect("status");
                        assert!(
                            find_condition(&status.conditions, CONDITION_FAILED)
                                .is_some_and(|c| c.status == "True"),
                            "{case}"
                        );
                    }
                    // Deleted while running: nothing half-made stays; snapshots cut with
                    // the database released are whole, and Retain keeps them.
                    _ if matches!(fault, Fault::Deleted | Fault::StatusLostThenDeleted) => {
                        let whole = matches!(
                            stage(&backup),
                            Some(SnapshotStage::WaitingForReadyToUse | SnapshotStage::Recording)
                        );
                        assert!(whole || world.observed.snapshots.is_empty(), "{case}");
                    }
                    other => panic!("{case}: ended {other:?}"),
                }
            }
        }
    }
}

#[test]
fn a_lost_session_is_rolled_back_and_retried_then_fails() {
    let mut backup = backup("online", serde_json::json!({}));
    let mut world = World::new(1);
    let mut events = Vec::new();
    for _ in 0..30 {
        // The operator restarts before every reconcile after the first.
        let plan = reconcile(&mut backup, &mut world);
        events.extend(plan.event.map(|e| e.reason));
        world.observed.session = SessionState::Absent;
        if plan.requeue.is_none() {
            break;
        }
        world.tick();
    }
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert_eq!(status.attempt, Some(MAX_ATTEMPTS));
    assert_eq!(status.failure_reason.as_deref(), Some("SessionLost"));
    assert_eq!(
        events.iter().filter(|e| *e == "Retrying").count(),
        usize::try_from(MAX_ATTEMPTS - 1).expect("count")
    );
    assert!(world.observed.snapshots.is_empty());
}

#[test]
fn a_passed_deadline_stops_backup_mode_properly_and_deletes_the_snapshots() {
    let mut backup = backup("online", serde_json::json!({}));
    let mut world = World::new(1);
    reconcile(&mut backup, &mut world);
    reconcile(&mut backup, &mut world);
    assert_eq!(world.observed.snapshots.len(), 2);
    // The storage never cuts them, and says why.
    for snapshot in &mut world.observed.snapshots {
        snapshot.status = Some(VolumeSnapshotStatus {
            bound_volume_snapshot_content_name: None,
            creation_time: None,
            error: Some(VolumeSnapshotStatusError {
                message: Some("quota exceeded".into()),
                time: None,
            }),
            ready_to_use: None,
            restore_size: None,
            volume_group_snapshot_name: None,
        });
    }
    let plan = reconcile(&mut backup, &mut world);
    assert!(plan.steps.is_empty());
    let message = backup
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("quota exceeded"), "{message}");

    world.now += jiff::SignedDuration::from_mins(11);
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(
        plan.steps,
        [
            Step::StopSession,
            Step::DeleteSnapshots(vec!["snap-data".into(), "snap-wal".into()])
        ]
    );
    assert_eq!(stage(&backup), Some(SnapshotStage::RollingBack));
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(plan.steps, [Step::EndSession]);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert_eq!(ready(&status), ("False".into(), "DeadlineExceeded".into()));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("quota exceeded")
    );
}

#[test]
fn a_standby_is_refused_without_any_snapshot() {
    let mut backup = backup("online", serde_json::json!({}));
    let mut world = World::new(1);
    world.standby = true;
    let events = run_to_end(&mut backup, &mut world);
    let status = backup.status.clone().expect("status");
    assert_eq!(status.phase, Some(BackupPhase::Failed));
    assert_eq!(ready(&status), ("False".into(), "NotPrimary".into()));
    assert!(world.observed.snapshots.is_empty());
    assert_eq!(world.observed.session, SessionState::Absent);
    assert_eq!(events.last().map(|e| e.reason.as_str()), Some("NotPrimary"));
}

#[test]
fn an_offline_attempt_whose_status_was_lost_goes_back_to_the_recorded_replicas() {
    let mut backup = backup("offline", serde_json::json!({}));
    let mut world = World::new(3);
    // The StatefulSet was scaled and annotated, then the status write failed.
    world.apply(&[Step::Scale {
        replicas: 0,
        original: Some(3),
    }]);
    run_to_end(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Completed));
    assert_eq!(world.replicas(), 3);
}

#[test]
fn deleting_a_finished_offline_backup_never_starts_a_stateful_set_someone_else_stopped() {
    let mut backup = backup("offline", serde_json::json!({"deletionPolicy": "Delete"}));
    let mut world = World::new(2);
    run_to_end(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Completed));
    // Later someone scales it to 0 for maintenance (or another backup does).
    for by in [None, Some("VolumeSnapshotBackup/other")] {
        let sts = world
            .observed
            .references
            .stateful_set
            .as_mut()
            .expect("sts");
        sts.spec.as_mut().expect("spec").replicas = Some(0);
        sts.metadata.annotations = by.map(|by| {
            BTreeMap::from([(build::ANNOTATION_SCALED_DOWN_BY.to_string(), by.to_string())])
        });
        let (steps, _) = cleanup(&backup, &world.observed, true);
        assert!(
            !steps.iter().any(|s| matches!(s, Step::Scale { .. })),
            "{by:?}: {steps:?}"
        );
    }
}

#[test]
fn snapshots_of_an_earlier_backup_of_the_same_name_are_not_taken_over() {
    let mut backup = backup("checkpoint", serde_json::json!({}));
    let mut world = World::new(1);
    world.observed.foreign_snapshots = vec!["snap-data".into()];
    let plan = reconcile(&mut backup, &mut world);
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    let status = backup.status.clone().expect("status");
    assert_eq!(ready(&status), ("False".into(), "SnapshotNameTaken".into()));
    // And one that appears meanwhile fails the attempt, leaving it alone.
    let mut backup = self::backup("checkpoint", serde_json::json!({}));
    let mut world = World::new(1);
    reconcile(&mut backup, &mut world);
    reconcile(&mut backup, &mut world);
    assert_eq!(stage(&backup), Some(SnapshotStage::Snapshotting));
    world.observed.snapshots.clear();
    world.observed.foreign_snapshots = vec!["snap-data".into()];
    let plan = reconcile(&mut backup, &mut world);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::DeleteSnapshots(_))),
        "{:?}",
        plan.steps
    );
    assert_eq!(phase(&backup), Some(BackupPhase::Failed));
}

#[test]
fn a_backup_that_cannot_start_gives_up_after_its_deadline() {
    let mut backup = backup("online", serde_json::json!({"deadline": "5m"}));
    backup.metadata.creation_timestamp = Some(Time(start()));
    let mut world = World::new(1);
    world.observed.pods.clear();
    reconcile(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Pending));
    world.now += jiff::SignedDuration::from_mins(6);
    let plan = reconcile(&mut backup, &mut world);
    assert_eq!(phase(&backup), Some(BackupPhase::Failed));
    let status = backup.status.clone().expect("status");
    assert_eq!(ready(&status), ("False".into(), "PodNotReady".into()));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("gave up after waiting 5m")
    );
    assert_eq!(plan.requeue, None);
}
