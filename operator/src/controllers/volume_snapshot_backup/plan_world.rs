//! A simulated cluster and database for the plan's tests: the plan's steps change it as
//! `mod.rs` would make them, and time passing cuts snapshots, makes them ready and ends
//! Jobs.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job, core::v1::Pod};

use kube::ResourceExt;

use super::*;
use crate::{
    api::{VolumeSnapshotBackupSpec, find_condition},
    controllers::volume_snapshot_backup::build,
    k8s::{fixtures::references, generated::volume_snapshot::VolumeSnapshotStatus},
    postgres::ServerInfo,
    postgres::StoppedBackup,
    postgres::parse_backup_label,
};

pub(super) const LABEL: &str = "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n\
    CHECKPOINT LOCATION: 0/3000060\n\
    BACKUP METHOD: streamed\n\
    BACKUP FROM: primary\n\
    START TIME: 2026-11-21 10:30:00 UTC\n\
    LABEL: pgbackup shop/snap\n\
    START TIMELINE: 1\n";

pub(super) fn server() -> ServerInfo {
    ServerInfo {
        version: "16.4".into(),
        version_num: 160004,
        system_identifier: Some("7300000000000000001".into()),
        in_recovery: false,
        wal_segment_size: 16 * 1024 * 1024,
    }
}

pub(super) fn start() -> Timestamp {
    "2026-11-21T10:30:00Z".parse().expect("time")
}

pub(super) fn backup(mode: &str, extra: serde_json::Value) -> VolumeSnapshotBackup {
    let mut spec = serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "volumeSnapshotClassName": "csi-snap",
        "mode": mode,
    });
    // A separate WAL volume, except where the mode refuses it.
    if mode != "checkpoint" {
        spec["includeVolumes"] = serde_json::json!(["wal"]);
    }
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

pub(super) fn stateful_set(replicas: i32) -> StatefulSet {
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

pub(super) fn pod(name: &str, ready: bool) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "pg"}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .expect("pod")
}

/// The cluster and database as the plan sees them, changed by the plan's steps and by
/// time: a snapshot is cut one reconcile after it is made and ready one after that.
#[derive(Clone, Debug)]
pub(super) struct World {
    pub(super) observed: Observed,
    pub(super) now: Timestamp,
    /// Whether the next `StartSession` reaches a standby.
    pub(super) standby: bool,
    /// What the record Job was given.
    pub(super) recorded: Option<crate::agent::record_snapshot::SnapshotRecord>,
    /// Whether the record Job fails.
    pub(super) record_fails: bool,
    /// The record Job as made.
    pub(super) record_job_made: Option<Box<k8s_openapi::api::batch::v1::Job>>,
}

impl World {
    pub(super) fn new(replicas: i32) -> Self {
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
                class_retains: false,
                record_job: None,
                foreign_snapshots: Vec::new(),
                session: SessionState::Absent,
                snapshots: Vec::new(),
            },
            now: start(),
            standby: false,
            recorded: None,
            record_job_made: None,
            record_fails: false,
        }
    }

    /// The StatefulSet's PostgreSQL container.
    pub(super) fn database_container(&mut self) -> &mut k8s_openapi::api::core::v1::Container {
        let sts = self.observed.references.stateful_set.as_mut().expect("sts");
        let pod = sts
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("pod");
        pod.containers
            .iter_mut()
            .find(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|i| i.starts_with("postgres"))
            })
            .expect("a PostgreSQL container")
    }

    pub(super) fn replicas(&self) -> i32 {
        build::replicas(self.observed.references.stateful_set.as_ref().expect("sts"))
    }

    pub(super) fn sts_annotations(&self) -> BTreeMap<String, String> {
        self.observed
            .references
            .stateful_set
            .as_ref()
            .and_then(|s| s.metadata.annotations.clone())
            .unwrap_or_default()
    }

    pub(super) fn apply(&mut self, steps: &[Step]) {
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
                    self.record_job_made = Some(job.clone());
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
    pub(super) fn tick(&mut self) {
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
                    result: Some({
                        let mut report = serde_json::json!({"backupId": record.backup_id, "location": "s3://b/x/manifest.json"});
                        // An offline snapshot's copy tells its positions.
                        if record.begin_lsn.is_empty() {
                            report["readFromCopy"] = serde_json::json!({"timeline": 1, "beginLsn": "0/5000028",
                                "serverVersion": "16", "systemIdentifier": "7300000000000000001", "walSegmentSize": 16777216});
                        }
                        report.to_string()
                    }),
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
pub(super) fn job_env(job: &Job, name: &str) -> String {
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
pub(super) fn reconcile(backup: &mut VolumeSnapshotBackup, world: &mut World) -> Plan {
    reconcile_losing_status(backup, world, false)
}

/// One reconcile as `mod.rs` makes it: the object steps, then the status write (which
/// fails with `lose_status`, ending the reconcile), then the session steps.
pub(super) fn reconcile_losing_status(
    backup: &mut VolumeSnapshotBackup,
    world: &mut World,
    lose_status: bool,
) -> Plan {
    let plan = plan(
        backup,
        &world.observed,
        &AgentSettings::default(),
        world.now,
    );
    let (session, objects): (Vec<Step>, Vec<Step>) =
        plan.steps.iter().cloned().partition(Step::is_session);
    world.apply(&objects);
    if lose_status {
        return plan;
    }
    backup.status = Some(plan.status.clone());
    world.apply(&session);
    plan
}

pub(super) fn phase(backup: &VolumeSnapshotBackup) -> Option<BackupPhase> {
    backup.status.as_ref().and_then(|s| s.phase)
}

pub(super) fn stage(backup: &VolumeSnapshotBackup) -> Option<SnapshotStage> {
    backup.status.as_ref().and_then(|s| s.stage)
}

pub(super) fn ready(status: &VolumeSnapshotBackupStatus) -> (String, String) {
    let c = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
    (c.status.clone(), c.reason.clone())
}

/// Reconciles (with time passing) until the backup finishes; the Events on the way.
pub(super) fn run_to_end(backup: &mut VolumeSnapshotBackup, world: &mut World) -> Vec<Note> {
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
