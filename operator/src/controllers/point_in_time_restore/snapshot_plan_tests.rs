//! The decisions of restores from VolumeSnapshotBackups of every mode, into a clone.

use super::*;

/// A completed VolumeSnapshotBackup `snap` of `mode`, recorded in a repository or not,
/// of the data volume and the `include` ones.
fn snapshot_of(mode: &str, recorded: bool, include: &[&str]) -> SourceObject {
    let mut spec = serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "mode": mode, "includeVolumes": include,
    });
    if recorded {
        spec["repository"] =
            serde_json::json!({"s3": {"bucket": "b", "credentialsSecret": {"name": "s3-keys"}}});
    }
    let mut snapshot: crate::api::VolumeSnapshotBackup =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
            "metadata": {"name": "snap", "namespace": "shop"}, "spec": spec,
        }))
        .expect("snapshot");
    let snapshots: Vec<serde_json::Value> = ["data"]
        .iter()
        .chain(include)
        .map(|t| serde_json::json!({"name": format!("snap-{t}"), "claimName": format!("{t}-pg-0"), "readyToUse": true, "restoreSize": "5Gi"}))
        .collect();
    let mut status =
        serde_json::json!({"phase": "Completed", "snapshots": snapshots, "serverVersion": "16.4"});
    if recorded {
        status["backupId"] = "20261121T030000Z".into();
    }
    snapshot.status = Some(serde_json::from_value(status).expect("status"));
    SourceObject::Snapshot(Some(Box::new(snapshot)))
}

fn snapshot_restore(target: serde_json::Value) -> PointInTimeRestore {
    restore(
        "clone",
        serde_json::json!({"source": {"volumeSnapshotBackup": "snap"}, "recoveryTarget": target}),
    )
}

