//! Whether the WAL a restore replays is all there: from the end of the base to the target
//! (a time or LSN inside the window, or the latest), a gap refused, or only noted when the
//! target may lie before it.

use super::{Plan, PlanError, PlanRequest, RecoveryTarget, Sources, backup_end, outside};
use crate::repository::{WalFile, segno_of};

/// Fills in how far the WAL is checked (`wal_through`) and the warnings, or refuses.
pub(super) fn check_wal(
    sources: &Sources<'_>,
    request: &PlanRequest<'_>,
    plan: &mut Plan<'_>,
) -> Result<(), PlanError> {
    let backup = plan.backup;
    if *request.target == RecoveryTarget::Immediate {
        return Ok(());
    }
    let Some(index) = sources.index else {
        if *request.target == RecoveryTarget::Latest {
            plan.warnings.push(format!(
                "there is no WAL archive: the restore ends where backup {} ends",
                backup.backup_id
            ));
            return Ok(());
        }
        return Err(outside(request, &plan.window));
    };
    let size = index.segment_size;
    let (_, end) = backup_end(backup).ok_or_else(|| {
        PlanError::Mismatch(format!(
            "backup {} does not record where its WAL ends",
            backup.backup_id
        ))
    })?;
    let first = segno_of(end.saturating_sub(1), size);
    let last = index.last_segment(sources.path);
    // How far the WAL must be there, and whether a gap stops the restore or is only noted.
    let (through, gap_is_fatal) = match request.target {
        RecoveryTarget::Time(t) => {
            // Where the WAL of a moment lies is only known from the records in it: the
            // archive must be continuous from the backup to its end, as the window is.
            if plan.window.to.is_none_or(|(to, _)| to < *t) {
                return Err(outside(request, &plan.window));
            }
            (last, true)
        }
        RecoveryTarget::Lsn(lsn) => {
            let reachable = last.map(|l| (l + 1) * size).unwrap_or(0);
            if *lsn > reachable {
                return Err(outside(request, &plan.window));
            }
            (Some(segno_of(*lsn, size)), true)
        }
        RecoveryTarget::Latest => (last, true),
        _ => (last, false),
    };
    let Some(through) = through.filter(|t| *t >= first) else {
        return Ok(());
    };
    let missing = index
        .chain(sources.path, first, through)
        .into_iter()
        .find(|l| l.stored.is_none());
    if let Some(link) = missing {
        let segment = WalFile::segment(link.timeline, link.segno).name(size);
        if gap_is_fatal {
            return Err(PlanError::MissingSegment {
                segment,
                backup: backup.backup_id.clone(),
                target: request.target.to_string(),
            });
        }
        plan.warnings.push(format!(
            "WAL segment {segment} is missing from the archive: {} must lie before it",
            request.target
        ));
    }
    plan.wal_through =
        Some(WalFile::segment(sources.path.timeline_of_segment(through, size), through).name(size));
    Ok(())
}
