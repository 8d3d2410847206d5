//! Planning a point-in-time restore, before anything is written: which base backup, whether
//! the target lies inside the recoverability window, and whether the WAL from the backup to
//! the target is all there. Pure: the catalog and the WAL index in, a plan or the reason
//! there is none out.

use std::fmt;

use jiff::Timestamp;

use crate::{
    postgres::parse_lsn,
    repository::{
        ArchiveCoverage, ArchiveIdentity, BackupKind, Manifest, TimelinePath, WalFile, WalIndex,
        format_lsn, segno_of,
    },
};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The last commit at or before (or, not inclusive, before) this time.
    Time(Timestamp),
    /// This WAL location.
    Lsn(u64),
    /// The commit of this transaction id.
    Xid(String),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
    /// The end of the base backup (the earliest consistent point).
    Immediate,
    /// The end of the archived WAL.
    Latest,
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Time(t) => write!(f, "time {}", t.strftime("%Y-%m-%d %H:%M:%S%.f UTC")),
            Self::Lsn(lsn) => write!(f, "LSN {}", format_lsn(*lsn)),
            Self::Xid(xid) => write!(f, "transaction {xid}"),
            Self::Name(name) => write!(f, "restore point {name:?}"),
            Self::Immediate => write!(f, "the end of the base backup"),
            Self::Latest => write!(f, "the end of the archived WAL"),
        }
    }
}

/// What the planner is asked.
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    /// The target.
    pub target: &'a RecoveryTarget,
    /// `--backup`: an id, `latest`, or `None` to let the planner choose.
    pub backup: Option<&'a str>,
    /// The base is a recorded volume snapshot (`--snapshot-data`): `backup` names it.
    pub snapshot: bool,
}

/// What the archive and the catalog offer along one timeline path.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Complete physical backups, oldest first.
    pub backups: &'a [&'a Manifest],
    /// The WAL archive, if there is one.
    pub index: Option<&'a WalIndex>,
    /// Whose archive it is.
    pub identity: Option<&'a ArchiveIdentity>,
    /// Up to when the archiver last said the archive is complete.
    pub coverage: Option<&'a ArchiveCoverage>,
    /// The timeline path recovery follows.
    pub path: &'a TimelinePath,
}

/// The span of time (and WAL) a restore along a path can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The timeline the path ends on.
    pub timeline: u32,
    /// The end of the first backup from which the archive is continuous.
    pub from: Option<(Timestamp, u64)>,
    /// The latest time up to which every committed transaction is archived, and the end
    /// of the segment that holds it.
    pub to: Option<(Timestamp, u64)>,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |(t, lsn): (Timestamp, u64)| {
            format!(
                "{} (LSN {})",
                t.strftime("%Y-%m-%d %H:%M:%S UTC"),
                format_lsn(lsn)
            )
        };
        match (self.from, self.to) {
            (Some(from), Some(to)) => write!(
                f,
                "the recoverability window of timeline {} is {} to {}",
                self.timeline,
                at(from),
                at(to)
            ),
            (None, Some(to)) => write!(
                f,
                "timeline {} has WAL until {} but no base backup from which it is continuous",
                self.timeline,
                at(to)
            ),
            (Some(from), None) => write!(
                f,
                "timeline {} can be restored from {}, but the archive does not yet say up to when it holds every transaction (the WAL archiver records that as it runs)",
                self.timeline,
                at(from)
            ),
            (None, None) => write!(f, "timeline {} has no archived WAL", self.timeline),
        }
    }
}

/// A restore that can be carried out.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// The base backup.
    pub backup: &'a Manifest,
    /// The last segment checked to be in the archive, if WAL is needed.
    pub wal_through: Option<String>,
    /// The window of the path.
    pub window: Window,
    /// Things the user should know that do not stop the restore.
    pub warnings: Vec<String>,
}

/// Why a restore cannot be carried out as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No backup fits.
    #[error("{0}")]
    NoBackup(String),
    /// The target is outside the window.
    #[error("{target} is outside what can be restored: {window}")]
    OutsideWindow {
        /// The target.
        target: String,
        /// The window.
        window: Window,
    },
    /// A segment the restore needs is not archived.
    #[error(
        "WAL segment {segment} is missing from the archive: recovery from backup {backup} to {target} cannot get past it"
    )]
    MissingSegment {
        /// The segment's file name.
        segment: String,
        /// The backup.
        backup: String,
        /// The target.
        target: String,
    },
    /// The backup and the WAL archive do not belong together.
    #[error("{0}")]
    Mismatch(String),
}

/// A backup's timeline and end LSN.
fn backup_end(manifest: &Manifest) -> Option<(u32, u64)> {
    Some((
        manifest.timeline.unwrap_or(1),
        parse_lsn(manifest.end_lsn.as_deref()?)?,
    ))
}