fn env(job: &Job, name: &str) -> Option<String> {
    job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn claims_created(world: &World) -> Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
    world
        .history
        .iter()
        .filter_map(|s| match s {
            Step::CreateClaim(c) => Some((**c).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offline_snapshot_no_repository_records_clones_as_it_was_taken() {
    let mut restore = snapshot_restore(serde_json::json!({"immediate": true}));
    let mut world = World::new(1);
    world.observed.source = snapshot_of("offline", false, &[]);
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    assert_eq!(
        status.base_backup.as_deref(),
        Some("snap"),
        "named after the snapshot"
    );
    let guarantee = find_condition(&status.conditions, "SnapshotGuarantee").expect("said");
    assert_eq!(guarantee.reason, "Offline");
    let jobs = jobs_created(&world);
    for job in &jobs[..2] {
        let a = args(job);
        assert!(a.contains(&"--snapshot-data".to_string()), "{a:?}");
        assert!(
            !a.contains(&"--backup".to_string()),
            "nothing records it: {a:?}"
        );
        assert_eq!(
            env(job, "PGBACKUP_REPOSITORY").as_deref(),
            Some("file:///var/lib/pgbackup/no-repository"),
            "an empty repository: only the snapshot's own WAL"
        );
    }
    assert!(args(&jobs[1]).contains(&"--archive-off".to_string()));
}

#[test]
fn a_later_target_needs_a_repository_and_is_refused_before_anything_is_made() {
    for mode in ["offline", "checkpoint"] {
        let mut restore = snapshot_restore(serde_json::json!({"time": "2026-11-21T12:00:00Z"}));
        let mut world = World::new(1);
        world.observed.source = snapshot_of(mode, false, &[]);
        run(&mut restore, &mut world);
        let status = restore.status.clone().expect("status");
        assert_eq!(
            status.phase,
            Some(RestorePhase::Failed),
            "{mode}: {status:?}"
        );
        assert_eq!(status.failure_reason.as_deref(), Some("NoWalArchive"));
        assert!(world.history.is_empty(), "{mode}: {:?}", world.history);
    }
    // An online snapshot without its label cannot be made consistent at all.
    let mut restore = snapshot_restore(serde_json::json!({"immediate": true}));
    let mut world = World::new(1);
    world.observed.source = snapshot_of("online", false, &[]);
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("SnapshotNotRecorded")
    );
    assert!(world.history.is_empty());
}

#[test]
fn recorded_checkpoint_and_offline_snapshots_clone_to_a_later_moment_with_their_repository() {
    for (mode, guaranteed) in [("checkpoint", "Checkpoint"), ("offline", "Offline")] {
        let mut restore = snapshot_restore(serde_json::json!({"time": "2026-11-21T12:00:00Z"}));
        let mut world = World::new(1);
        world.observed.source = snapshot_of(mode, true, &[]);
        run(&mut restore, &mut world);
        let status = restore.status.clone().expect("status");
        assert_eq!(
            status.phase,
            Some(RestorePhase::Completed),
            "{mode}: {status:?}"
        );
        let guarantee = find_condition(&status.conditions, "SnapshotGuarantee").expect("said");
        assert_eq!(guarantee.reason, guaranteed);
        let jobs = jobs_created(&world);
        for job in &jobs[..2] {
            let a = args(job);
            assert!(
                a.windows(2).any(|w| w == ["--backup", "20261121T030000Z"]),
                "the record names the snapshot: {a:?}"
            );
            assert!(
                a.windows(2)
                    .any(|w| w == ["--target-time", "2026-11-21T12:00:00Z"])
            );
            assert_eq!(
                env(job, "PGBACKUP_REPOSITORY").as_deref(),
                Some("s3://b"),
                "{a:?}"
            );
        }
    }
}

#[test]
fn every_volume_of_a_snapshot_is_restored_into_the_clone() {
    let mut restore = snapshot_restore(serde_json::json!({"immediate": true}));
    let mut world = World::new(1);
    world.observed.source = snapshot_of("offline", false, &["wal"]);
    // The database keeps its WAL on a volume of its own.
    let sts = world
        .observed
        .references
        .stateful_set
        .as_mut()
        .expect("sts");
    let spec = sts.spec.as_mut().expect("spec");
    spec.volume_claim_templates
        .as_mut()
        .expect("templates")
        .push(
            serde_json::from_value(serde_json::json!({"metadata": {"name": "wal"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}))
            .expect("claim"),
        );
    let container = spec
        .template
        .spec
        .as_mut()
        .expect("pod")
        .containers
        .iter_mut()
        .find(|c| c.name == "postgresql")
        .expect("the database container");
    container.volume_mounts.get_or_insert_default().push(
        serde_json::from_value(
            serde_json::json!({"name": "wal", "mountPath": "/var/lib/postgresql/wal"}),
        )
        .expect("mount"),
    );
    run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::Completed),
        "{:?}",
        restore.status
    );

    let claims = claims_created(&world);
    let made: Vec<(String, String)> = claims
        .iter()
        .map(|c| {
            let from = c
                .spec
                .as_ref()
                .and_then(|s| s.data_source.as_ref())
                .expect("from a snapshot");
            (c.name_any(), from.name.clone())
        })
        .collect();
    let clone = crate::controllers::point_in_time_restore::build::restored_stateful_set(&restore);
    assert_eq!(
        made,
        [
            (format!("wal-{clone}-0"), "snap-wal".to_string()),
            (format!("data-{clone}-0"), "snap-data".to_string()),
        ],
        "the further volumes first: once the data claim is there, every claim is"
    );
    let wal_size = claims[0]
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    assert_eq!(
        wal_size.as_deref(),
        Some("5Gi"),
        "at least the snapshot's size"
    );

    let restore_job = jobs_created(&world)
        .into_iter()
        .find(|j| j.name_any().contains("-restore-"))
        .expect("restore job");
    let pod = restore_job.spec.and_then(|s| s.template.spec).expect("pod");
    let claim_of = |volume: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == volume)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
    };
    let wal_mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/lib/postgresql/wal")
        .expect("the WAL volume where the database has it, for pg_wal's link");
    assert_eq!(claim_of(&wal_mount.name), Some(format!("wal-{clone}-0")));
}

