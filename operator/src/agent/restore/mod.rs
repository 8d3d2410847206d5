//! `pgbackup restore`: a logical backup into a running server (`--logical`), or a physical
//! base backup laid down in an empty data directory (`--pgdata`), optionally with the
//! settings to recover it to a point in time (`--target-*`) and, with `--recover`, carried
//! out to that point. Everything that can be checked is checked before anything is written.

pub mod aside;
mod backup_checks;
mod combine;
mod dump_archive;
mod globals;
mod logical;
mod physical;
mod plan;
mod recover;
pub mod same_cluster;
mod selection;
mod settings;
pub(crate) mod snapshot_copy;

use std::path::PathBuf;

use clap::{ArgGroup, Args};
use jiff::Timestamp;

pub use settings::{RESTORED_CODE_OFF, restored_session_options};

pub(crate) use backup_checks::{check_authentic, check_objects_present};
pub(crate) use logical::read_whole;
pub use plan::{Plan, PlanError, PlanRequest, RecoveryTarget, Sources, Window, plan, window};

use super::{AgentError, repository_args::RepositoryArgs};
use crate::postgres::{ConnectionArgs, parse_lsn};

/// Options of `pgbackup restore`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").multiple(false)))]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,

    /// Backup id to restore, or `latest`. Default: the latest; with `--target-time` or
    /// `--target-lsn`, the newest physical backup that ended before the target.
    #[arg(long)]
    pub backup: Option<String>,

    /// Restore a logical backup into the server given by the connection options.
    #[arg(long, conflicts_with_all = ["pgdata", "target"])]
    pub logical: bool,

    /// Lay a physical backup down in this data directory (it must be empty or absent).
    /// Without a `--target-*`, PostgreSQL started on it recovers to the end of the backup
    /// with the WAL the backup includes; with one, it also replays archived WAL to the
    /// target.
    #[arg(long, env = "PGBACKUP_PGDATA", value_name = "DIR")]
    pub pgdata: Option<PathBuf>,

    /// Recover to this moment: the last transaction committed at or before it (see
    /// `--target-inclusive`). RFC 3339 with an offset, e.g. `2026-11-21T12:00:00Z`.
    #[arg(long, group = "target", value_name = "TIME", value_parser = parse_time)]
    pub target_time: Option<Timestamp>,

    /// Recover to this WAL location, e.g. `0/3000148`.
    #[arg(long, group = "target", value_name = "LSN", value_parser = parse_lsn_arg)]
    pub target_lsn: Option<u64>,

    /// Recover to the commit of this transaction id. Needs `--backup`.
    #[arg(long, group = "target", value_name = "XID", value_parser = parse_xid)]
    pub target_xid: Option<String>,

    /// Recover to a restore point made with `pg_create_restore_point('NAME')`. Needs
    /// `--backup`.
    #[arg(long, group = "target", value_name = "NAME")]
    pub target_name: Option<String>,

    /// Recover only to the end of the base backup, the earliest consistent moment.
    #[arg(long, group = "target")]
    pub target_immediate: bool,

    /// Recover everything the WAL archive holds.
    #[arg(long, group = "target")]
    pub target_latest: bool,

    /// Whether recovery stops just after the target (`true`, the default) or just before it
    /// (`false`). For time, LSN and transaction targets.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), requires = "target")]
    pub target_inclusive: Option<bool>,

    /// Timeline to recover along: a number, `latest` (the newest in the archive, the
    /// default) or `current` (the base backup's).
    #[arg(long, value_name = "TIMELINE", requires = "target", value_parser = parse_timeline)]
    pub target_timeline: Option<TimelineChoice>,

    /// Run PostgreSQL on the data directory until recovery reaches the target, promote, and
    /// stop it cleanly. Without it, PostgreSQL recovers on its next start.
    #[arg(long, requires_all = ["pgdata", "target"])]
    pub recover: bool,

    /// Move what the data directory holds into `<pgdata>/.pgbackup-aside-NAME` (once
    /// everything is checked) instead of refusing a non-empty directory, and put it back if
    /// the restore fails. `pgbackup data-dir discard` removes it once the restored server
    /// is proven, `pgbackup data-dir put-back` undoes the restore.
    #[arg(long, value_name = "NAME", requires_all = ["pgdata", "target"], value_parser = parse_aside_name)]
    pub set_aside: Option<String>,

    /// The data directory already holds a volume snapshot's copy of the server (a claim
    /// made from the VolumeSnapshot): instead of laying a backup down, recover it where it
    /// is. `--backup ID` names the snapshot backup a repository records
    /// (`pgbackup record-snapshot`): an online snapshot's backup label is written into the
    /// copy. A copy without a label (a checkpoint or offline snapshot, recorded or not)
    /// recovers from the checkpoint in its control file and must replay all the WAL it
    /// holds: `--target-immediate` is the end of that WAL, and a target before it is
    /// refused. Then archived WAL takes it further, as for any base.
    #[arg(long, requires_all = ["pgdata", "target"], conflicts_with = "set_aside")]
    pub snapshot_data: bool,

    /// The restored server is a copy beside the original (a restore drill, a clone): turn
    /// its WAL archiving off (`archive_mode = off` in `postgresql.auto.conf`) and leave the
    /// new timeline's history file unmarked, so that it never archives into the
    /// original's repository.
    #[arg(long, requires = "recover")]
    pub archive_off: bool,

    /// Print the outcome of `--recover` as one line of JSON (backupId, reachedLsn,
    /// timeline, lastTransaction, stop, replayedToEnd, walFilesFetched) instead of a
    /// sentence; the restore Jobs report it to the operator this way.
    #[arg(long, requires = "recover")]
    pub json: bool,

    /// Check everything a point-in-time restore needs (backup, window, WAL continuity,
    /// versions, an empty data directory) and print the plan as JSON, without writing.
    #[arg(long, requires = "target", conflicts_with = "recover")]
    pub dry_run: bool,

    /// Restore only a backup of this cluster: a system identifier, or `pgdata` for the
    /// cluster whose data `--pgdata` holds (the one `--set-aside` replaces). A backup
    /// carries its server's configuration, which PostgreSQL runs (preload libraries,
    /// commands): restoring another server's backup over a database gives that server's
    /// owner the database's pod and rights.
    #[arg(long, value_name = "ID|pgdata")]
    pub expect_cluster: Option<same_cluster::ExpectedCluster>,

    /// Restore the backup `--backup` names only if its manifest is byte for byte the one
    /// its backup reported (this SHA-256, `status.sha256` of a PostgresBackup): a
    /// repository others can write to cannot swap in a backup of their own.
    #[arg(long, value_name = "SHA256", requires = "backup")]
    pub expect_sha256: Option<String>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Database to restore (logical; repeat for several). Default: all in the backup.
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,

    /// Do not restore roles and tablespaces (logical).
    #[arg(long)]
    pub no_globals: bool,

    /// Drop and re-create databases that already exist (logical). Without it, an existing
    /// database stops the restore before anything is changed.
    #[arg(long)]
    pub clean: bool,

    /// Restore without the dump's owners and privileges (logical): every object belongs
    /// to the restoring role and no GRANT is replayed. For a server that lacks the backup's
    /// roles, e.g. a backup taken with `--no-globals`.
    #[arg(long)]
    pub no_owner: bool,

    #[command(flatten)]
    pub selection: selection::Selection,

    /// Parallel pg_restore jobs per database (logical, whole databases). Above 1 a
    /// custom-format dump is first fetched into `--scratch-dir`, since pg_restore cannot
    /// restore in parallel from a stream; a directory-format dump is unpacked there always.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,

    /// Where dumps are fetched for `--jobs` above 1 and directory-format dumps unpacked.
    /// Default: the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// Directory of PostgreSQL's programs (pg_restore, psql, postgres; pg_combinebackup of the
    /// backup's major version for an incremental backup). Default: `PATH`.
    #[arg(long, env = "PGBACKUP_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// `--target-timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline in the archive.
    Latest,
    /// The base backup's timeline.
    Current,
    /// This timeline.
    Id(u32),
}

