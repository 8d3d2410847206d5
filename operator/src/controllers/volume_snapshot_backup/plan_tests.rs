use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job, core::v1::Pod};

use super::*;
use crate::{
    api::{VolumeSnapshotBackupSpec, find_condition},
    k8s::{
        fixtures::references,
        generated::volume_snapshot::{VolumeSnapshotStatus, VolumeSnapshotStatusError},
    },
    postgres::parse_backup_label,
};

const LABEL: &str = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
    CHECKPOINT LOCATION: 0/3000060\n\
    BACKUP METHOD: streamed\n\
    BACKUP FROM: primary\n\
    START TIME: 2026-11-21 10:30:00 UTC\n\
    LABEL: pgbackup shop/snap\n\
    START TIMELINE: 1\n";

fn server() -> ServerInfo {
    ServerInfo {
        version: "16.4".into(),
        version_num: 160004,
        system_identifier: Some("7300000000000000001".into()),
        in_recovery: false,
        wal_segment_size: 16 * 1024 * 1024,
    }
}

fn start() -> Timestamp {
    "2026-11-21T10:30:00Z".parse().expect("time")
}

fn backup(mode: &str, extra: serde_json::Value) -> VolumeSnapshotBackup {
    let mut spec = serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "volumeSnapshotClassName": "csi-snap",
        "mode": mode,
        "includeVolumes": ["wal"],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let spec: VolumeSnapshotBackupSpec = serde_json::from_value(spec).expect("spec");
    let mut backup = VolumeSnapshotBackup::new("snap", spec);
    backup.metadata.namespace = Some("shop".into());
    backup.metadata.uid = Some("uid-snap".into());
    backup.metadata.generation = Some(1);
    backup
}

fn stateful_set(replicas: i32) -> StatefulSet {
    let mut sts = references("postgres:16.4").stateful_set.expect("fixture");
    let spec = sts.spec.as_mut().expect("spec");
    spec.replicas = Some(replicas);
    spec.volume_claim_templates = Some(
        ["data", "wal"]
            .iter()
            .map(|name| {
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                    .expect("claim")
            })
            .collect(),
    );
    sts
}

fn pod(name: &str, ready: bool) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "pg"}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .expect("pod")
}

/// The cluster and database as the plan sees them, changed by the plan's steps and by
/// time: a snapshot is cut one reconcile after it is made and ready one after that.
#[derive(Clone, Debug)]
struct World {
    observed: Observed,
    now: Timestamp,
    /// Whether the next `StartSession` reaches a standby.
    standby: bool,
    /// What the record Job was given.
    recorded: Option<crate::agent::record_snapshot::SnapshotRecord>,
    /// Whether the record Job fails.
    record_fails: bool,
}

impl World {
    fn new(replicas: i32) -> Self {
        let mut refs = references("postgres:16.4");
        refs.stateful_set = Some(stateful_set(replicas));
        Self {
            observed: Observed {
                references: refs,
                pods: (0..replicas)
                    .map(|i| pod(&format!("pg-{i}"), true))
                    .collect(),
                claims: vec!["data-pg-0".into(), "wal-pg-0".into()],
                class_found: Some(true),
                record_job: None,
                session: SessionState::Absent,
                snapshots: Vec::new(),
            },
            now: start(),
            standby: false,
            recorded: None,
            record_fails: false,
        }
    }

    fn replicas(&self) -> i32 {
        build::replicas(self.observed.references.stateful_set.as_ref().expect("sts"))
    }

    fn sts_annotations(&self) -> BTreeMap<String, String> {
        self.observed
            .references
            .stateful_set
            .as_ref()
            .and_then(|s| s.metadata.annotations.clone())
            .unwrap_or_default()
    }

    fn apply(&mut self, steps: &[Step]) {
        for step in steps {
            match step {
                Step::StartSession(SessionKind::Online { .. }) if self.standby => {
                    self.observed.session = SessionState::Failed {
                        reason: "NotPrimary",
                        message: "standby".into(),
                    };
                }
                Step::StartSession(SessionKind::Online { .. }) => {
                    self.observed.session = SessionState::InBackup {
                        begin_lsn: "0/3000028".into(),
                        server: server(),
                    }
                }
                Step::StartSession(SessionKind::Checkpoint) => {
                    self.observed.session = SessionState::Checkpointed {
                        redo_lsn: "0/4000028".into(),
                        timeline: 2,
                        server: server(),
                    }
                }
                Step::StopSession => {
                    if let SessionState::InBackup { .. } = self.observed.session {
                        let label = parse_backup_label(LABEL).expect("label");
                        self.observed.session = SessionState::Stopped(StoppedBackup {
                            end_lsn: "0/3000138".into(),
                            label_file: LABEL.into(),
                            tablespace_map: String::new(),
                            label,
                        });
                    }
                }
                Step::EndSession => self.observed.session = SessionState::Absent,
                Step::CreateSnapshots(objects) => {
                    for object in objects {
                        if !self
                            .observed
                            .snapshots
                            .iter()
                            .any(|s| s.name_any() == object.name_any())
                        {
                            self.observed.snapshots.push(object.clone());
                        }
                    }
                }
                Step::AnnotateSnapshots(annotations) => {
                    for snapshot in &mut self.observed.snapshots {
                        snapshot
                            .metadata
                            .annotations
                            .get_or_insert_default()
                            .extend(annotations.clone());
                    }
                }
                Step::DeleteSnapshots(names) => {
                    self.observed
                        .snapshots
                        .retain(|s| !names.contains(&s.name_any()));
                }
                Step::CreateRecordJob(job) => {
                    // The Job runs `pgbackup record-snapshot` with the record it carries.
                    let record = job_env(job, "PGBACKUP_SNAPSHOT_RECORD");
                    self.recorded = Some(serde_json::from_str(&record).expect("record"));
                    self.observed.record_job = Some(JobState::Active {
                        started: None,
                        stuck: None,
                    });
                }
                Step::Scale { replicas, original } => {
                    let sts = self.observed.references.stateful_set.as_mut().expect("sts");
                    sts.spec.as_mut().expect("spec").replicas = Some(*replicas);
                    let annotations = sts.metadata.annotations.get_or_insert_default();
                    match original {
                        Some(n) => {
                            annotations
                                .insert(build::ANNOTATION_ORIGINAL_REPLICAS.into(), n.to_string());
                            annotations.insert(
                                build::ANNOTATION_SCALED_DOWN_BY.into(),
                                "VolumeSnapshotBackup/snap".into(),
                            );
                        }
                        None => {
                            annotations.remove(build::ANNOTATION_ORIGINAL_REPLICAS);
                            annotations.remove(build::ANNOTATION_SCALED_DOWN_BY);
                        }
                    }
                }
            }
        }
    }

