//! `pgbackup prune`: delete the backups a retention policy no longer keeps, and the archived
//! WAL that only they needed (older than every kept physical backup). A dry run unless
//! `--delete` is given. The policy applies to each kind of backup separately; incomplete
//! backups (no manifest: failed or still running) are left alone. With `--backup-id`, exactly
//! the named backups go instead (what deleting a backup object with `deletionPolicy: Delete`
//! runs), and again the WAL that no remaining physical backup needs. A kept incremental
//! backup keeps every backup it builds on; a backup is never deleted alone from under the
//! incremental ones built on it.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use jiff::Timestamp;

use super::{AgentError, repository_args::RepositoryArgs};
use crate::{
    postgres::parse_lsn,
    repository::{
        BackupKind, Catalog, MANIFEST_FILE, Manifest, ObjectStore, RetentionPolicy, Store,
        WalArchive, WalFile, WalFileKind, WalObject, keep_chains, orphaned_by, parse_duration,
        segno_of, select_kept,
    },
};

/// Keep rules, as `pgbackup prune` and `pgbackup copy` take them: a backup is kept when
/// any rule keeps it (each kind of backup on its own).
#[derive(Debug, Clone, Default, Args)]
pub struct RetentionArgs {
    /// Keep the newest N backups (of each kind).
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days that have one (UTC).
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// Keep every backup younger than this, e.g. 30d, 2w, 36h.
    #[arg(long)]
    pub max_age: Option<String>,
}

impl RetentionArgs {
    /// Whether any rule is given.
    pub fn any(&self) -> bool {
        self.keep_last.is_some()
            || self.keep_daily.is_some()
            || self.keep_weekly.is_some()
            || self.keep_monthly.is_some()
            || self.max_age.is_some()
    }

    /// The policy of the rules given (checked: it keeps something).
    pub fn policy(&self) -> Result<RetentionPolicy, AgentError> {
        let policy = self.unchecked()?;
        policy
            .validate()
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        Ok(policy)
    }

    fn unchecked(&self) -> Result<RetentionPolicy, AgentError> {
        Ok(RetentionPolicy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            max_age_seconds: self
                .max_age
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| AgentError::Invalid(e.to_string()))?,
        })
    }
}

/// Options of `pgbackup prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
    #[command(flatten)]
    pub keep: RetentionArgs,
    /// Delete exactly this backup (repeat for several) instead of applying keep rules. A
    /// backup already gone is not an error.
    #[arg(long = "backup-id", value_name = "ID", conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "max_age", "keep_none"])]
    pub backup_ids: Vec<String>,
    /// Keep no backup: with --delete, every completed backup goes (archived WAL stays
    /// while no base backup remains). Rules that keep nothing (--keep-last 0, --max-age
    /// 0s) are refused without it.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "max_age"])]
    pub keep_none: bool,
    /// Really delete. Without it, only show what would be deleted.
    #[arg(long)]
    pub delete: bool,
}

/// Prunes; returns the plan (and what was done) as text.
pub async fn run(args: &PruneArgs) -> Result<String, AgentError> {
    let policy = if args.keep_none {
        RetentionPolicy::none()
    } else if args.backup_ids.is_empty() {
        args.keep.policy()?
    } else {
        args.keep.unchecked()?
    };
    let store = args.repository.open().await?;
    let scope = Scope {
        server: &args.repository.server,
        keys: args.repository.keys()?,
        backup_ids: &args.backup_ids,
        delete: args.delete,
    };
    prune(&store, &scope, &policy).await
}

/// What one prune works on: a server of a repository, with the repository's keys; the
/// backups named (instead of the rules), and whether to delete or only show.
pub(super) struct Scope<'a> {
    pub server: &'a str,
    pub keys: Option<crate::repository::Keys>,
    pub backup_ids: &'a [String],
    pub delete: bool,
}

/// Prunes `scope` of `store` by `policy` (or deletes the backups `scope` names); the plan
/// (and what was done) as text.
pub(super) async fn prune(
    store: &Store,
    scope: &Scope<'_>,
    policy: &RetentionPolicy,
) -> Result<String, AgentError> {
    let catalog = Catalog::load(store, scope.server).await?;
    let chains: BTreeMap<String, Vec<String>> = catalog
        .completed()
        .filter(|(_, m)| m.kind == BackupKind::Physical && !m.chain.is_empty())
        .map(|(b, m)| (b.dir.backup_id.clone(), m.chain.clone()))
        .collect();
    let mut sorted = Sorted::default();
    if scope.backup_ids.is_empty() {
        sorted.by_rules(&catalog, &chains, policy, Timestamp::now());
    } else {
        sorted.named(&catalog, scope.backup_ids, &chains)?;
    }
    let Sorted {
        mut out,
        mut doomed,
        kept_bases,
    } = sorted;
    let archive = WalArchive::new(store, scope.server).with_keys(scope.keys.clone());
    let old_wal = unneeded_wal(&archive, &kept_bases, &mut out).await?;
    if !scope.delete {
        out.push_str(&format!(
            "dry run: {} backups and {} WAL files would be deleted; pass --delete to delete them\n",
            doomed.len(),
            old_wal.len()
        ));
        return Ok(out);
    }
    // Newest first: an incremental backup goes before the backup it builds on, so that a
    // prune stopped half-way never leaves one without its parent.
    doomed.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
    for dir in &doomed {
        // The manifest goes first: a backup interrupted half-way through deletion then reads
        // as incomplete, never as complete with objects missing.
        store.delete(&dir.key(MANIFEST_FILE)).await?;
        for object in store.list(&dir.prefix()).await? {
            store.delete(&object.key).await?;
        }
        tracing::info!(backup_id = %dir.backup_id, "deleted backup {}", dir.backup_id);
    }
    for object in &old_wal {
        store.delete(&object.key).await?;
    }
    out.push_str(&format!(
        "deleted {} backups and {} WAL files\n",
        doomed.len(),
        old_wal.len()
    ));
    Ok(out)
}