/// A world whose ordinal 0's data claim is bound to `pv-old` (class `fast`, 8Gi).
fn world_with_old_volume() -> World {
    let mut world = World::new(2);
    world.observed.source = snapshot_of("checkpoint", true, &[]);
    world.observed.volumes.claims.insert(
        "data-pg-0".into(),
        crate::controllers::point_in_time_restore::volumes::ClaimSeen {
            volume: Some("pv-old".into()),
            bound: true,
            storage_class_name: Some("fast".into()),
            storage: Some("8Gi".into()),
            ..Default::default()
        },
    );
    world.observed.volumes.persistent.insert(
        "pv-old".into(),
        crate::controllers::point_in_time_restore::volumes::VolumeSeen {
            reclaim_policy: "Delete".into(),
            claim_uid: Some("uid-of-the-old-claim".into()),
            replaced_by: None,
        },
    );
    world
}

fn in_place_snapshot_restore(extra: serde_json::Value) -> PointInTimeRestore {
    let mut spec = serde_json::json!({"source": {"volumeSnapshotBackup": "snap"},
        "recoveryTarget": {"immediate": true}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    restore("inPlace", spec)
}

fn volume_steps(world: &World) -> Vec<String> {
    world
        .history
        .iter()
        .filter_map(|s| match s {
            Step::PatchVolume(name, patch) => Some(format!("patch {name} {patch}")),
            Step::DeleteClaim(name) => Some(format!("delete {name}")),
            Step::CreateClaim(c) => Some(format!(
                "create {} from {}",
                c.name_any(),
                c.spec
                    .as_ref()
                    .and_then(|s| s
                        .data_source
                        .as_ref()
                        .map(|d| d.name.clone())
                        .or(s.volume_name.clone()))
                    .unwrap_or_default()
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_snapshot_restores_in_place_keeping_the_old_volume_until_it_is_proven() {
    let mut restore = in_place_snapshot_restore(serde_json::json!({}));
    let mut world = world_with_old_volume();
    // The record is written before any volume or claim is touched.
    advance_until(&mut restore, &mut world, |r, _| {
        r.status
            .as_ref()
            .is_some_and(|s| !s.replaced_volumes.is_empty())
    });
    assert!(
        volume_steps(&world).is_empty(),
        "{:?}",
        volume_steps(&world)
    );
    let recorded = restore.status.as_ref().expect("status").replaced_volumes[0].clone();
    assert_eq!(
        (
            recorded.claim.as_str(),
            recorded.persistent_volume.as_str(),
            recorded.reclaim_policy.as_str()
        ),
        ("data-pg-0", "pv-old", "Delete")
    );
    assert_eq!(world.replicas(), 0, "only once the StatefulSet is down");

    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    assert_eq!(
        volume_steps(&world),
        [
            r#"patch pv-old {"spec":{"persistentVolumeReclaimPolicy":"Retain"}}"#.to_string(),
            "delete data-pg-0".into(),
            "create data-pg-0 from snap-data".into(),
            r#"patch pv-old {"metadata":{"annotations":{"pgbackup.io/replaced-by-restore":"shop/back-to-noon"}}}"#.into(),
        ],
        "kept before the claim goes; annotated once proven"
    );
    let made = claims_created(&world).remove(0);
    let spec = made.spec.expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        spec.resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0),
        Some("8Gi".into()),
        "as large as the claim it replaces"
    );
    let jobs = jobs_created(&world);
    let restore_job = jobs
        .iter()
        .find(|j| j.name_any().contains("-restore-"))
        .expect("restore");
    let a = args(restore_job);
    assert!(a.contains(&"--snapshot-data".to_string()), "{a:?}");
    assert!(!a.contains(&"--set-aside".to_string()), "{a:?}");
    assert!(
        !a.contains(&"--archive-off".to_string()),
        "in place it archives on: {a:?}"
    );
    assert!(
        !jobs.iter().any(|j| j.name_any().contains("-discard-")),
        "nothing set aside in the data directory"
    );
    assert!(
        jobs.iter().any(|j| j.name_any().contains("-reinit-1-")),
        "the replica re-clones"
    );
    let kept = find_condition(&status.conditions, "PreviousVolumes").expect("said");
    assert_eq!(kept.reason, "Kept");
    assert_eq!(
        world.observed.volumes.persistent["pv-old"].reclaim_policy,
        "Retain"
    );
    assert_eq!(world.replicas(), 2);
}

#[test]
fn previous_volumes_delete_gives_the_old_volume_its_own_reclaim_policy_back() {
    let mut restore = in_place_snapshot_restore(serde_json::json!({"previousVolumes": "delete"}));
    let mut world = world_with_old_volume();
    run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::Completed),
        "{:?}",
        restore.status
    );
    assert_eq!(
        world.observed.volumes.persistent["pv-old"].reclaim_policy,
        "Delete"
    );
    let status = restore.status.clone().expect("status");
    assert_eq!(
        find_condition(&status.conditions, "PreviousVolumes").map(|c| c.reason.as_str()),
        Some("Released")
    );
}

#[test]
fn a_failed_snapshot_restore_in_place_binds_the_old_volume_back() {
    for failing in ["restore", "verification"] {
        let mut restore = in_place_snapshot_restore(serde_json::json!({}));
        let mut world = world_with_old_volume();
        if failing == "verification" {
            world.verification_fails = true;
        } else {
            world.fail = vec!["restore"];
        }
        run(&mut restore, &mut world);
        let status = restore.status.clone().expect("status");
        assert_eq!(
            status.phase,
            Some(RestorePhase::RolledBack),
            "{failing}: {status:?}"
        );
        let claim = &world.observed.volumes.claims["data-pg-0"];
        assert_eq!(
            claim.volume.as_deref(),
            Some("pv-old"),
            "{failing}: the old volume"
        );
        assert!(!claim.ours, "{failing}");
        let volume = &world.observed.volumes.persistent["pv-old"];
        assert_eq!(
            volume.reclaim_policy, "Delete",
            "{failing}: its own policy again"
        );
        assert_eq!(world.replicas(), 2, "{failing}: never left at 0");
        let steps = volume_steps(&world);
        let new_claim_gone = steps.iter().rposition(|s| s == "delete data-pg-0");
        let bound_back = steps
            .iter()
            .position(|s| s == "create data-pg-0 from pv-old");
        assert!(new_claim_gone < bound_back, "{failing}: {steps:?}");
        assert!(
            steps.iter().any(|s| s.contains(r#""claimRef""#)),
            "{failing}: the kept volume is freed for a claim of the old name: {steps:?}"
        );
    }
}

#[test]
fn a_kept_volume_someone_deleted_stops_the_restore_and_is_said() {
    let mut restore = in_place_snapshot_restore(serde_json::json!({}));
    let mut world = world_with_old_volume();
    advance_until(&mut restore, &mut world, |_, w| {
        !w.observed.volumes.claims.contains_key("data-pg-0")
    });
    world.observed.volumes.persistent.remove("pv-old");
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::RolledBack), "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("VolumeLost"));
    assert_eq!(world.replicas(), 2);
}

#[test]
fn without_the_right_to_read_volumes_an_in_place_snapshot_restore_changes_nothing() {
    let mut restore = in_place_snapshot_restore(serde_json::json!({}));
    let mut world = world_with_old_volume();
    world.observed.volumes.forbidden = true;
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("VolumesNotAllowed"));
    assert!(world.history.is_empty(), "{:?}", world.history);
}

#[test]
fn a_schedule_of_snapshots_restores_the_one_picked_and_keeps_to_it() {
    let from_schedule = |target: serde_json::Value| {
        restore(
            "clone",
            serde_json::json!({"source": {"backupSchedule": "nightly"}, "recoveryTarget": target}),
        )
    };
    let mut restore = from_schedule(serde_json::json!({"immediate": true}));
    let mut world = World::new(1);
    // What observing found: the schedule's newest snapshot that reaches the target.
    world.observed.source = snapshot_of("offline", false, &[]);
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    assert_eq!(
        status.volume_snapshot_backup.as_deref(),
        Some("snap"),
        "recorded: a snapshot completing meanwhile does not change the restore's source"
    );

    let mut restore = from_schedule(serde_json::json!({"time": "2026-11-21T12:00:00Z"}));
    let mut world = World::new(1);
    world.observed.source = SourceObject::Snapshot(None);
    world.observed.snapshot_pick =
        Some("BackupSchedule nightly has no completed VolumeSnapshotBackup that can be restored to time 2026-11-21T12:00:00Z".into());
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("NoSnapshot"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("BackupSchedule nightly")
    );
    assert!(world.history.is_empty());
}

#[test]
fn a_claim_still_mounted_is_not_replaced_until_its_pods_are_gone() {
    use crate::controllers::point_in_time_restore::volumes::ClaimUser;
    // A finished Job of pgbackup's (an earlier restore's) mounts the claim: it goes first.
    let mut restore = in_place_snapshot_restore(serde_json::json!({}));
    let mut world = world_with_old_volume();
    world.observed.volumes.users.insert(
        "data-pg-0".into(),
        vec![ClaimUser {
            pod: "earlier-restore-abc-x1".into(),
            finished_job: Some("earlier-restore-abc".into()),
        }],
    );
    advance_until(&mut restore, &mut world, |_, w| {
        w.history
            .iter()
            .any(|s| *s == Step::DeleteJob("earlier-restore-abc".into()))
    });
    assert!(
        volume_steps(&world).is_empty(),
        "nothing replaced while a pod mounts the claim: {:?}",
        volume_steps(&world)
    );
    world.observed.volumes.users.clear();
    run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::Completed),
        "{:?}",
        restore.status
    );

    // Someone else's pod: waited for, then the restore rolls back with nothing replaced.
    let mut restore = in_place_snapshot_restore(serde_json::json!({}));
    let mut world = world_with_old_volume();
    world.observed.volumes.users.insert(
        "data-pg-0".into(),
        vec![ClaimUser {
            pod: "debug-shell".into(),
            finished_job: None,
        }],
    );
    advance_until(&mut restore, &mut world, |r, _| {
        ready_reason(r).1 == "ClaimInUse"
    });
    for _ in 0..200 {
        world.tick(phase(&restore));
        reconcile(&mut restore, &mut world);
        if phase(&restore) == Some(RestorePhase::RolledBack) {
            break;
        }
    }
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::RolledBack), "{status:?}");
    assert_eq!(status.failure_reason.as_deref(), Some("ClaimInUse"));
    assert!(
        !volume_steps(&world).iter().any(|s| s.starts_with("delete")),
        "{:?}",
        volume_steps(&world)
    );
    assert_eq!(
        world.observed.volumes.persistent["pv-old"].reclaim_policy,
        "Delete"
    );
    assert_eq!(world.replicas(), 2);
}