    /// Time passes: pods follow the replica count, snapshots are cut, then ready, the
    /// record Job finishes.
    fn tick(&mut self) {
        self.now += jiff::SignedDuration::from_secs(5);
        if let (Some(JobState::Active { .. }), Some(record)) =
            (&self.observed.record_job, &self.recorded)
        {
            self.observed.record_job = Some(if self.record_fails {
                JobState::Failed {
                    reason: "RepositoryError".into(),
                    message: "bucket not found".into(),
                    finished: None,
                }
            } else {
                JobState::Succeeded {
                    started: None,
                    finished: None,
                    result: Some(
                        serde_json::json!({"backupId": record.backup_id, "location": "s3://b/x/manifest.json"})
                            .to_string(),
                    ),
                }
            });
        }
        let replicas = self.replicas();
        self.observed.pods = (0..replicas)
            .map(|i| pod(&format!("pg-{i}"), true))
            .collect();
        for snapshot in &mut self.observed.snapshots {
            let status = snapshot.status.get_or_insert(VolumeSnapshotStatus {
                bound_volume_snapshot_content_name: None,
                creation_time: None,
                error: None,
                ready_to_use: None,
                restore_size: None,
                volume_group_snapshot_name: None,
            });
            if status.creation_time.is_some() {
                status.ready_to_use = Some(true);
                status.restore_size = Some("10Gi".into());
            } else {
                status.creation_time = Some(self.now.to_string());
            }
        }
    }
}

/// An environment variable of a Job's container.
fn job_env(job: &Job, name: &str) -> String {
    let container = &job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
        .containers[0];
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{name} not set"))
}

/// One reconcile: the plan against the world, its steps applied, its status kept.
fn reconcile(backup: &mut VolumeSnapshotBackup, world: &mut World) -> Plan {
    let plan = plan(
        backup,
        &world.observed,
        &AgentSettings::default(),
        world.now,
    );
    world.apply(&plan.steps);
    backup.status = Some(plan.status.clone());
    plan
}

fn phase(backup: &VolumeSnapshotBackup) -> Option<BackupPhase> {
    backup.status.as_ref().and_then(|s| s.phase)
}

fn stage(backup: &VolumeSnapshotBackup) -> Option<SnapshotStage> {
    backup.status.as_ref().and_then(|s| s.stage)
}

fn ready(status: &VolumeSnapshotBackupStatus) -> (String, String) {
    let c = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
    (c.status.clone(), c.reason.clone())
}

/// Reconciles (with time passing) until the backup finishes; the Events on the way.
fn run_to_end(backup: &mut VolumeSnapshotBackup, world: &mut World) -> Vec<Note> {
    let mut events = Vec::new();
    for _ in 0..40 {
        let plan = reconcile(backup, world);
        events.extend(plan.event);
        if plan.requeue.is_none() {
            return events;
        }
        world.tick();
    }
    panic!("the backup did not finish: {:?}", backup.status);
}

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
                        assert_eq!(world.observed.snapshots.len(), 2, "{case}");
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
                    // Deleted while running: nothing half-made stays.
                    _ if matches!(fault, Fault::Deleted) => {
                        assert!(world.observed.snapshots.is_empty(), "{case}");
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
        ("online", "InvalidSpec", |b, _| {
            b.spec.target.pod = Some("other-0".into())
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
fn deleting_a_completed_backup_deletes_snapshots_only_when_asked() {
    let mut backup = backup("checkpoint", serde_json::json!({}));
    let mut world = World::new(1);
    run_to_end(&mut backup, &mut world);
    let (steps, _) = cleanup(&backup, &world.observed, false);
    assert!(steps.is_empty(), "{steps:?}");
    let (steps, _) = cleanup(&backup, &world.observed, true);
    assert_eq!(
        steps,
        [Step::DeleteSnapshots(vec![
            "snap-data".into(),
            "snap-wal".into()
        ])]
    );
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
    let record = world.recorded.expect("recorded");
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
    assert_eq!(world.observed.snapshots.len(), 2);
}

#[test]
fn offline_snapshots_cannot_be_recorded() {
    let backup = backup(
        "offline",
        serde_json::json!({"repository": {"s3": {"bucket": "b"}}}),
    );
    let world = World::new(1);
    let problem = check(&backup, &world.observed).expect_err("refused");
    assert_eq!(problem.reason, "InvalidSpec");
}
