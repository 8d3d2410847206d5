//! The Jobs that keep a VolumeSnapshotBackup's record in its repository (pure): the record
//! Job (`pgbackup record-snapshot`; for an `offline` backup, reading the positions from a
//! copy of the data snapshot) and the Job that forgets it when the backup goes.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    batch::v1::Job,
    core::v1::{
        EphemeralVolumeSource, PersistentVolumeClaimTemplate, Volume as PodVolume, VolumeMount,
    },
};
use kube::ResourceExt;

use super::build::{mode_name, volumes};
use crate::{
    agent::record_snapshot::SnapshotRecord,
    api::{JobOptions, SnapshotMode, VolumeSnapshotBackup, VolumeSnapshotBackupStatus},
    k8s::{
        agent_pod::{self, AgentSettings},
        child_name, database_pod,
    },
    repository::{SnapshotDetails, VolumeSnapshotEntry, new_backup_id},
};

/// Name of the Job that records the backup in `repository`.
pub fn record_job_name(backup: &VolumeSnapshotBackup) -> String {
    child_name(&backup.name_any(), "record")
}

/// `server_version_num` from `server_version` (`16.4` → 160004).
fn version_num(version: &str) -> Option<u32> {
    let mut parts = version.split(['.', ' ']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

/// What the record Job writes, from the status of a backup whose snapshots are ready. An
/// `offline` backup's positions, version and cluster are left for the Job to read from a
/// copy of its data snapshot.
pub fn snapshot_record(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
) -> Result<SnapshotRecord, String> {
    let missing = |what: &str| format!("cannot record the backup: its {what} is not known");
    let begin_time = status
        .started_at
        .as_ref()
        .ok_or_else(|| missing("start time"))?
        .0;
    let end_time = status
        .snapshots
        .iter()
        .filter_map(|s| s.creation_time.as_ref().map(|t| t.0))
        .max()
        .unwrap_or(begin_time);
    let details = SnapshotDetails {
        namespace: backup.namespace().unwrap_or_default(),
        name: backup.name_any(),
        stateful_set: backup.spec.target.stateful_set.clone(),
        mode: mode_name(backup).into(),
        volume_snapshots: status
            .snapshots
            .iter()
            .map(|s| VolumeSnapshotEntry {
                name: s.name.clone(),
                claim_name: s.claim_name.clone(),
                restore_size: s.restore_size.clone(),
            })
            .collect(),
        backup_label: status.backup_label.clone(),
        tablespace_map: status.tablespace_map.clone(),
    };
    let mut record = SnapshotRecord {
        backup_id: new_backup_id(begin_time),
        begin_time,
        end_time,
        server_version: String::new(),
        server_version_num: 0,
        system_identifier: None,
        wal_segment_size: 0,
        timeline: 0,
        begin_lsn: String::new(),
        end_lsn: None,
        details,
    };
    if backup.spec.snapshot.mode == SnapshotMode::Offline {
        return Ok(record);
    }
    let server_version = status
        .server_version
        .clone()
        .ok_or_else(|| missing("server version"))?;
    record.server_version_num =
        version_num(&server_version).ok_or_else(|| missing("server version"))?;
    record.server_version = server_version;
    record.system_identifier = status.system_identifier.clone();
    record.wal_segment_size = status
        .wal_segment_size
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| missing("WAL segment size"))?;
    record.timeline = status
        .timeline
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| missing("timeline"))?;
    record.begin_lsn = status
        .begin_lsn
        .clone()
        .ok_or_else(|| missing("begin LSN"))?;
    record.end_lsn = status.end_lsn.clone();
    Ok(record)
}

/// How long a finished record Job that mounted a copy of the data snapshot is kept.
pub const COPY_TTL_SECONDS: i32 = 60;

/// Where the record Job of an `offline` backup mounts the copy of its data snapshot.
pub const COPY_MOUNT: &str = "/var/lib/pgbackup/copy";

/// The copy of an `offline` backup's data snapshot the record Job reads the positions
/// from: a generic ephemeral volume (its claim goes with the Job's pod), mounted read-only
/// as the database's user; and the data directory in it.
fn data_copy(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
    stateful_set: &StatefulSet,
) -> Result<(PodVolume, VolumeMount, String), String> {
    let data = volumes(backup)
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| "cannot record the backup: it names no data volume".to_string())?;
    let restore_size = status
        .snapshots
        .iter()
        .find(|s| s.name == data.snapshot)
        .and_then(|s| s.restore_size.as_deref());
    let spec = database_pod::claim_spec(
        stateful_set,
        &data.template,
        Some((&data.snapshot, restore_size)),
    )
    .ok_or_else(|| {
        format!(
            "cannot record the backup: StatefulSet {} has no volumeClaimTemplate {} to make a copy of the snapshot like",
            backup.spec.target.stateful_set, data.template
        )
    })?;
    // As the user says, else as the database container says (a mismatch of both is
    // refused before the database is stopped).
    let given = backup.spec.target.data_sub_path.trim_matches('/');
    let sub_path = if given.is_empty() {
        database_pod::expected_data_sub_path(stateful_set, &data.template).unwrap_or_default()
    } else {
        given.to_string()
    };
    let pgdata = if sub_path.is_empty() {
        COPY_MOUNT.to_string()
    } else {
        format!("{COPY_MOUNT}/{sub_path}")
    };
    let volume = PodVolume {
        name: "copy".into(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: None,
                spec,
            }),
        }),
        ..PodVolume::default()
    };
    let mount = VolumeMount {
        name: "copy".into(),
        mount_path: COPY_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Ok((volume, mount, pgdata))
}