#[test]
fn an_operator_that_dies_before_writing_status_loses_no_volume() {
    for (crash_every, fail) in [(2, false), (3, false), (2, true), (3, true)] {
        let mut restore = in_place_snapshot_restore(serde_json::json!({}));
        let mut world = world_with_old_volume();
        if fail {
            world.fail = vec!["restore"];
        }
        for n in 1..600 {
            let before = restore.status.clone();
            let plan = reconcile(&mut restore, &mut world);
            // The steps were made, the status never written: the next operator starts
            // from the status before.
            if n % crash_every == 0 {
                restore.status = before;
            } else if plan.requeue.is_none() {
                break;
            }
            world.tick(phase(&restore));
        }
        let context = format!(
            "crash every {crash_every}, fail {fail}: {:?}",
            restore.status
        );
        let volumes = &world.observed.volumes;
        if fail {
            assert_eq!(phase(&restore), Some(RestorePhase::RolledBack), "{context}");
            assert_eq!(
                volumes.claims["data-pg-0"].volume.as_deref(),
                Some("pv-old"),
                "{context}"
            );
            assert_eq!(
                volumes.persistent["pv-old"].reclaim_policy, "Delete",
                "{context}"
            );
        } else {
            assert_eq!(phase(&restore), Some(RestorePhase::Completed), "{context}");
            assert!(volumes.claims["data-pg-0"].ours, "{context}");
            assert_eq!(
                volumes.persistent["pv-old"].reclaim_policy, "Retain",
                "{context}"
            );
        }
        assert_eq!(world.replicas(), 2, "{context}");
    }
}