/// The backups sorted into kept and deleted, with the lines that say so.
#[derive(Default)]
struct Sorted<'c> {
    out: String,
    doomed: Vec<crate::repository::BackupDir>,
    /// Kept physical backups and snapshots: the WAL they need stays.
    kept_bases: Vec<&'c Manifest>,
}

impl<'c> Sorted<'c> {
    /// `--backup-id`: the backups named go (refused when an incremental backup left would
    /// build on one of them); every other base is kept.
    fn named(
        &mut self,
        catalog: &'c Catalog,
        backup_ids: &[String],
        chains: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), AgentError> {
        let named: BTreeSet<String> = backup_ids.iter().cloned().collect();
        let orphaned = orphaned_by(&named, chains);
        if !orphaned.is_empty() {
            return Err(AgentError::Invalid(format!(
                "incremental backups {} build on the backups named: deleting those alone would leave them unrestorable; name them too (--backup-id) to delete the chain",
                orphaned.join(", ")
            )));
        }
        for id in backup_ids {
            if !catalog.backups.iter().any(|b| &b.dir.backup_id == id) {
                self.out.push_str(&format!("absent {id}\n"));
            }
        }
        for backup in &catalog.backups {
            if backup_ids.contains(&backup.dir.backup_id) {
                self.out.push_str(&format!(
                    "delete {} {}\n",
                    backup.dir.kind.as_str(),
                    backup.dir.backup_id
                ));
                self.doomed.push(backup.dir.clone());
            } else if backup.dir.kind != BackupKind::Logical
                && let Some(manifest) = &backup.manifest
            {
                self.kept_bases.push(manifest);
            }
        }
        Ok(())
    }

    /// The retention rules, kind by kind; a kept incremental backup keeps its chain.
    fn by_rules(
        &mut self,
        catalog: &'c Catalog,
        chains: &BTreeMap<String, Vec<String>>,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) {
        for kind in [
            BackupKind::Logical,
            BackupKind::Physical,
            BackupKind::Snapshot,
        ] {
            let completed: Vec<_> = catalog
                .completed()
                .filter(|(b, _)| b.dir.kind == kind)
                .collect();
            let times: Vec<(String, Timestamp)> = completed
                .iter()
                .map(|(b, m)| (b.dir.backup_id.clone(), m.end_time))
                .collect();
            let mut kept = select_kept(&times, policy, now);
            keep_chains(&mut kept, chains);
            for (backup, _) in completed {
                let keep = kept.contains(&backup.dir.backup_id);
                self.out.push_str(&format!(
                    "{} {} {}\n",
                    if keep { "keep  " } else { "delete" },
                    kind.as_str(),
                    backup.dir.backup_id
                ));
                if !keep {
                    self.doomed.push(backup.dir.clone());
                } else if kind != BackupKind::Logical
                    && let Some(manifest) = &backup.manifest
                {
                    self.kept_bases.push(manifest);
                }
            }
        }
    }
}

/// The first WAL segment (and its timeline) that the oldest of `bases` (physical backups
/// and recorded snapshots) needs; `None` without such a base.
pub(super) fn oldest_needed_segment<'a>(
    bases: impl IntoIterator<Item = &'a Manifest>,
    segment_size: u64,
) -> Option<(u64, u32)> {
    bases
        .into_iter()
        .filter_map(|m| {
            let lsn = m.begin_lsn.as_deref().and_then(parse_lsn)?;
            Some((segno_of(lsn, segment_size), m.timeline.unwrap_or(1)))
        })
        .min()
}

/// The archived WAL older than every kept physical backup and recorded volume snapshot: no
/// restore can need it. With no such base kept, none (nothing says which WAL is unneeded).
/// History files stay: they are small and every later timeline's restore reads them.
async fn unneeded_wal(
    archive: &WalArchive<'_, Store>,
    kept_bases: &[&Manifest],
    out: &mut String,
) -> Result<Vec<WalObject>, AgentError> {
    let Some(identity) = archive.identity().await? else {
        return Ok(Vec::new());
    };
    let segment_size = identity.wal_segment_size;
    let oldest_needed = oldest_needed_segment(kept_bases.iter().copied(), segment_size);
    let Some((oldest_needed, timeline)) = oldest_needed else {
        out.push_str("keep   WAL: no physical backup or recorded snapshot is kept, so all archived WAL stays\n");
        return Ok(Vec::new());
    };
    let unneeded: Vec<WalObject> = archive
        .objects(segment_size)
        .await?
        .into_iter()
        .filter(|o| o.file.kind != WalFileKind::History && o.file.segno < oldest_needed)
        .collect();
    out.push_str(&format!(
        "delete WAL: {} files before {} (where the oldest kept base backup or snapshot starts)\n",
        unneeded.len(),
        WalFile::segment(timeline, oldest_needed).name(segment_size)
    ));
    Ok(unneeded)
}
