//! A schedule's backup objects — PostgresBackups or VolumeSnapshotBackups — as retention
//! and the schedule's status see them.

use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{BackupMethod, BackupPhase, PostgresBackup, RecoveryWindow, VolumeSnapshotBackup};

/// Which kind of backup an object made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    /// A PostgresBackup with `method: logical`.
    Logical,
    /// A PostgresBackup with `method: physical`.
    Physical,
    /// A VolumeSnapshotBackup.
    VolumeSnapshot,
}

impl BackupKind {
    /// Every kind, in the order retention looks at them.
    pub const ALL: [BackupKind; 3] = [Self::Logical, Self::Physical, Self::VolumeSnapshot];

    /// Whether WAL replays on top of this kind (it can be the base of a point-in-time
    /// restore).
    pub fn is_base(self) -> bool {
        self != Self::Logical
    }
}

/// One backup object of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledBackup {
    /// The object's name.
    pub name: String,
    /// Its kind.
    pub kind: BackupKind,
    /// Its phase.
    pub phase: Option<BackupPhase>,
    /// When it completed (or failed).
    pub completed_at: Option<Timestamp>,
    /// When the object was created.
    pub created: Option<Timestamp>,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// Its backup id and the SHA-256 of its manifest, once completed (PostgresBackups).
    pub recorded: Option<(String, String)>,
    /// The backup id an incremental backup builds on.
    pub parent: Option<String>,
    /// The window its status shows (PostgresBackups).
    pub window: Option<RecoveryWindow>,
}

impl From<&PostgresBackup> for ScheduledBackup {
    fn from(backup: &PostgresBackup) -> Self {
        let status = backup.status.as_ref();
        Self {
            name: backup.name_any(),
            kind: match backup.spec.method {
                BackupMethod::Logical => BackupKind::Logical,
                BackupMethod::Physical => BackupKind::Physical,
            },
            phase: status.and_then(|s| s.phase),
            completed_at: status.and_then(|s| s.completed_at.as_ref()).map(|t| t.0),
            created: backup.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: backup.metadata.deletion_timestamp.is_some(),
            recorded: status.and_then(|s| Some((s.backup_id.clone()?, s.sha256.clone()?))),
            parent: status.and_then(|s| s.parent.clone()),
            window: status.and_then(|s| s.recovery_window.clone()),
        }
    }
}

impl From<&VolumeSnapshotBackup> for ScheduledBackup {
    fn from(backup: &VolumeSnapshotBackup) -> Self {
        let status = backup.status.as_ref();
        Self {
            name: backup.name_any(),
            kind: BackupKind::VolumeSnapshot,
            phase: status.and_then(|s| s.phase),
            completed_at: status.and_then(|s| s.completed_at.as_ref()).map(|t| t.0),
            created: backup.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: backup.metadata.deletion_timestamp.is_some(),
            recorded: None,
            parent: None,
            window: None,
        }
    }
}
