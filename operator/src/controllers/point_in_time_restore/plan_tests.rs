//! Tests of the PointInTimeRestore plan, phase by phase, on fixtures of what the cluster holds.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::ResourceExt;

use super::*;
use crate::{
    api::{PointInTimeRestoreSpec, RestorePhase, find_condition},
    k8s::{fixtures::references, scale::ANNOTATION_SCALED_DOWN_BY},
};

fn start() -> Timestamp {
    "2026-11-21T13:00:00Z".parse().expect("time")
}

fn restore(mode: &str, extra: serde_json::Value) -> PointInTimeRestore {
    let mut spec = serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}, "dataSubPath": "pgdata"},
        "source": {"postgresBackup": "nightly"},
        "recoveryTarget": {"time": "2026-11-21T12:00:00Z"},
        "mode": mode,
        "confirm": mode == "inPlace",
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let spec: PointInTimeRestoreSpec = serde_json::from_value(spec).expect("spec");
    let mut restore = PointInTimeRestore::new("back-to-noon", spec);
    restore.metadata.namespace = Some("shop".into());
    restore.metadata.uid = Some("uid-restore".into());
    restore.metadata.generation = Some(1);
    restore
}

fn stateful_set(replicas: i32) -> StatefulSet {
    let mut sts = references("postgres:16.4").stateful_set.expect("fixture");
    let spec = sts.spec.as_mut().expect("spec");
    spec.replicas = Some(replicas);
    spec.volume_claim_templates = Some(vec![
        serde_json::from_value(serde_json::json!({"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .expect("claim"),
    ]);
    sts
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "pg"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "postgresql"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("pod")
}

fn source(phase: &str, method: &str) -> SourceObject {
    let mut backup = crate::k8s::fixtures::backup(method);
    backup.metadata.name = Some("nightly".into());
    backup.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": phase, "backupId": "20261121T020000Z", "message": "the backup's own words",
            "sha256": "5e".repeat(32)
        }))
        .expect("status"),
    );
    SourceObject::Backup(Some(Box::new(backup)))
}

/// A completed online VolumeSnapshotBackup recorded in a repository.
fn snapshot_source() -> SourceObject {
    let mut snapshot: crate::api::VolumeSnapshotBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": "snap", "namespace": "shop"},
        "spec": {"target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
                 "repository": {"s3": {"bucket": "b", "credentialsSecret": {"name": "s3-keys"}}}}
    }))
    .expect("snapshot");
    snapshot.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Completed", "backupId": "20261121T030000Z", "backupLabel": "START WAL LOCATION: …",
            "snapshots": [{"name": "snap-data", "claimName": "data-pg-0", "readyToUse": true, "restoreSize": "5Gi"}]
        }))
        .expect("status"),
    );
    SourceObject::Snapshot(Some(Box::new(snapshot)))
}

/// The cluster as the plan sees it, changed by its steps; time passing runs Jobs and moves
/// pods. `fail` names the Job steps (`validate`, `restore`, …) that fail.
struct World {
    observed: Observed,
    now: Timestamp,
    fail: Vec<&'static str>,
    verification_fails: bool,
    /// The cluster the restored server says it is.
    system_identifier: &'static str,
    /// Job steps whose pod never starts.
    stuck: Vec<&'static str>,
    /// Whether the StatefulSet's pods never stop.
    pods_hang: bool,
    history: Vec<Step>,
}

impl World {
    fn new(replicas: i32) -> Self {
        let mut refs = references("postgres:16.4");
        refs.stateful_set = Some(stateful_set(replicas));
        Self {
            observed: Observed {
                references: refs,
                pods: (0..replicas).map(|i| pod(&format!("pg-{i}"))).collect(),
                claims: (0..replicas).map(|i| format!("data-pg-{i}")).collect(),
                source: source("Completed", "physical"),
                rivals: Vec::new(),
                jobs: BTreeMap::new(),
                clone: None,
                clone_pods: Vec::new(),
                verification: None,
                target_cluster: Some(Ok("7300000000000000001".into())),
                restore_pods: 0,
                refused: None,
                stored_stateful_set: None,
                snapshot_pick: None,
                snapshot_storage: Vec::new(),
                claim_limits: None,
                volumes: Default::default(),
            },
            now: start(),
            fail: Vec::new(),
            verification_fails: false,
            system_identifier: "7300000000000000001",
            stuck: Vec::new(),
            pods_hang: false,
            history: Vec::new(),
        }
    }

    fn sts(&self) -> &StatefulSet {
        self.observed.references.stateful_set.as_ref().expect("sts")
    }

    fn replicas(&self) -> i32 {
        self.sts()
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
    }