#[test]
fn a_snapshot_the_class_cannot_make_a_claim_from_is_refused_before_anything_changes() {
    for mode in ["clone", "inPlace"] {
        let mut restore = restore(
            mode,
            serde_json::json!({"source": {"volumeSnapshotBackup": "snap"},
                               "recoveryTarget": {"immediate": true}}),
        );
        let mut world = world_with_old_volume();
        world.observed.snapshot_storage = vec![
            crate::controllers::point_in_time_restore::snapshot_source::SnapshotStorage {
                snapshot: "snap-data".into(),
                driver: Some("pd.csi.storage.gke.io".into()),
                source_volume_mode: Some("Filesystem".into()),
                class: Some(("fast".into(), "ebs.csi.aws.com".into())),
            },
        ];
        run(&mut restore, &mut world);
        let status = restore.status.clone().expect("status");
        assert_eq!(
            status.phase,
            Some(RestorePhase::Failed),
            "{mode}: {status:?}"
        );
        assert_eq!(status.failure_reason.as_deref(), Some("StorageMismatch"));
        assert!(world.history.is_empty(), "{mode}: {:?}", world.history);
    }
}

#[test]
fn wait_timeout_says_how_long_a_claim_in_use_is_waited_for() {
    for (timeout, rolled_back) in [(Some("1m"), true), (None, false)] {
        let extra = match timeout {
            Some(t) => serde_json::json!({"waitTimeout": t}),
            None => serde_json::json!({}),
        };
        let mut restore = in_place_snapshot_restore(extra);
        let mut world = world_with_old_volume();
        world.observed.volumes.users.insert(
            "data-pg-0".into(),
            vec![
                crate::controllers::point_in_time_restore::volumes::ClaimUser {
                    pod: "debug-shell".into(),
                    finished_job: None,
                },
            ],
        );
        advance_until(&mut restore, &mut world, |r, _| {
            ready_reason(r).1 == "ClaimInUse"
        });
        // Two minutes of 5 s polls.
        for _ in 0..24 {
            world.tick(phase(&restore));
            reconcile(&mut restore, &mut world);
        }
        assert_eq!(
            phase(&restore) == Some(RestorePhase::RolledBack),
            rolled_back,
            "{timeout:?}: {:?}",
            restore.status
        );
    }

    let mut restore = in_place_snapshot_restore(serde_json::json!({"waitTimeout": "soon"}));
    let mut world = world_with_old_volume();
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.failure_reason.as_deref(), Some("InvalidSpec"));
    assert!(world.history.is_empty(), "{:?}", world.history);
}