impl RestoreArgs {
    /// The recovery target asked for, if any.
    pub fn target(&self) -> Option<RecoveryTarget> {
        if let Some(time) = self.target_time {
            Some(RecoveryTarget::Time(time))
        } else if let Some(lsn) = self.target_lsn {
            Some(RecoveryTarget::Lsn(lsn))
        } else if let Some(xid) = &self.target_xid {
            Some(RecoveryTarget::Xid(xid.clone()))
        } else if let Some(name) = &self.target_name {
            Some(RecoveryTarget::Name(name.clone()))
        } else if self.target_immediate {
            Some(RecoveryTarget::Immediate)
        } else if self.target_latest {
            Some(RecoveryTarget::Latest)
        } else {
            None
        }
    }
}

/// Restores; returns a summary line.
pub async fn run(args: &RestoreArgs) -> Result<String, AgentError> {
    let store = args.repository.open().await?;
    match (&args.pgdata, args.target()) {
        (Some(pgdata), Some(target)) => {
            physical::restore_to_target(args, &store, pgdata, &target).await
        }
        (Some(pgdata), None) => physical::restore_as_taken(args, &store, pgdata).await,
        (None, _) if args.logical => {
            let (dir, manifest) = backup_checks::find_backup(args, &store).await?;
            logical::restore(args, &store, &dir, &manifest).await
        }
        (None, _) => Err(AgentError::Invalid(
            "say what to restore into: --logical (a running server) or --pgdata DIR".into(),
        )),
    }
}

fn parse_aside_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| text.to_string())
        .ok_or_else(|| format!("{text:?}: use letters, digits, - and _ (at most 63)"))
}

fn parse_time(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>().map_err(|e| {
        format!("{e}; give a time with its offset, e.g. 2026-11-21T12:00:00Z or 2026-11-21 13:00:00+01:00")
    })
}

fn parse_lsn_arg(text: &str) -> Result<u64, String> {
    parse_lsn(text).ok_or_else(|| format!("{text:?} is not an LSN such as 0/3000148"))
}

fn parse_xid(text: &str) -> Result<String, String> {
    text.parse::<u64>()
        .map(|xid| xid.to_string())
        .map_err(|_| format!("{text:?} is not a transaction id (a number)"))
}

fn parse_timeline(text: &str) -> Result<TimelineChoice, String> {
    match text {
        "latest" => Ok(TimelineChoice::Latest),
        "current" => Ok(TimelineChoice::Current),
        number => number
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(TimelineChoice::Id)
            .ok_or_else(|| format!("{text:?} is not a timeline: a number, latest or current")),
    }
}