    fn apply(&mut self, steps: &[Step]) {
        for step in steps {
            self.history.push(step.clone());
            match step {
                Step::CreateJob(job) => {
                    self.observed
                        .jobs
                        .entry(job.name_any())
                        .or_insert(JobState::Active {
                            started: None,
                            stuck: None,
                        });
                }
                Step::Scale { replicas, record } => {
                    let sts = self.observed.references.stateful_set.as_mut().expect("sts");
                    sts.spec.as_mut().expect("spec").replicas = Some(*replicas);
                    let annotations = sts.metadata.annotations.get_or_insert_default();
                    match record {
                        Some(n) => {
                            annotations
                                .insert("pgbackup.io/original-replicas".into(), n.to_string());
                            annotations.insert(
                                ANNOTATION_SCALED_DOWN_BY.into(),
                                "PointInTimeRestore/back-to-noon".into(),
                            );
                        }
                        None => {
                            annotations.clear();
                        }
                    }
                }
                Step::DeleteJob(name) => {
                    self.observed.jobs.remove(name);
                }
                Step::CreateClaim(claim) => {
                    let name = claim.name_any();
                    self.observed.claims.push(name.clone());
                    // The storage binds it at once: to the volume it names, or a new one.
                    let mut seen =
                        crate::controllers::point_in_time_restore::volumes::ClaimSeen::of(
                            claim,
                            "uid-restore",
                        );
                    let volume = seen
                        .volume
                        .clone()
                        .unwrap_or_else(|| format!("pv-made-for-{name}"));
                    seen.volume = Some(volume.clone());
                    seen.bound = true;
                    self.observed.volumes.claims.insert(name.clone(), seen);
                    let persistent = self.observed.volumes.persistent.entry(volume).or_insert(
                        crate::controllers::point_in_time_restore::volumes::VolumeSeen {
                            reclaim_policy: "Delete".into(),
                            ..Default::default()
                        },
                    );
                    persistent.claim_uid = Some(format!("uid-of-{name}"));
                }
                Step::DeleteClaim(name) => {
                    self.observed.volumes.claims.remove(name);
                    self.observed.claims.retain(|c| c != name);
                }
                Step::PatchVolume(name, patch) => {
                    let volume = self
                        .observed
                        .volumes
                        .persistent
                        .get_mut(name)
                        .expect("a volume that exists");
                    if let Some(policy) = patch["spec"]["persistentVolumeReclaimPolicy"].as_str() {
                        volume.reclaim_policy = policy.into();
                    }
                    if patch["spec"]["claimRef"].is_object() {
                        volume.claim_uid = None;
                    }
                    if let Some(by) = patch["metadata"]["annotations"]
                        [crate::controllers::point_in_time_restore::volumes::ANNOTATION_REPLACED_BY]
                        .as_str()
                    {
                        volume.replaced_by = Some(by.into());
                    }
                }
                Step::CreateClone(_, clone) => self.observed.clone = Some((**clone).clone()),
            }
        }
    }

    /// Time passes: Jobs end, pods follow replicas, the server answers.
    fn tick(&mut self, phase: Option<RestorePhase>) {
        self.now += jiff::SignedDuration::from_secs(5);
        let names: Vec<String> = self.observed.jobs.keys().cloned().collect();
        for name in names {
            if !matches!(self.observed.jobs[&name], JobState::Active { .. }) {
                continue;
            }
            let step = name
                .trim_start_matches("back-to-noon-")
                .trim_end_matches("-uidresto");
            let step_kind = step.split('-').next().unwrap_or(step);
            if self.stuck.contains(&step) {
                self.observed.jobs.insert(
                    name,
                    JobState::Active {
                        started: None,
                        stuck: Some(("ImagePullBackOff".into(), "no such image".into())),
                    },
                );
                continue;
            }
            let state = if self.fail.iter().any(|f| *f == step || *f == step_kind) {
                JobState::Failed {
                    reason: if step == "validate" {
                        "InvalidRequest".into()
                    } else {
                        "PostgresToolFailed".into()
                    },
                    message: format!(
                        "{step} failed: target is after the end of the recoverability window"
                    ),
                    finished: None,
                }
            } else {
                let result = match step {
                    "validate" => {
                        serde_json::json!({"backupId": "20261121T020000Z", "serverVersion": "16.4",
                            "systemIdentifier": "7300000000000000001"})
                        .to_string()
                    }
                    "restore" => serde_json::json!({"reachedLsn": "0/5000100", "timeline": 2,
                        "lastTransaction": "2026-11-21 11:59:58.123456+00"})
                    .to_string(),
                    _ => "done".into(),
                };
                JobState::Succeeded {
                    started: None,
                    finished: None,
                    result: Some(result),
                }
            };
            self.observed.jobs.insert(name, state);
        }
        if !self.pods_hang {
            self.observed.pods = (0..self.replicas())
                .map(|i| pod(&format!("pg-{i}")))
                .collect();
        }
        if let Some(clone) = &self.observed.clone {
            self.observed.clone_pods = vec![pod(&format!("{}-0", clone.name_any()))];
        }
        self.observed.verification = (phase == Some(RestorePhase::Verifying)).then(|| {
            if self.verification_fails {
                Err("connection refused".into())
            } else {
                Ok(ServerState {
                    in_recovery: false,
                    lsn: Some("0/5000200".into()),
                    timeline: Some(2),
                    system_identifier: Some(self.system_identifier.into()),
                    note: None,
                })
            }
        });
    }
}

fn reconcile(restore: &mut PointInTimeRestore, world: &mut World) -> Plan {
    let plan = plan(
        restore,
        &world.observed,
        &AgentSettings::default(),
        world.now,
    );
    world.apply(&plan.steps);
    restore.status = Some(plan.status.clone());
    plan
}

fn phase(restore: &PointInTimeRestore) -> Option<RestorePhase> {
    restore.status.as_ref().and_then(|s| s.phase)
}