#[test]
fn claims_the_namespace_would_refuse_are_refused_before_anything_changes() {
    use crate::controllers::point_in_time_restore::claim_limits::NamespaceLimits;
    // The old claim asks for 8Gi; its replacement asks for as much.
    let at_most = |max: &str| NamespaceLimits {
        limit_ranges: vec![
            serde_json::from_value(serde_json::json!({"metadata": {"name": "claims"},
                "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": max}}]}}))
            .expect("range"),
        ],
        quotas: Vec::new(),
    };
    let full = NamespaceLimits {
        limit_ranges: Vec::new(),
        quotas: vec![
            serde_json::from_value(serde_json::json!({"metadata": {"name": "storage"},
                "status": {"hard": {"requests.storage": "10Gi"}, "used": {"requests.storage": "8Gi"}}}))
            .expect("quota"),
        ],
    };
    for (mode, limits, refusal) in [
        ("inPlace", at_most("4Gi"), Some("ClaimTooLarge")),
        ("inPlace", at_most("8Gi"), None),
        // In place the old claim's 8Gi are freed first; a clone needs 8Gi more.
        ("inPlace", full.clone(), None),
        ("clone", full, Some("QuotaExceeded")),
    ] {
        let mut restore = restore(
            mode,
            serde_json::json!({"source": {"volumeSnapshotBackup": "snap"},
                               "recoveryTarget": {"immediate": true}, "confirm": true}),
        );
        let mut world = world_with_old_volume();
        if mode == "clone" {
            // The clone's claim is the template's size, at least the snapshot's.
            let sts = world
                .observed
                .references
                .stateful_set
                .as_mut()
                .expect("sts");
            let templates = sts
                .spec
                .as_mut()
                .and_then(|s| s.volume_claim_templates.as_mut())
                .expect("templates");
            templates[0].spec.get_or_insert_default().resources = Some(
                serde_json::from_value(serde_json::json!({"requests": {"storage": "8Gi"}}))
                    .expect("resources"),
            );
        }
        world.observed.claim_limits = Some(limits);
        run(&mut restore, &mut world);
        let status = restore.status.clone().expect("status");
        match refusal {
            Some(reason) => {
                assert_eq!(
                    (status.phase, status.failure_reason.as_deref()),
                    (Some(RestorePhase::Failed), Some(reason)),
                    "{mode}: {status:?}"
                );
                assert!(world.history.is_empty(), "{mode}: {:?}", world.history);
            }
            None => assert_eq!(
                status.phase,
                Some(RestorePhase::Completed),
                "{mode}: {status:?}"
            ),
        }
    }
}