/// The Job that records the backup in `repository` with `pgbackup record-snapshot`; for
/// an `offline` backup it reads the positions from a copy of the data snapshot.
pub fn record_job(
    backup: &VolumeSnapshotBackup,
    status: &VolumeSnapshotBackupStatus,
    settings: &AgentSettings,
    stateful_set: Option<&StatefulSet>,
) -> Result<Job, String> {
    let repository = backup
        .spec
        .repository
        .as_ref()
        .ok_or_else(|| "no repository to record the backup in".to_string())?;
    let record = snapshot_record(backup, status)?;
    let namespace = backup.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &backup.spec.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let record_json = serde_json::to_string(&record).map_err(|e| e.to_string())?;
    let mut env = vec![agent_pod::env("PGBACKUP_SNAPSHOT_RECORD", record_json)];
    let mut settings = settings.clone();
    let mut major = record.server_version_num / 10000;
    let mut copy = None;
    if backup.spec.snapshot.mode == SnapshotMode::Offline {
        let stateful_set = stateful_set.ok_or_else(|| {
            format!(
                "cannot record the backup: StatefulSet {} is gone, and with it what a copy of the snapshot is made like",
                backup.spec.target.stateful_set
            )
        })?;
        let (volume, mount, pgdata) = data_copy(backup, status, stateful_set)?;
        env.push(agent_pod::env("PGBACKUP_CONTROL_DATA", pgdata));
        major = agent_pod::postgres_major(stateful_set).unwrap_or(settings.default_major);
        if let Some((uid, _, _)) = database_pod::database_user(stateful_set).filter(|u| u.0 > 0) {
            // The control file is the database user's alone.
            settings.run_as_user = uid;
        }
        copy = Some((volume, mount));
    }
    let reads_a_copy = copy.is_some();
    let mut container = agent_pod::repository_container(
        "record",
        settings.image_for(major),
        &["record-snapshot"],
        &wiring,
        env,
    );
    container.volumes.extend(copy);
    container.resources = resources(backup);
    let mut job = agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: record_job_name(backup),
            component: "record",
            ownership: agent_pod::Ownership::Owned,
            options: &JobOptions {
                placement: backup.spec.placement.clone(),
                // The copy is a whole volume, kept as long as the Job's pods: gone a
                // minute after the record (a record written again is the same record).
                ttl_seconds_after_finished: if reads_a_copy {
                    COPY_TTL_SECONDS
                } else {
                    JobOptions::default().ttl_seconds_after_finished
                },
                ..JobOptions::default()
            },
            backoff_limit: 3,
        },
        &settings,
        container,
    );
    if reads_a_copy
        && let Some(context) = job
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|p| p.security_context.as_mut())
    {
        // Read-only, and already the database user's: no change of ownership of every
        // file of the copy.
        context.fs_group = None;
    }
    Ok(job)
}

/// Name of the Job that deletes the record from `repository`.
pub fn forget_job_name(backup: &VolumeSnapshotBackup) -> String {
    child_name(&backup.name_any(), "forget")
}

/// The Job that deletes the record `backup_id` from `repository` (the snapshots are
/// deleted with the object), with the WAL only it needed.
pub fn forget_job(
    backup: &VolumeSnapshotBackup,
    settings: &AgentSettings,
    backup_id: &str,
) -> Option<Job> {
    let repository = backup.spec.repository.as_ref()?;
    let namespace = backup.namespace().unwrap_or_default();
    let server = agent_pod::server_name(repository, &namespace, &backup.spec.target);
    let wiring = agent_pod::repository_wiring(repository, &server);
    let major = backup
        .status
        .as_ref()
        .and_then(|s| s.server_version.as_deref())
        .and_then(version_num)
        .map_or(settings.default_major, |n| n / 10000);
    let mut container = agent_pod::repository_container(
        "forget",
        settings.image_for(major),
        &["prune", "--backup-id", backup_id, "--delete"],
        &wiring,
        Vec::new(),
    );
    container.resources = resources(backup);
    Some(agent_pod::agent_job(
        backup,
        agent_pod::JobShape {
            name: forget_job_name(backup),
            component: "delete",
            ownership: agent_pod::Ownership::Free,
            options: &JobOptions {
                placement: backup.spec.placement.clone(),
                ..JobOptions::default()
            },
            backoff_limit: 3,
        },
        settings,
        container,
    ))
}

/// CPU and memory of the record and forget containers: the spec's, else a small default.
fn resources(backup: &VolumeSnapshotBackup) -> k8s_openapi::api::core::v1::ResourceRequirements {
    agent_pod::resources_or(backup.spec.resources.as_ref(), ("50m", "64Mi", "256Mi"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_are_derived() {
        assert_eq!(version_num("16.4"), Some(160004));
        assert_eq!(version_num("18.0"), Some(180000));
        assert_eq!(version_num("17beta1"), None);
        assert_eq!(version_num("15"), Some(150000));
    }
}