/// Reconciles until the restore finishes; the phases it went through.
fn run(restore: &mut PointInTimeRestore, world: &mut World) -> Vec<RestorePhase> {
    let mut phases: Vec<RestorePhase> = Vec::new();
    for _ in 0..400 {
        let plan = reconcile(restore, world);
        if let Some(p) = phase(restore)
            && phases.last() != Some(&p)
        {
            phases.push(p);
        }
        if plan.requeue.is_none() {
            return phases;
        }
        world.tick(phase(restore));
    }
    panic!("the restore did not finish: {:?}", restore.status);
}

/// Reconciles, letting time pass between reconciles, until `reached` holds after one.
fn advance_until(
    restore: &mut PointInTimeRestore,
    world: &mut World,
    reached: impl Fn(&PointInTimeRestore, &World) -> bool,
) {
    for _ in 0..50 {
        reconcile(restore, world);
        if reached(restore, world) {
            return;
        }
        world.tick(phase(restore));
    }
    panic!("never reached: {:?}", restore.status);
}

fn jobs_created(world: &World) -> Vec<Job> {
    world
        .history
        .iter()
        .filter_map(|s| match s {
            Step::CreateJob(job) => Some((**job).clone()),
            _ => None,
        })
        .collect()
}

fn args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

fn ready_reason(restore: &PointInTimeRestore) -> (String, String) {
    let status = restore.status.as_ref().expect("status");
    let c = find_condition(&status.conditions, CONDITION_READY).expect("Ready");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn an_in_place_restore_goes_through_every_phase_and_puts_the_replicas_back() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(3);
    let phases = run(&mut restore, &mut world);
    assert_eq!(
        phases,
        [
            RestorePhase::Validating,
            RestorePhase::ScalingDown,
            RestorePhase::Restoring,
            RestorePhase::ScalingUp,
            RestorePhase::Verifying,
            RestorePhase::Completed
        ]
    );
    let status = restore.status.clone().expect("status");
    assert_eq!(ready_reason(&restore), ("True".into(), "Completed".into()));
    assert_eq!(status.base_backup.as_deref(), Some("20261121T020000Z"));
    assert_eq!(status.original_replicas, Some(3));
    assert_eq!(status.reached_lsn.as_deref(), Some("0/5000100"));
    assert_eq!(status.reached_timeline, Some(2));
    assert_eq!(
        status.last_transaction_time.map(|t| t.0.to_string()),
        Some("2026-11-21T11:59:58.123456Z".into())
    );
    assert_eq!(
        status.connection.as_deref(),
        Some("pg-0.pg-headless.shop.svc:5432")
    );
    assert_eq!(world.replicas(), 3, "back to the original count");
    assert!(world.sts().annotations().is_empty(), "no record left");

    let jobs = jobs_created(&world);
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    assert_eq!(
        names,
        [
            "back-to-noon-validate-uidresto",
            "back-to-noon-restore-uidresto",
            "back-to-noon-discard-uidresto",
            "back-to-noon-reinit-1-uidresto",
            "back-to-noon-reinit-2-uidresto"
        ]
    );
    let validate = args(&jobs[0]);
    assert_eq!(&validate[..2], ["restore", "--dry-run"]);
    assert!(
        validate
            .windows(2)
            .any(|w| w == ["--target-time", "2026-11-21T12:00:00Z"])
    );
    assert!(
        validate
            .windows(2)
            .any(|w| w == ["--backup", "20261121T020000Z"])
    );
    // Both restore only the manifest the PostgresBackup recorded.
    let pinned = ["--expect-sha256".to_string(), "5e".repeat(32)];
    assert!(validate.windows(2).any(|w| w == pinned), "{validate:?}");
    let restore_args = args(&jobs[1]);
    assert!(
        restore_args.windows(2).any(|w| w == pinned),
        "{restore_args:?}"
    );
    for pair in [
        ["--backup", "20261121T020000Z"],
        ["--set-aside", "back-to-noon-uidresto"],
        // The database answered as the backup's cluster: a wiped volume still restores.
        ["--expect-cluster", "7300000000000000001"],
    ] {
        assert!(
            restore_args.windows(2).any(|w| w == pair),
            "{restore_args:?}"
        );
    }
    assert!(
        restore_args.contains(&"--recover".to_string())
            && restore_args.contains(&"--json".to_string())
    );
    let pod = jobs[1]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    let claim = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .expect("claim");
    assert_eq!(claim.claim_name, "data-pg-0");
    let pgdata = pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PGBACKUP_PGDATA")
        .and_then(|e| e.value.clone());
    assert_eq!(pgdata.as_deref(), Some("/var/lib/pgbackup/volume/pgdata"));
    assert_eq!(
        args(&jobs[3])[..2],
        ["data-dir", "empty"],
        "replicas emptied only once proven"
    );
    let discard = jobs[2]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    assert_eq!(
        discard.node_name.as_deref(),
        Some("node-a"),
        "beside the running primary"
    );

    // Scaled to 0 before the restore Job, to 1 for verification, to 3 after the discard.
    let scales: Vec<(i32, Option<i32>)> = world
        .history
        .iter()
        .filter_map(|s| match s {
            Step::Scale { replicas, record } => Some((*replicas, *record)),
            _ => None,
        })
        .collect();
    assert_eq!(scales, [(0, Some(3)), (1, Some(3)), (3, None)]);
}