#[test]
fn a_claim_a_lagging_quota_refuses_is_waited_for_then_rolled_back() {
    let mut restore = in_place_snapshot_restore(serde_json::json!({"waitTimeout": "1m"}));
    let mut world = world_with_old_volume();
    advance_until(&mut restore, &mut world, |_, w| {
        w.history.iter().any(|s| matches!(s, Step::DeleteClaim(_)))
    });
    let words = "to create PersistentVolumeClaim data-pg-0: persistentvolumeclaims \"data-pg-0\" is forbidden: exceeded quota: storage, requested: requests.storage=8Gi";
    world.observed.refused = Some(words.into());
    reconcile(&mut restore, &mut world);
    assert_eq!(
        ready_reason(&restore).1,
        "QuotaExceeded",
        "{:?}",
        restore.status
    );
    assert_eq!(phase(&restore), Some(RestorePhase::Restoring), "waited for");
    // Still refused past the wait limit: rolled back onto the kept volume.
    for _ in 0..30 {
        world.tick(phase(&restore));
        reconcile(&mut restore, &mut world);
    }
    world.observed.refused = None;
    run(&mut restore, &mut world);
    assert_eq!(
        phase(&restore),
        Some(RestorePhase::RolledBack),
        "{:?}",
        restore.status
    );
    assert_eq!(world.replicas(), 2);
}
