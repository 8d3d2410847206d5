//! `pgbackup prune`: delete the backups a retention policy no longer keeps. A dry run unless
//! `--delete` is given. The policy applies to each kind of backup separately; incomplete
//! backups (no manifest: failed or still running) are left alone.

use clap::Args;
use jiff::Timestamp;

use super::{AgentError, repository_args::RepositoryArgs};
use crate::repository::{
    BackupKind, Catalog, MANIFEST_FILE, ObjectStore, RetentionPolicy, parse_duration, select_kept,
};

/// Options of `pgbackup prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repository: RepositoryArgs,
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
    /// Really delete. Without it, only show what would be deleted.
    #[arg(long)]
    pub delete: bool,
}

/// Prunes; returns the plan (and what was done) as text.
pub async fn run(args: &PruneArgs) -> Result<String, AgentError> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        max_age_seconds: args
            .max_age
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| AgentError::Invalid(e.to_string()))?,
    };
    policy
        .validate()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let store = args.repository.open().await?;
    let catalog = Catalog::load(&store, &args.repository.server).await?;
    let now = Timestamp::now();
    let mut out = String::new();
    let mut doomed = Vec::new();
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
        let kept = select_kept(&times, &policy, now);
        for (backup, _) in completed {
            let keep = kept.contains(&backup.dir.backup_id);
            out.push_str(&format!(
                "{} {} {}\n",
                if keep { "keep  " } else { "delete" },
                kind.as_str(),
                backup.dir.backup_id
            ));
            if !keep {
                doomed.push(backup.dir.clone());
            }
        }
    }
    if !args.delete {
        out.push_str(&format!(
            "dry run: {} backups would be deleted; pass --delete to delete them\n",
            doomed.len()
        ));
        return Ok(out);
    }
    for dir in &doomed {
        // The manifest goes first: a backup interrupted half-way through deletion then reads
        // as incomplete, never as complete with objects missing.
        store.delete(&dir.key(MANIFEST_FILE)).await?;
        for object in store.list(&dir.prefix()).await? {
            store.delete(&object.key).await?;
        }
        tracing::info!(backup_id = %dir.backup_id, "deleted backup {}", dir.backup_id);
    }
    out.push_str(&format!("deleted {} backups\n", doomed.len()));
    Ok(out)
}