/// What goes wrong in a restore, after the StatefulSet was scaled down.
#[derive(Clone, Copy, Debug)]
enum Fault {
    RestoreFails,
    RestorePodStuck,
    PrimaryNotVerified,
    WrongServerAnswers,
    PodsNeverStop,
}

#[test]
fn a_failure_at_every_phase_after_scaling_down_rolls_back_to_the_original_replicas() {
    for fault in [
        Fault::RestoreFails,
        Fault::RestorePodStuck,
        Fault::PrimaryNotVerified,
        Fault::WrongServerAnswers,
        Fault::PodsNeverStop,
    ] {
        let mut restore = restore("inPlace", serde_json::json!({}));
        let mut world = World::new(3);
        match fault {
            Fault::RestoreFails => world.fail = vec!["restore"],
            Fault::RestorePodStuck => world.stuck = vec!["restore"],
            Fault::PrimaryNotVerified => world.verification_fails = true,
            Fault::WrongServerAnswers => world.system_identifier = "7399999999999999999",
            Fault::PodsNeverStop => world.pods_hang = true,
        }
        let phases = run(&mut restore, &mut world);
        let case = format!("{fault:?}: {phases:?} {:?}", restore.status);
        assert_eq!(phase(&restore), Some(RestorePhase::RolledBack), "{case}");
        assert!(
            matches!(fault, Fault::PodsNeverStop) || phases.contains(&RestorePhase::RollingBack),
            "{case}"
        );
        assert_eq!(world.replicas(), 3, "{case}");
        assert!(world.sts().annotations().is_empty(), "{case}");
        let put_back = jobs_created(&world)
            .into_iter()
            .find(|j| j.name_any() == "back-to-noon-put-back-uidresto");
        match fault {
            // Nothing touched the data: no put-back needed.
            Fault::PodsNeverStop => assert!(put_back.is_none(), "{case}"),
            _ => {
                let put_back = put_back.expect("put-back");
                assert_eq!(args(&put_back)[..2], ["data-dir", "put-back"]);
                assert!(
                    put_back.metadata.owner_references.is_none(),
                    "survives a foreground deletion"
                );
            }
        }
        if matches!(fault, Fault::RestorePodStuck) {
            assert!(
                world
                    .history
                    .contains(&Step::DeleteJob("back-to-noon-restore-uidresto".into())),
                "the stuck restore Job is stopped before the old data goes back: {case}"
            );
        }
        assert!(
            !jobs_created(&world)
                .iter()
                .any(|j| j.name_any().contains("reinit")),
            "replicas are never emptied for a restore that was not proven: {case}"
        );
        let (status, _) = ready_reason(&restore);
        assert_eq!(status, "False");
        let s = restore.status.as_ref().expect("status");
        assert!(
            find_condition(&s.conditions, CONDITION_FAILED).is_some_and(|c| c.status == "True")
        );
    }
}

#[test]
fn putting_back_that_fails_still_scales_back_and_says_where_the_old_data_is() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(2);
    world.fail = vec!["restore", "put"];
    run(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::RolledBack));
    assert_eq!(world.replicas(), 2, "never left at 0");
    let message = restore
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(".pgbackup-aside-back-to-noon") && message.contains("data-pg-0"),
        "{message}"
    );
}

/// Bad input: a condition, and the StatefulSet exactly as it was.
#[test]
fn bad_input_ends_with_a_condition_and_no_change_to_the_stateful_set() {
    type Breaker = fn(&mut PointInTimeRestore, &mut World);
    let cases: Vec<(&str, Breaker)> = vec![
        ("TargetNotRestorable", |_, w| w.fail = vec!["validate"]),
        ("NotConfirmed", |r, _| r.spec.confirm = false),
        ("SourceFailed", |_, w| {
            w.observed.source = source("Failed", "physical")
        }),
        ("LogicalSource", |_, w| {
            w.observed.source = source("Completed", "logical")
        }),
        ("SourceNotFound", |_, w| {
            w.observed.source = SourceObject::Backup(None)
        }),
        ("StatefulSetNotFound", |_, w| {
            w.observed.references.stateful_set = None
        }),
        ("RestoreInProgress", |_, w| {
            w.observed.rivals = vec!["earlier".into()]
        }),
        ("SourceNotFound", |_, w| {
            w.observed.source = SourceObject::Snapshot(None)
        }),
        ("VolumesNotAllowed", |_, w| {
            w.observed.source = snapshot_source();
            w.observed.volumes.forbidden = true;
        }),
        ("ClaimsDeletedWhenScaled", |_, w| {
            let sts = w.observed.references.stateful_set.as_mut().expect("sts");
            crate::k8s::fixtures::delete_claims_when_scaled(sts);
        }),
        ("DataSubPathMismatch", |_, w| {
            let sts = w.observed.references.stateful_set.as_mut().expect("sts");
            let pod = sts
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("pod");
            pod.containers[1].volume_mounts =
                Some(vec![serde_json::from_value(
                serde_json::json!({"name": "data", "mountPath": "/var/lib/postgresql/data"}),
            )
            .expect("mount")]);
        }),
        ("VersionMismatch", |_, w| {
            let sts = w.observed.references.stateful_set.as_mut().expect("sts");
            let pod = sts
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("pod");
            pod.containers[1].image = Some("postgres:17.2".into());
        }),
    ];
    for (reason, breaker) in cases {
        let mut restore = restore("inPlace", serde_json::json!({}));
        let mut world = World::new(2);
        breaker(&mut restore, &mut world);
        let before = world.observed.references.stateful_set.clone();
        run(&mut restore, &mut world);
        assert_eq!(
            phase(&restore),
            Some(RestorePhase::Failed),
            "{reason}: {:?}",
            restore.status
        );
        assert_eq!(ready_reason(&restore), ("False".into(), reason.into()));
        assert_eq!(
            world.observed.references.stateful_set, before,
            "{reason}: the StatefulSet changed"
        );
        assert!(
            !world
                .history
                .iter()
                .any(|s| matches!(s, Step::Scale { .. })),
            "{reason}"
        );
    }
    // A source still running: the restore waits, touching nothing.
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(2);
    world.observed.source = source("Running", "physical");
    let plan = reconcile(&mut restore, &mut world);
    assert!(plan.steps.is_empty());
    assert_eq!(phase(&restore), Some(RestorePhase::Validating));
    assert_eq!(
        ready_reason(&restore),
        ("False".into(), "SourceNotReady".into())
    );
}

