//! Types generated from CRDs that pgbackup uses but does not own. Never edited by hand:
//! each file names the command that regenerates it (see docs/development.md, "Regenerating").

#[allow(missing_debug_implementations, clippy::all)]
pub mod volume_snapshot;

#[cfg(test)]
mod tests {
    use super::volume_snapshot::VolumeSnapshot;

    #[test]
    fn a_cut_snapshot_reads_as_such() {
        let snapshot: VolumeSnapshot = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "nightly-data-pg-0", "namespace": "shop"},
            "spec": {
                "source": {"persistentVolumeClaimName": "data-pg-0"},
                "volumeSnapshotClassName": "csi-hostpath-snapclass"
            },
            "status": {"creationTime": "2026-11-21T10:00:00Z", "readyToUse": true, "restoreSize": "10Gi"}
        }))
        .expect("VolumeSnapshot");
        assert_eq!(
            snapshot.spec.source.persistent_volume_claim_name.as_deref(),
            Some("data-pg-0")
        );
        let status = snapshot.status.expect("status");
        assert_eq!(status.ready_to_use, Some(true));
        assert!(status.creation_time.is_some());
        assert_eq!(
            <VolumeSnapshot as kube::Resource>::api_version(&()),
            "snapshot.storage.k8s.io/v1"
        );
        assert_eq!(
            <VolumeSnapshot as kube::Resource>::plural(&()),
            "volumesnapshots"
        );
    }
}
