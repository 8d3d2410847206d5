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
fn a_recorded_checkpoint_snapshot_clones_to_a_later_moment_with_its_repository() {
    let mut restore = snapshot_restore(serde_json::json!({"time": "2026-11-21T12:00:00Z"}));
    let mut world = World::new(1);
    world.observed.source = snapshot_of("checkpoint", true, &[]);
    run(&mut restore, &mut world);
    let status = restore.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Completed), "{status:?}");
    let guarantee = find_condition(&status.conditions, "SnapshotGuarantee").expect("said");
    assert_eq!(guarantee.reason, "Checkpoint");
    assert!(guarantee.message.contains("crash-consistent"));
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