#[test]
fn a_restarted_operator_resumes_at_every_phase_without_repeating_work() {
    // A second reconcile of the same state (what a restarted operator does) never adds a
    // step the first did not, and the restore still completes.
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(2);
    for _ in 0..200 {
        let first = plan(
            &restore,
            &world.observed,
            &AgentSettings::default(),
            world.now,
        );
        let again = {
            let mut after = restore.clone();
            after.status = Some(first.status.clone());
            let mut w2 = World::new(2);
            w2.observed = world.observed.clone();
            w2.apply(&first.steps);
            plan(&after, &w2.observed, &AgentSettings::default(), world.now)
        };
        assert!(
            again
                .steps
                .iter()
                .all(|s| !matches!(s, Step::CreateJob(_)) || !first.steps.contains(s)),
            "a Job made twice at {:?}",
            phase(&restore)
        );
        let done = first.requeue.is_none();
        world.apply(&first.steps);
        restore.status = Some(first.status);
        if done {
            break;
        }
        world.tick(phase(&restore));
    }
    assert_eq!(phase(&restore), Some(RestorePhase::Completed));
}

#[test]
fn a_clone_restore_leaves_the_source_alone_and_says_how_to_connect() {
    let mut restore = restore("clone", serde_json::json!({}));
    let mut world = World::new(2);
    let phases = run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::Completed),
        "{phases:?} {:?}",
        restore.status
    );
    assert!(
        !world
            .history
            .iter()
            .any(|s| matches!(s, Step::Scale { .. })),
        "the source is not scaled"
    );
    let claim = world.history.iter().find_map(|s| match s {
        Step::CreateClaim(c) => Some(c.name_any()),
        _ => None,
    });
    assert_eq!(claim.as_deref(), Some("data-pg-back-to-noon-0"));
    let restore_job = jobs_created(&world)
        .into_iter()
        .find(|j| j.name_any() == "back-to-noon-restore-uidresto")
        .expect("job");
    assert!(!args(&restore_job).contains(&"--set-aside".to_string()));
    let clone = world.observed.clone.clone().expect("clone");
    let spec = clone.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.template
            .spec
            .as_ref()
            .and_then(|p| p.automount_service_account_token),
        Some(false),
        "a clone gets no ServiceAccount token"
    );
    assert_eq!(spec.service_name.as_deref(), Some("pg-back-to-noon"));
    let selector = spec.selector.match_labels.expect("selector");
    assert_eq!(
        selector["app"], "pg-back-to-noon",
        "the source's Service selects {{app: pg}} only"
    );
    assert_eq!(
        restore.status.and_then(|s| s.connection).as_deref(),
        Some("pg-back-to-noon-0.pg-back-to-noon.shop.svc:5432")
    );
}

#[test]
fn a_clone_of_a_stateful_set_that_is_gone_is_made_from_the_one_stored_with_the_backup() {
    // The observer put the stored StatefulSet where the live one was.
    let mut restore = restore("clone", serde_json::json!({}));
    let mut world = World::new(1);
    world.observed.pods.clear();
    world.observed.stored_stateful_set = Some(Ok("nightly".into()));
    advance_until(&mut restore, &mut world, |r, _| {
        phase(r) == Some(RestorePhase::Restoring)
    });
    let message = restore
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("made from the StatefulSet stored with PostgresBackup nightly"),
        "{message}"
    );

    // None can be used: refused, saying why.
    let mut restore = restore_named_again();
    restore.spec.mode = crate::api::RestoreMode::Clone;
    let mut world = World::new(1);
    world.observed.references.stateful_set = None;
    world.observed.stored_stateful_set = Some(Err(
        "the configuration stored with PostgresBackup nightly: its ConfigMap was changed after the backup recorded it: it is not used".into(),
    ));
    reconcile(&mut restore, &mut world);
    let (reason, message) = (
        ready_reason(&restore).1,
        restore
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .unwrap_or_default(),
    );
    assert_eq!(reason, "StatefulSetNotFound");
    assert!(message.contains("ConfigMap was changed"), "{message}");
}