/// The recoverability window along the path.
pub fn window(sources: &Sources<'_>) -> Window {
    let timeline = sources.path.timeline();
    let Some(index) = sources.index else {
        return Window {
            timeline,
            from: None,
            to: None,
        };
    };
    let size = index.segment_size;
    let Some(last) = index.last_segment(sources.path) else {
        return Window {
            timeline,
            from: None,
            to: None,
        };
    };
    // The archiver's record counts where the WAL it names is stored on this path.
    let recorded = sources.coverage.and_then(|c| {
        let lsn = parse_lsn(&c.lsn)?;
        let segno = segno_of(lsn.saturating_sub(1), size);
        let timeline = sources.path.timeline_of_segment(segno, size);
        let stored = index.segments.contains_key(&(timeline, segno))
            || index.partials.contains_key(&(timeline, segno));
        (timeline == c.timeline && stored).then_some((c.covers, lsn))
    });
    let to = index.covered_until(sources.path).max(recorded);
    let from = sources
        .backups
        .iter()
        .filter_map(|m| {
            let (tli, end) = backup_end(m)?;
            let first = segno_of(end.saturating_sub(1), size);
            let continuous = sources.path.contains(tli, end)
                && first <= last
                && index
                    .chain(sources.path, first, last)
                    .iter()
                    .all(|l| l.stored.is_some());
            continuous.then_some((m.end_time, end))
        })
        .next();
    Window { timeline, from, to }
}

/// Plans a restore.
pub fn plan<'a>(sources: &Sources<'a>, request: &PlanRequest<'_>) -> Result<Plan<'a>, PlanError> {
    let window = window(sources);
    let target_text = request.target.to_string();
    // The bases: physical backups, or — when asked — recorded volume snapshots taken in
    // backup mode (their label and end position are known).
    let base_kind = if request.snapshot {
        BackupKind::Snapshot
    } else {
        BackupKind::Physical
    };
    let on_path: Vec<&'a Manifest> = sources
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
        .collect();
    let explicit = match request.backup {
        None => None,
        Some("latest") => Some(on_path.last().copied().ok_or_else(|| {
            PlanError::NoBackup(format!(
                "no complete physical backup on timeline {}",
                window.timeline
            ))
        })?),
        Some(id) => Some(find_explicit(sources, &on_path, id, window.timeline)?),
    };
    let outside = || PlanError::OutsideWindow {
        target: target_text.clone(),
        window: window.clone(),
    };
    let backup = match (request.target, explicit) {
        (RecoveryTarget::Xid(_) | RecoveryTarget::Name(_), None) => {
            return Err(PlanError::NoBackup(format!(
                "restoring to {target_text} needs --backup ID (or latest): where it lies in the WAL is only known once it is replayed"
            )));
        }
        (RecoveryTarget::Time(t), None) => on_path
            .iter()
            .rev()
            .find(|m| m.end_time <= *t)
            .copied()
            .ok_or_else(outside)?,
        (RecoveryTarget::Lsn(lsn), None) => on_path
            .iter()
            .rev()
            .find(|m| backup_end(m).is_some_and(|(_, end)| end <= *lsn))
            .copied()
            .ok_or_else(outside)?,
        (_, None) => on_path.last().copied().ok_or_else(|| {
            PlanError::NoBackup(format!(
                "no complete physical backup on timeline {}",
                window.timeline
            ))
        })?,
        (target, Some(backup)) => {
            let too_late = match target {
                RecoveryTarget::Time(t) => backup.end_time > *t,
                RecoveryTarget::Lsn(lsn) => backup_end(backup).is_some_and(|(_, e)| e > *lsn),
                _ => false,
            };
            if too_late && backup.kind == BackupKind::Snapshot {
                return Err(PlanError::NoBackup(format!(
                    "{target_text} lies before the snapshot ({}) is consistent, at {} (LSN {}): a volume snapshot restores to the moment it was taken or later",
                    backup.backup_id,
                    backup.end_time.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    backup.end_lsn.as_deref().unwrap_or("?")
                )));
            }
            if too_late {
                return Err(PlanError::NoBackup(format!(
                    "backup {} ends at {}, after {target_text}: choose an earlier backup or leave out --backup",
                    backup.backup_id,
                    backup.end_time.strftime("%Y-%m-%d %H:%M:%S UTC")
                )));
            }
            backup
        }
    };
    check_identity(sources, backup)?;
    let mut plan = Plan {
        backup,
        wal_through: None,
        window: window.clone(),
        warnings: Vec::new(),
    };
    if *request.target == RecoveryTarget::Immediate {
        return Ok(plan);
    }
    let Some(index) = sources.index else {
        if *request.target == RecoveryTarget::Latest {
            plan.warnings.push(format!(
                "there is no WAL archive: the restore ends where backup {} ends",
                backup.backup_id
            ));
            return Ok(plan);
        }
        return Err(outside());
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
            if window.to.is_none_or(|(to, _)| to < *t) {
                return Err(outside());
            }
            (last, true)
        }
        RecoveryTarget::Lsn(lsn) => {
            let reachable = last.map(|l| (l + 1) * size).unwrap_or(0);
            if *lsn > reachable {
                return Err(outside());
            }
            (Some(segno_of(*lsn, size)), true)
        }
        RecoveryTarget::Latest => (last, true),
        _ => (last, false),
    };
    let Some(through) = through.filter(|t| *t >= first) else {
        return Ok(plan);
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
                target: target_text,
            });
        }
        plan.warnings.push(format!(
            "WAL segment {segment} is missing from the archive: {target_text} must lie before it"
        ));
    }
    plan.wal_through =
        Some(WalFile::segment(sources.path.timeline_of_segment(through, size), through).name(size));
    Ok(plan)
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

fn check_identity(sources: &Sources<'_>, backup: &Manifest) -> Result<(), PlanError> {
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

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
