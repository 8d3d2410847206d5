//! Planning a point-in-time restore, before anything is written: which base backup, whether
//! the target lies inside the recoverability window, and whether the WAL from the backup to
//! the target is all there. Pure: the catalog and the WAL index in, a plan or the reason
//! there is none out.

mod base;
mod wal;
mod window;

use window::backup_end;
pub use window::window;

use std::fmt;

use jiff::Timestamp;

use crate::repository::{
    ArchiveCoverage, ArchiveIdentity, Manifest, TimelinePath, WalIndex, format_lsn,
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

/// Plans a restore: the window along the path, the base, and the WAL from the base to the
/// target all there.
pub fn plan<'a>(sources: &Sources<'a>, request: &PlanRequest<'_>) -> Result<Plan<'a>, PlanError> {
    let window = window(sources);
    let on_path = base::bases_on_path(sources, request.snapshot);
    let backup = base::choose(sources, request, &on_path, &window)?;
    base::check_identity(sources, backup)?;
    let mut plan = Plan {
        backup,
        wal_through: None,
        window,
        warnings: Vec::new(),
    };
    wal::check_wal(sources, request, &mut plan)?;
    Ok(plan)
}

/// The target lies outside what the path can reach.
fn outside(request: &PlanRequest<'_>, window: &Window) -> PlanError {
    PlanError::OutsideWindow {
        target: request.target.to_string(),
        window: window.clone(),
    }
}

#[cfg(test)]
mod tests;