#[test]
fn gitops_managed_stateful_sets_are_flagged_before_scaling() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(1);
    world
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts")
        .metadata
        .labels
        .get_or_insert_default()
        .insert("kustomize.toolkit.fluxcd.io/name".into(), "apps".into());
    reconcile(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    let c = find_condition(&status.conditions, CONDITION_GITOPS).expect("condition");
    assert!(
        c.message.contains("Flux") && c.message.contains("pause"),
        "{}",
        c.message
    );
    assert!(
        world
            .history
            .iter()
            .all(|s| !matches!(s, Step::Scale { .. })),
        "flagged before any scaling"
    );
}

#[test]
fn postgres_times_are_read() {
    assert_eq!(
        super::super::parse_postgres_time("2026-11-21 11:59:58.123456+00").map(|t| t.to_string()),
        Some("2026-11-21T11:59:58.123456Z".into())
    );
    assert_eq!(
        super::super::parse_postgres_time("2026-11-21 13:59:58+02").map(|t| t.to_string()),
        Some("2026-11-21T11:59:58Z".into())
    );
}

#[test]
fn a_clone_from_a_volume_snapshot_makes_its_claim_from_the_snapshot() {
    let mut restore = restore(
        "clone",
        serde_json::json!({"source": {"volumeSnapshotBackup": "snap"}}),
    );
    let mut world = World::new(1);
    world.observed.source = snapshot_source();
    run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::Completed),
        "{:?}",
        restore.status
    );
    let claim = world
        .history
        .iter()
        .find_map(|s| match s {
            Step::CreateClaim(c) => Some((**c).clone()),
            _ => None,
        })
        .expect("claim");
    let spec = claim.spec.expect("spec");
    let source = spec.data_source.expect("made from the snapshot");
    assert_eq!(
        (source.kind.as_str(), source.name.as_str()),
        ("VolumeSnapshot", "snap-data")
    );
    let jobs = jobs_created(&world);
    for job in &jobs[..2] {
        let a = args(job);
        assert!(a.contains(&"--snapshot-data".to_string()), "{a:?}");
    }
    let validate = args(&jobs[0]);
    assert!(
        validate
            .windows(2)
            .any(|w| w == ["--backup", "20261121T030000Z"]),
        "{validate:?}"
    );
    assert!(args(&jobs[1]).contains(&"--archive-off".to_string()));
}

#[test]
fn a_database_pod_that_comes_back_during_the_restore_stops_it_and_rolls_back() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(3);
    advance_until(&mut restore, &mut world, |_, world| {
        world
            .observed
            .jobs
            .get("back-to-noon-restore-uidresto")
            .is_some_and(|j| matches!(j, JobState::Active { .. }))
    });
    assert_eq!(phase(&restore), Some(RestorePhase::Restoring));

    // Argo CD's self-heal puts the replicas back while the restore Job writes PGDATA, and
    // the StatefulSet controller starts the database on the volume.
    let sts = world
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts");
    sts.spec.as_mut().expect("spec").replicas = Some(3);
    world.observed.pods = vec![pod("pg-0")];
    reconcile(&mut restore, &mut world);
    let status = restore.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::RollingBack), "{status:?}");
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("ScaledUpDuringRestore")
    );
    let message = status.message.as_deref().unwrap_or_default();
    assert!(message.contains("pg-0"), "{message}");
    assert!(
        world
            .history
            .contains(&Step::DeleteJob("back-to-noon-restore-uidresto".into())),
        "the restore Job is stopped at once"
    );
    assert_eq!(
        world.replicas(),
        0,
        "scaled down again before the old data goes back"
    );

    run(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::RolledBack));
    assert_eq!(world.replicas(), 3);
    let message = restore.status.as_ref().and_then(|s| s.message.clone());
    let message = message.unwrap_or_default();
    assert!(
        message.contains("came back while its data was being restored")
            && message.contains("the old data is back"),
        "the cause stays in the status to the end: {message}"
    );
    assert!(
        jobs_created(&world)
            .iter()
            .any(|j| j.name_any() == "back-to-noon-put-back-uidresto"),
        "the old data is put back"
    );
}

#[test]
fn an_object_the_api_server_refuses_ends_the_restore_with_its_words() {
    // A clone whose StatefulSet a quota refuses, and an in-place restore whose Job is.
    for mode in ["clone", "inPlace"] {
        let mut restore = restore(mode, serde_json::json!({}));
        let mut world = World::new(1);
        let wanted = if mode == "clone" {
            RestorePhase::ScalingUp
        } else {
            RestorePhase::Restoring
        };
        advance_until(&mut restore, &mut world, |restore, _| {
            phase(restore) == Some(wanted)
        });
        let words = "to create StatefulSet pg-back-to-noon: exceeded quota: sts, limited: count/statefulsets.apps=1";
        world.observed.refused = Some(words.into());
        reconcile(&mut restore, &mut world);
        world.observed.refused = None;
        run(&mut restore, &mut world);
        let status = restore.status.as_ref().expect("status");
        let expected = if mode == "clone" {
            RestorePhase::Failed
        } else {
            RestorePhase::RolledBack
        };
        assert_eq!(status.phase, Some(expected), "{mode}: {status:?}");
        assert_eq!(status.failure_reason.as_deref(), Some("Refused"), "{mode}");
        let message = status.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with(&format!("the API server refused {words}")),
            "{mode}: {message}"
        );
        assert_eq!(world.replicas(), 1, "{mode}: the source keeps its replicas");
    }
}

