//! The objects of a PointInTimeRestore (pure): the agent's arguments for the recovery
//! target, the Jobs (validate, restore, replica re-initialisation, discard, put-back), and
//! in clone mode the new claim, Service and StatefulSet.

mod claims;
mod jobs;

pub use claims::{claim_back, clone_claim, clone_objects, replacement_claim};
pub use jobs::{data_dir_job, restore_job, validate_job};

use kube::ResourceExt;

use crate::{
    api::{PointInTimeRestore, RecoveryTarget, Repository, RestoreMode},
    k8s::{child_name, dns_label_within},
};

/// Where a Job mounts the database's claim.
pub const VOLUME_MOUNT: &str = "/var/lib/pgbackup/volume";
/// Label on the clone's pods and selector: the restore that made it.
pub const LABEL_RESTORE: &str = "pgbackup.io/restore";
/// Label on the clone's objects: the UID of the restore that made them.
pub const LABEL_RESTORE_UID: &str = "pgbackup.io/restore-uid";

/// Where the restore Job of a source without a repository finds "no repository": an
/// empty directory, so that recovery uses only the WAL the snapshot holds.
pub const NO_REPOSITORY: &str = "/var/lib/pgbackup/no-repository";

/// A volume of the restored pod made from a VolumeSnapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotVolume {
    /// The StatefulSet's volumeClaimTemplate it stands for.
    pub template: String,
    /// The VolumeSnapshot.
    pub snapshot: String,
    /// The least size of a volume made from it, e.g. `10Gi`.
    pub restore_size: Option<String>,
}

/// What the restore works from, resolved from its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The repository holding the base backup and WAL; `None` for a volume snapshot no
    /// repository records (it restores only as it was taken).
    pub repository: Option<Repository>,
    /// The server's name inside it.
    pub server: String,
    /// `--backup` for the agent: a backup id, `latest`, or none (the agent picks the newest
    /// that ended before the target; for a snapshot, one no repository records).
    pub backup: Option<String>,
    /// For a VolumeSnapshotBackup source: the VolumeSnapshots the restored claims are made
    /// from, the data volume's first.
    pub snapshots: Vec<SnapshotVolume>,
    /// The SHA-256 of the backup's manifest as its backup reported it (a PostgresBackup
    /// source): the agent restores that manifest only.
    pub sha256: Option<String>,
}

impl Source {
    /// `--backup` and `--expect-sha256` for the agent.
    fn backup_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(backup) = &self.backup {
            args.extend(["--backup".to_string(), backup.clone()]);
            if let Some(sha256) = &self.sha256 {
                args.extend(["--expect-sha256".to_string(), sha256.clone()]);
            }
        }
        args
    }
}

/// `<Kind>/<name>` of the restore, as recorded on a StatefulSet it scaled down.
pub fn scaled_down_by(restore: &PointInTimeRestore) -> String {
    format!("PointInTimeRestore/{}", restore.name_any())
}

/// The first characters of the restore's UID: what the names of its Jobs and of its
/// aside directory carry, so that leftovers of an earlier restore of the same name are
/// never taken for this one's.
fn uid_tag(restore: &PointInTimeRestore) -> String {
    let tag: String = restore
        .uid()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if tag.is_empty() { "0".into() } else { tag }
}

/// A Job of the restore: `<restore>-<step>-<uid>`.
pub fn job_name(restore: &PointInTimeRestore, step: &str) -> String {
    child_name(&restore.name_any(), &format!("{step}-{}", uid_tag(restore)))
}

/// The name the old data is set aside under: `<restore>-<uid>`.
pub fn aside_name(restore: &PointInTimeRestore) -> String {
    let name = restore.name_any();
    let keep = name.len().min(50);
    format!("{}-{}", &name[..keep], uid_tag(restore))
}

/// The StatefulSet restored into: the target, or the clone `<statefulset>-<restore>`,
/// also the name of its headless Service: a DNS-1035 label, short enough for its pods'
/// names and labels at any length of either name.
pub fn restored_stateful_set(restore: &PointInTimeRestore) -> String {
    let target = &restore.spec.target.stateful_set;
    match restore.spec.mode {
        RestoreMode::InPlace => target.clone(),
        RestoreMode::Clone => dns_label_within(target, &restore.name_any(), 52),
    }
}

/// The data claim of ordinal `ordinal` of the restored StatefulSet.
pub fn claim_name(restore: &PointInTimeRestore, ordinal: u32) -> String {
    claim_name_of(
        restore,
        &restore.spec.target.data_volume_claim_template,
        ordinal,
    )
}

/// The claim of volumeClaimTemplate `template` of ordinal `ordinal` of the restored
/// StatefulSet.
pub fn claim_name_of(restore: &PointInTimeRestore, template: &str, ordinal: u32) -> String {
    format!("{template}-{}-{ordinal}", restored_stateful_set(restore))
}

/// The data directory inside the mounted claim.
pub fn pgdata(restore: &PointInTimeRestore) -> String {
    let sub = restore.spec.target.data_sub_path.trim_matches('/');
    if sub.is_empty() {
        VOLUME_MOUNT.to_string()
    } else {
        format!("{VOLUME_MOUNT}/{sub}")
    }
}

/// The recovery target as the agent's options, and in words.
pub fn target_args(target: &RecoveryTarget) -> (Vec<String>, String) {
    let mut args = Vec::new();
    let words = if let Some(time) = &target.time {
        let time = time.0.to_string();
        args.extend(["--target-time".to_string(), time.clone()]);
        format!("time {time}")
    } else if let Some(lsn) = &target.lsn {
        args.extend(["--target-lsn".to_string(), lsn.clone()]);
        format!("LSN {lsn}")
    } else if let Some(xid) = target.xid {
        args.extend(["--target-xid".to_string(), xid.to_string()]);
        format!("transaction {xid}")
    } else if let Some(name) = &target.name {
        args.extend(["--target-name".to_string(), name.clone()]);
        format!("restore point {name}")
    } else if target.immediate == Some(true) {
        args.push("--target-immediate".into());
        "the end of the base backup".into()
    } else {
        args.push("--target-latest".into());
        "the end of the WAL archive".into()
    };
    if let Some(inclusive) = target.inclusive {
        args.push(format!("--target-inclusive={inclusive}"));
    }
    if let Some(timeline) = &target.timeline {
        args.extend(["--target-timeline".to_string(), timeline.clone()]);
    }
    (args, words)
}

/// Whether the target needs a named base backup (the agent cannot place a transaction or
/// restore point in time).
pub fn needs_named_backup(target: &RecoveryTarget) -> bool {
    target.xid.is_some() || target.name.is_some() || target.immediate == Some(true)
}
