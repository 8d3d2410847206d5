//! Restoring a physical backup into an empty data directory, read top-down: what the
//! repository holds ([`held`]) → the plan: base, timeline and WAL to the target
//! ([`planning`]) → the checks made before anything is written → the lay-down
//! ([`lay_down`]) → recovery and its report ([`report`]). A failure after the lay-down
//! leaves nothing half-restored behind and puts data set aside back.

mod held;
mod lay_down;
mod planning;
mod report;

use std::path::Path;

use held::Held;
use lay_down::lay_down;

use super::{RecoveryTarget, RestoreArgs, backup_checks, same_cluster, snapshot_copy};
use crate::{
    agent::{AgentError, process::PgBin},
    repository::Store,
};

/// `--pgdata` without a target: the backup laid down as it was taken.
pub(super) async fn restore_as_taken(
    args: &RestoreArgs,
    store: &Store,
    pgdata: &Path,
) -> Result<String, AgentError> {
    let (dir, manifest) = backup_checks::find_backup(args, store).await?;
    if let Some(expected) = &args.expect_cluster {
        same_cluster::check(expected, &manifest, Some(pgdata), None)?;
    }
    // find_backup checked the backup's own objects; an incremental one's chain next.
    let keys = args.repository.keys()?;
    let pg_bin = PgBin(args.pg_bin.clone());
    let chain = lay_down::chain_of(store, &dir, &manifest, keys.as_ref(), &pg_bin).await?;
    lay_down(
        store,
        &dir,
        &manifest,
        chain.as_ref(),
        pgdata,
        keys.as_ref(),
        &pg_bin,
    )
    .await
}

/// One point-in-time restore: what was asked, and what the repository holds.
struct Run<'a> {
    args: &'a RestoreArgs,
    store: &'a Store,
    pgdata: &'a Path,
    target: &'a RecoveryTarget,
    pg_bin: PgBin,
    held: Held<'a>,
}

/// A point-in-time restore into `pgdata`.
pub(super) async fn restore_to_target(
    args: &RestoreArgs,
    store: &Store,
    pgdata: &Path,
    target: &RecoveryTarget,
) -> Result<String, AgentError> {
    if args.snapshot_data && args.backup.as_deref() == Some("latest") {
        return Err(AgentError::Invalid(
            "--snapshot-data needs the id of the snapshot backup the data directory was made from, not latest".into(),
        ));
    }
    let run = Run {
        args,
        store,
        pgdata,
        target,
        pg_bin: PgBin(args.pg_bin.clone()),
        held: Held::read(args, store).await?,
    };
    let restorable = run.held.restorable();
    // A snapshot copy without a backup label is its own base: planned from its control
    // file and WAL.
    let copy = match run.snapshot_base(&restorable).await? {
        Some(snapshot_copy::Base::NotAtHand) => {
            return snapshot_copy::unseen_copy_report(target, run.held.identity.is_some());
        }
        Some(snapshot_copy::Base::Copy(copy)) => Some(*copy),
        Some(snapshot_copy::Base::Labelled) | None => None,
    };
    let bases = match &copy {
        Some(copy) => vec![&copy.manifest],
        None => restorable,
    };
    let chosen = match &copy {
        Some(copy) => Some(copy.manifest.backup_id.as_str()),
        None => args.backup.as_deref(),
    };
    let path = run.timeline_path(&bases, chosen).await?;
    let plan = run.plan(&bases, &path, chosen)?;
    run.check_before_writing(plan.backup, copy.is_some())
        .await?;
    if args.dry_run {
        return run.dry_run(&plan).await;
    }
    let settings = run.recovery_settings(copy.is_some())?;
    if args.snapshot_data {
        return run
            .prepare_snapshot_copy(plan.backup, &settings, copy.as_ref())
            .await;
    }
    run.lay_down_and_recover(plan.backup, &settings).await
}