#[test]
fn a_reconcile_from_a_stale_cache_after_the_restore_neither_scales_down_nor_rolls_back() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(1);
    advance_until(&mut restore, &mut world, |restore, world| {
        phase(restore) == Some(RestorePhase::Restoring)
            && world
                .observed
                .jobs
                .contains_key("back-to-noon-restore-uidresto")
    });
    let stale = restore.clone();
    world.tick(phase(&restore)); // the restore Job succeeds
    reconcile(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::ScalingUp));
    world.tick(phase(&restore)); // the StatefulSet controller starts pg-0
    assert_eq!(world.replicas(), 1);

    // A reconcile of the object as the cache still had it, in Restoring.
    let mut stale = stale;
    let plan = reconcile(&mut stale, &mut world);
    assert!(
        matches!(
            phase(&stale),
            Some(RestorePhase::ScalingUp | RestorePhase::Verifying)
        ),
        "{:?}",
        stale.status
    );
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Scale { replicas: 0, .. })),
        "{:?}",
        plan.steps
    );
}

#[test]
fn a_backup_of_another_cluster_is_refused_before_anything_changes() {
    let only_validated = |world: &World| {
        let names: Vec<String> = jobs_created(world).iter().map(|j| j.name_any()).collect();
        assert_eq!(
            names,
            ["back-to-noon-validate-uidresto"],
            "{:?}",
            world.history
        );
        assert!(
            !world
                .history
                .iter()
                .any(|s| matches!(s, Step::Scale { .. } | Step::CreateClaim(_))),
            "{:?}",
            world.history
        );
    };
    for mode in ["clone", "inPlace"] {
        let mut restore = restore(mode, serde_json::json!({}));
        let mut world = World::new(1);
        world.observed.target_cluster = Some(Ok("7399999999999999999".into()));
        run(&mut restore, &mut world);
        assert_eq!(phase(&restore), Some(RestorePhase::Failed), "{mode}");
        assert_eq!(ready_reason(&restore).1, "OtherCluster", "{mode}");
        let message = restore.status.as_ref().and_then(|s| s.message.clone());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("7399999999999999999")
                    && m.contains("7300000000000000001")
                    && m.contains("allowOtherCluster")),
            "{message:?}"
        );
        only_validated(&world);
    }

    // A clone needs its source's cluster known.
    let mut clone = restore("clone", serde_json::json!({}));
    let mut world = World::new(1);
    world.observed.target_cluster = Some(Err("connection refused".into()));
    run(&mut clone, &mut world);
    assert_eq!(ready_reason(&clone).1, "ClusterUnknown");
    only_validated(&world);

    // Allowed by the restore's author: the clone is made.
    let mut clone = restore(
        "clone",
        serde_json::json!({"source": {"postgresBackup": "nightly", "allowOtherCluster": true}}),
    );
    let mut world = World::new(1);
    world.observed.target_cluster = None;
    run(&mut clone, &mut world);
    assert_eq!(
        phase(&clone),
        Some(RestorePhase::Completed),
        "{:?}",
        clone.status
    );

    // In place, a database that does not answer leaves the check to the restore Job,
    // which compares the backup with the data it replaces.
    let mut in_place = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(1);
    world.observed.target_cluster = Some(Err("connection refused".into()));
    run(&mut in_place, &mut world);
    assert_eq!(phase(&in_place), Some(RestorePhase::Completed));
    let restore_job = jobs_created(&world)
        .into_iter()
        .find(|j| j.name_any() == "back-to-noon-restore-uidresto")
        .expect("job");
    let args = args(&restore_job);
    assert!(
        args.windows(2).any(|w| w == ["--expect-cluster", "pgdata"]),
        "{args:?}"
    );
}

#[test]
fn replicas_set_back_while_held_at_zero_stop_the_restore_before_it_writes() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(3);
    world.pods_hang = true;
    advance_until(&mut restore, &mut world, |_, world| world.replicas() == 0);
    assert_eq!(phase(&restore), Some(RestorePhase::ScalingDown));
    // A self-heal puts the replicas back (keeping pgbackup's record, as a sync that owns
    // only spec.replicas does) before the pods are even gone.
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
    reconcile(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert!(
        matches!(
            status.phase,
            Some(RestorePhase::RollingBack | RestorePhase::RolledBack)
        ),
        "{status:?}"
    );
    assert_eq!(status.failure_reason.as_deref(), Some("ReplicasSetBack"));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("before anything was written")),
        "{status:?}"
    );
    world.pods_hang = false;
    run(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::RolledBack));
    assert_eq!(world.replicas(), 3);
    assert!(
        !world
            .history
            .iter()
            .any(|s| matches!(s, Step::CreateJob(job)
            if job.name_any().contains("-restore-"))),
        "no restore Job was ever made: {:?}",
        world.history
    );
}

