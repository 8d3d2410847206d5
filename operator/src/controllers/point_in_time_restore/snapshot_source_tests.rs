//! Tests of a VolumeSnapshotBackup as a restore's source: storage checks and picking the snapshot.

use super::*;

fn snapshot(name: &str, cut: &str, recorded: bool, phase: &str) -> VolumeSnapshotBackup {
    let mut spec = serde_json::json!({
        "target": {"statefulSet": "pg", "credentialsSecret": {"name": "pg-auth"}},
        "mode": "checkpoint",
    });
    let mut status = serde_json::json!({"phase": phase, "beginLSN": "0/3000028",
        "snapshots": [{"name": format!("{name}-data"), "claimName": "data-pg-0", "creationTime": cut}]});
    if recorded {
        spec["repository"] = serde_json::json!({"s3": {"bucket": "b"}});
        status["backupId"] = "20261121T000000Z".into();
    }
    let mut backup: VolumeSnapshotBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "pgbackup.io/v1alpha1", "kind": "VolumeSnapshotBackup",
        "metadata": {"name": name, "namespace": "shop"}, "spec": spec}))
    .expect("snapshot");
    backup.status = Some(serde_json::from_value(status).expect("status"));
    backup
}

fn target(json: serde_json::Value) -> RecoveryTarget {
    serde_json::from_value(json).expect("target")
}

#[test]
fn a_snapshot_the_storage_cannot_make_the_claim_from_is_refused() {
    let volume = build::SnapshotVolume {
        template: "data".into(),
        snapshot: "snap-data".into(),
        restore_size: None,
    };
    let storage = |driver: &str, mode: Option<&str>| SnapshotStorage {
        snapshot: "snap-data".into(),
        driver: Some(driver.into()),
        source_volume_mode: mode.map(String::from),
        class: Some(("fast".into(), "ebs.csi.aws.com".into())),
    };
    assert!(check_storage(&volume, &storage("ebs.csi.aws.com", None), "Filesystem").is_ok());
    let other = check_storage(
        &volume,
        &storage("pd.csi.storage.gke.io", None),
        "Filesystem",
    );
    assert!(
        matches!(other, Err(Verdict::Refuse("StorageMismatch", m)) if m.contains("StorageClass fast"))
    );
    let block = check_storage(
        &volume,
        &storage("ebs.csi.aws.com", Some("Block")),
        "Filesystem",
    );
    assert!(matches!(
        block,
        Err(Verdict::Refuse("VolumeModeMismatch", _))
    ));
    let unknown = SnapshotStorage {
        snapshot: "snap-data".into(),
        ..Default::default()
    };
    assert!(
        check_storage(&volume, &unknown, "Filesystem").is_ok(),
        "nothing known, nothing refused"
    );
}

#[test]
fn the_newest_snapshot_that_reaches_the_target_is_picked() {
    let snapshots = [
        snapshot("night-1", "2026-11-20T03:00:00Z", true, "Completed"),
        snapshot("night-2", "2026-11-21T03:00:00Z", true, "Completed"),
        snapshot("night-3", "2026-11-22T03:00:00Z", false, "Completed"),
        snapshot("night-4", "2026-11-23T03:00:00Z", true, "Failed"),
    ];
    let pick = |t: serde_json::Value| {
        pick_snapshot("nightly", &snapshots, &target(t)).map(|s| s.name_any())
    };
    assert_eq!(
        pick(serde_json::json!({"time": "2026-11-21T12:00:00Z"})).as_deref(),
        Ok("night-2"),
        "the newest taken before the moment: the least WAL to replay"
    );
    assert_eq!(
        pick(serde_json::json!({"time": "2026-11-20T12:00:00Z"})).as_deref(),
        Ok("night-1")
    );
    assert_eq!(
        pick(serde_json::json!({"immediate": true})).as_deref(),
        Ok("night-3"),
        "as taken: the newest, recorded or not"
    );
    assert_eq!(
        pick(serde_json::json!({"latest": true})).as_deref(),
        Ok("night-2"),
        "further needs a repository's WAL"
    );
    let early = pick(serde_json::json!({"time": "2026-11-19T12:00:00Z"})).expect_err("none");
    assert!(
        early.contains("no completed VolumeSnapshotBackup"),
        "{early}"
    );
    let named = pick(serde_json::json!({"name": "before-upgrade"})).expect_err("unplaced");
    assert!(named.contains("source.volumeSnapshotBackup"), "{named}");
}
