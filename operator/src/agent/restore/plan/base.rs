//! Choosing the base of a restore: the backups (or recorded snapshots) on the timeline
//! path, the one asked for or the latest that ends before the target, and whether it and
//! the WAL archive are of the same cluster and major version.

use super::{PlanError, PlanRequest, RecoveryTarget, Sources, Window, backup_end, outside};
use crate::repository::{BackupKind, Manifest};

/// The bases on the path, oldest first: physical backups, or — when asked — recorded
/// volume snapshots taken in backup mode (their label and end position are known).
pub(super) fn bases_on_path<'a>(sources: &Sources<'a>, snapshot: bool) -> Vec<&'a Manifest> {
    let base_kind = if snapshot {
        BackupKind::Snapshot
    } else {
        BackupKind::Physical
    };
    sources
        .backups
        .iter()
        .copied()
        .filter(|m| m.kind == base_kind)
        .filter(|m| {
            m.kind != BackupKind::Snapshot
                || m.snapshot
                    .as_ref()
                    .is_some_and(|s| s.backup_label.is_some())
                || m.end_lsn.is_some()
        })
        .filter(|m| backup_end(m).is_some_and(|(tli, end)| sources.path.contains(tli, end)))
        .collect()
}

/// The base: the one `--backup` names (which must end before the target), else the latest
/// on the path that ends before the target.
pub(super) fn choose<'a>(
    sources: &Sources<'a>,
    request: &PlanRequest<'_>,
    on_path: &[&'a Manifest],
    window: &Window,
) -> Result<&'a Manifest, PlanError> {
    let target_text = request.target.to_string();
    let latest = || {
        on_path.last().copied().ok_or_else(|| {
            PlanError::NoBackup(format!(
                "no complete physical backup on timeline {}",
                window.timeline
            ))
        })
    };
    let explicit = match request.backup {
        None => None,
        Some("latest") => Some(latest()?),
        Some(id) => Some(find_explicit(sources, on_path, id, window.timeline)?),
    };
    let before = |ends_before: &dyn Fn(&Manifest) -> bool| {
        on_path
            .iter()
            .rev()
            .find(|m| ends_before(m))
            .copied()
            .ok_or_else(|| outside(request, window))
    };
    match (request.target, explicit) {
        (RecoveryTarget::Xid(_) | RecoveryTarget::Name(_), None) => {
            Err(PlanError::NoBackup(format!(
                "restoring to {target_text} needs --backup ID (or latest): where it lies in the WAL is only known once it is replayed"
            )))
        }
        (RecoveryTarget::Time(t), None) => before(&|m| m.end_time <= *t),
        (RecoveryTarget::Lsn(lsn), None) => {
            before(&|m| backup_end(m).is_some_and(|(_, end)| end <= *lsn))
        }
        (_, None) => latest(),
        (target, Some(backup)) => check_ends_before(target, backup).map(|()| backup),
    }
}

/// A base named with `--backup` must end before a time or LSN target.
fn check_ends_before(target: &RecoveryTarget, backup: &Manifest) -> Result<(), PlanError> {
    let too_late = match target {
        RecoveryTarget::Time(t) => backup.end_time > *t,
        RecoveryTarget::Lsn(lsn) => backup_end(backup).is_some_and(|(_, e)| e > *lsn),
        _ => false,
    };
    if !too_late {
        return Ok(());
    }
    let ended = backup.end_time.strftime("%Y-%m-%d %H:%M:%S UTC");
    Err(PlanError::NoBackup(
        if backup.kind == BackupKind::Snapshot {
            format!(
                "{target} lies before the snapshot ({}) is consistent, at {ended} (LSN {}): a volume snapshot restores to the moment it was taken or later",
                backup.backup_id,
                backup.end_lsn.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "backup {} ends at {ended}, after {target}: choose an earlier backup or leave out --backup",
                backup.backup_id
            )
        },
    ))
}

fn find_explicit<'a>(
    sources: &Sources<'a>,
    on_path: &[&'a Manifest],
    id: &str,
    timeline: u32,
) -> Result<&'a Manifest, PlanError> {
    if let Some(found) = on_path.iter().find(|m| m.backup_id == id) {
        return Ok(found);
    }
    Err(PlanError::NoBackup(
        match sources.backups.iter().find(|m| m.backup_id == id) {
            Some(m) if m.kind != BackupKind::Physical => format!(
                "backup {id} is {}: point-in-time restore needs a physical backup",
                m.kind.as_str()
            ),
            Some(m) => format!(
                "backup {id} (timeline {}) is not on the history of timeline {timeline}",
                m.timeline.unwrap_or(1)
            ),
            None => format!("no complete physical backup {id}"),
        },
    ))
}

pub(super) fn check_identity(sources: &Sources<'_>, backup: &Manifest) -> Result<(), PlanError> {
    let Some(identity) = sources.identity else {
        return Ok(());
    };
    if let Some(system) = &backup.system_identifier
        && *system != identity.system_identifier
    {
        return Err(PlanError::Mismatch(format!(
            "backup {} is of cluster {system}, but the WAL archive is of cluster {}",
            backup.backup_id, identity.system_identifier
        )));
    }
    let major = backup.server_version_num / 10_000;
    if major != identity.server_major {
        return Err(PlanError::Mismatch(format!(
            "backup {} is of PostgreSQL {major}, but the WAL archive is of PostgreSQL {}",
            backup.backup_id, identity.server_major
        )));
    }
    Ok(())
}