#[test]
fn a_gitops_managed_stateful_set_is_held_at_zero_before_its_data_is_written() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    let mut world = World::new(1);
    // Argo CD's label tracking on a chart it rendered (no `helm install` annotations).
    world
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts")
        .metadata
        .labels
        .get_or_insert_default()
        .insert("app.kubernetes.io/instance".into(), "orders".into());
    advance_until(&mut restore, &mut world, |_, world| world.replicas() == 0);
    // The scale is the first thing the ScalingDown phase does.
    let scaled = restore
        .status
        .as_ref()
        .and_then(|s| s.phase_since.clone())
        .expect("phase since")
        .0;
    let restore_job = |world: &World| {
        world.history.iter().any(|s| {
            matches!(s, Step::CreateJob(job)
            if job.name_any().contains("-restore-"))
        })
    };
    advance_until(&mut restore, &mut world, |_, world| restore_job(world));
    let held = world.now.as_second() - scaled.as_second();
    assert!(
        held >= super::super::SETTLE_SECONDS,
        "the restore Job came {held} s after the StatefulSet was scaled to 0"
    );
    run(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::Completed));

    // A StatefulSet `helm install` made carries the same label and is not held.
    let mut restore2 = restore_named_again();
    let mut plain = World::new(1);
    let sts = plain
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts");
    sts.metadata
        .labels
        .get_or_insert_default()
        .insert("app.kubernetes.io/instance".into(), "orders".into());
    sts.metadata
        .annotations
        .get_or_insert_default()
        .insert("meta.helm.sh/release-name".into(), "orders".into());
    assert_eq!(super::super::gitops_manager(plain.sts()), None);
    run(&mut restore2, &mut plain);
    assert_eq!(phase(&restore2), Some(RestorePhase::Completed));
}

fn restore_named_again() -> PointInTimeRestore {
    restore("inPlace", serde_json::json!({}))
}

#[test]
fn every_job_of_a_restore_is_placed_and_sized_as_its_spec_says() {
    let mut restore = restore("inPlace", serde_json::json!({}));
    restore.spec.placement = serde_json::from_value(serde_json::json!({
        "nodeSelector": {"pool": "restore"}, "priorityClassName": "urgent"
    }))
    .expect("placement");
    restore.spec.resources = serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}
    }))
    .expect("resources");
    let mut world = World::new(2);
    run(&mut restore, &mut world);
    let jobs = jobs_created(&world);
    assert!(jobs.len() >= 3, "{jobs:?}");
    for job in jobs {
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(
            pod.node_selector
                .as_ref()
                .and_then(|s| s.get("pool"))
                .map(String::as_str),
            Some("restore")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("urgent"));
        let resources = pod.containers[0].resources.clone().expect("resources");
        let memory = |map: Option<
            std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >| { map.and_then(|m| m.get("memory").map(|q| q.0.clone())) };
        assert_eq!(memory(resources.requests).as_deref(), Some("4Gi"));
        assert_eq!(memory(resources.limits).as_deref(), Some("8Gi"));
    }
}

/// The fixture schedule (physical) with a second copy `dr` in another bucket.
fn schedule_with_copy() -> SourceObject {
    let mut schedule = crate::k8s::fixtures::schedule();
    schedule.spec.copies = vec![
        serde_json::from_value(serde_json::json!({
            "name": "dr", "schedule": "@daily",
            "s3": {"bucket": "dr-bucket", "prefix": "pg", "credentialsSecret": {"name": "dr-keys"}},
        }))
        .expect("copy"),
    ];
    SourceObject::Schedule(Some(Box::new(schedule)))
}

#[test]
fn a_restore_from_a_schedules_copy_reads_the_copys_bucket_with_its_keys() {
    let source = serde_json::json!({"source": {"backupSchedule": "nightly", "copy": "dr"}});
    let mut restore = restore("clone", source.clone());
    let mut world = World::new(1);
    world.observed.source = schedule_with_copy();
    world.observed.references.secrets.insert(
        "dr-keys".into(),
        Some(
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    );
    let phases = run(&mut restore, &mut world);
    assert_eq!(phase(&restore), Some(RestorePhase::Completed), "{phases:?}");
    let job = jobs_created(&world)
        .into_iter()
        .find(|j| j.name_any().starts_with("back-to-noon-restore"))
        .expect("restore job");
    let container = &job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod")
        .containers[0];
    let env = container.env.clone().unwrap_or_default();
    let value = |name: &str| env.iter().find(|e| e.name == name).cloned();
    assert_eq!(
        value("PGBACKUP_REPOSITORY")
            .and_then(|e| e.value)
            .as_deref(),
        Some("s3://dr-bucket/pg")
    );
    assert_eq!(
        value("AWS_ACCESS_KEY_ID")
            .and_then(|e| e.value_from?.secret_key_ref)
            .map(|s| s.name),
        Some("dr-keys".to_string())
    );
    assert_eq!(
        value("PGBACKUP_SERVER").and_then(|e| e.value).as_deref(),
        Some("shop-pg"),
        "the server keeps its name in the copy"
    );

    // A copy the schedule does not have: refused before anything changes.
    let mut restore = restore_named_copy("nope");
    let mut world = World::new(1);
    world.observed.source = schedule_with_copy();
    run(&mut restore, &mut world);
    assert_eq!(
        ready_reason(&restore),
        ("False".to_string(), "SourceNotFound".to_string())
    );
    assert!(
        world
            .history
            .iter()
            .all(|s| !matches!(s, Step::Scale { .. }))
    );
    let message = restore.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("has no copy \"nope\""), "{message}");
}

fn restore_named_copy(copy: &str) -> PointInTimeRestore {
    restore(
        "inPlace",
        serde_json::json!({"source": {"backupSchedule": "nightly", "copy": copy}}),
    )
}

#[path = "snapshot_plan_tests.rs"]
mod snapshots;
