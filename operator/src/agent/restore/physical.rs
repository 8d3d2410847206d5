//! Restoring a physical backup into an empty data directory, as it was or to a point in
//! time: plan first (backup, window, WAL continuity, versions), then lay the backup down,
//! then the recovery settings, and with `--recover` the recovery itself. A failure after
//! the lay-down leaves nothing half-restored behind.

use std::path::Path;

use super::{
    RecoveryTarget, RestoreArgs, TimelineChoice, aside, check_objects_present,
    combine::Chain,
    plan::{PlanRequest, Sources, plan},
    recover, same_cluster, settings, snapshot_copy,
};
use crate::{
    agent::{AgentError, process::PgBin, untar::unpack_tar},
    repository::{
        BackupDir, BackupKind, Catalog, Keys, Manifest, ObjectRole, Store, TimelinePath,
        WalArchive, WalFile, open_object,
    },
};

/// WAL segment size assumed when there is no archive to say (PostgreSQL's default).
const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Checks that a physical backup can be laid down: its objects are all there and, for an
/// incremental backup, every backup of its chain too, with a `pg_combinebackup` of its
/// major version at hand. The chain, for an incremental backup.
pub(super) async fn check_backup(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    keys: Option<&Keys>,
    pg_bin: &PgBin,
) -> Result<Option<Chain>, AgentError> {
    check_physical(dir, manifest)?;
    if manifest.chain.is_empty() {
        check_objects_present(store, dir, manifest).await?;
    }
    chain_of(store, dir, manifest, keys, pg_bin).await
}

/// For an incremental backup, its chain, resolved and checked ([`Chain::check`]); `None`
/// for a full backup (whose objects the caller has checked).
pub(super) async fn chain_of(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    keys: Option<&Keys>,
    pg_bin: &PgBin,
) -> Result<Option<Chain>, AgentError> {
    if manifest.chain.is_empty() {
        return Ok(None);
    }
    let catalog = Catalog::load(store, &dir.server).await?;
    let chain = Chain::resolve(&catalog, dir, manifest)?;
    chain.check(store, keys, pg_bin).await?;
    Ok(Some(chain))
}

fn check_physical(dir: &BackupDir, manifest: &Manifest) -> Result<(), AgentError> {
    if manifest.kind == BackupKind::Physical {
        return Ok(());
    }
    Err(AgentError::Invalid(format!(
        "backup {} is {}, not physical: restore it with --logical",
        dir.backup_id,
        manifest.kind.as_str()
    )))
}

/// Lays a physical backup down in `pgdata` (empty or absent); an incremental one combined
/// with the backups it builds on (`chain`, from [`check_backup`] or [`chain_of`]: the
/// checks are the caller's, made before anything else was touched).
pub(super) async fn lay_down(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    chain: Option<&Chain>,
    pgdata: &Path,
    keys: Option<&Keys>,
    pg_bin: &PgBin,
) -> Result<String, AgentError> {
    check_physical(dir, manifest)?;
    let existed = check_empty(pgdata)?;
    let written = match chain {
        Some(chain) => chain.lay_down(store, keys, pgdata, pg_bin).await,
        None => {
            let data = manifest.object(ObjectRole::Data, None).ok_or_else(|| {
                AgentError::Corrupt(format!("backup {} has no data object", dir.backup_id))
            })?;
            let reader = open_object(store, dir, data, manifest, keys).await?;
            unpack_tar(reader, pgdata).await
        }
    };
    let unpacked = match written {
        Ok(()) => foreign_link(pgdata).map_or(Ok(()), |(link, to)| {
            Err(AgentError::Corrupt(format!(
                "backup {} holds a symbolic link {link} -> {to}, where PostgreSQL makes none: \
                 refusing it (writing the recovery settings would follow it out of the data \
                 directory)",
                dir.backup_id
            )))
        }),
        Err(err) => Err(err),
    };
    if let Err(err) = unpacked {
        remove_restored(pgdata, existed);
        return Err(err);
    }
    let combined = match chain {
        Some(chain) => format!(
            ", combined with the {} backups it builds on ({})",
            manifest.chain.len(),
            chain
                .members()
                .map(|(d, _)| d.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        ),
        None => String::new(),
    };
    Ok(format!(
        "restored {} physical backup {}{combined} (PostgreSQL {}, WAL {}..{}) into {}",
        manifest.kind_label(),
        dir.backup_id,
        manifest.server_version,
        manifest.begin_lsn.as_deref().unwrap_or("?"),
        manifest.end_lsn.as_deref().unwrap_or("?"),
        pgdata.display()
    ))
}

/// A point-in-time restore into `pgdata`.
pub(super) async fn restore_to_target(
    args: &RestoreArgs,
    store: &Store,
    pgdata: &Path,
    target: &RecoveryTarget,
) -> Result<String, AgentError> {
    let server = &args.repository.server;
    let catalog = Catalog::load(store, server).await?;
    let keys = args.repository.keys()?;
    let archive = WalArchive::new(store, server).with_keys(keys.clone());
    let identity = archive.identity().await?;
    let segment_size = identity
        .as_ref()
        .map(|i| i.wal_segment_size)
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    let (index, coverage) = match identity {
        Some(_) => (
            Some(archive.index(segment_size).await?),
            archive.coverage().await?,
        ),
        None => (None, None),
    };
    let manifests: Vec<&Manifest> = catalog
        .backups
        .iter()
        .filter_map(|b| b.manifest.as_ref())
        .collect();
    let (manifests, broken) = complete_chains(manifests);
    for backup in broken {
        tracing::warn!(
            "incremental backup {} is left out: a backup it builds on ({}) is not in the repository",
            backup.backup_id,
            backup.chain.join(", ")
        );
    }
    if args.snapshot_data && args.backup.as_deref() == Some("latest") {
        return Err(AgentError::Invalid(
            "--snapshot-data needs the id of the snapshot backup the data directory was made from, not latest".into(),
        ));
    }
    let pg_bin = PgBin(args.pg_bin.clone());
    // A copy without a backup label is its own base: planned from its control file and WAL.
    let copy = if args.snapshot_data {
        match snapshot_copy::copy_base(args, &manifests, pgdata, &pg_bin, keys.as_ref()).await? {
            snapshot_copy::Base::Labelled => None,
            snapshot_copy::Base::Copy(copy) => Some(*copy),
            snapshot_copy::Base::NotAtHand => {
                return snapshot_copy::unseen_copy_report(target, identity.is_some());
            }
        }
    } else {
        None
    };
    let manifests: Vec<&Manifest> = match &copy {
        Some(copy) => vec![&copy.manifest],
        None => manifests,
    };
    let chosen = match &copy {
        Some(copy) => Some(copy.manifest.backup_id.as_str()),
        None => args.backup.as_deref(),
    };
    let base_kind = if args.snapshot_data {
        BackupKind::Snapshot
    } else {
        BackupKind::Physical
    };
    let physical = |id: Option<&str>| {
        manifests
            .iter()
            .rev()
            .find(|m| m.kind == base_kind && id.is_none_or(|id| m.backup_id == id))
    };
    let backup_timeline = || {
        let id = chosen.filter(|b| *b != "latest");
        physical(id).and_then(|m| m.timeline).unwrap_or(1)
    };
    if let Some(index) = &index {
        for stray in index.unplaced_timelines() {
            tracing::warn!(
                "the WAL archive of server {server} holds WAL of timeline {stray} but no history file for it ({}): that WAL is ignored",
                WalFile::history(stray).name(segment_size)
            );
        }
    }
    let timeline = match (args.target_timeline, target) {
        (Some(TimelineChoice::Id(id)), _) => id,
        (Some(TimelineChoice::Current), _) | (None, RecoveryTarget::Immediate) => backup_timeline(),
        _ => index
            .as_ref()
            .map(|i| i.latest_timeline())
            .unwrap_or_else(backup_timeline),
    };
    let history = match archive.history(timeline, segment_size).await? {
        Some(history) => history,
        None if index.is_none() => Vec::new(),
        None => {
            return Err(AgentError::Invalid(format!(
                "the WAL archive of server {server} has no history file for timeline {timeline} ({})",
                WalFile::history(timeline).name(segment_size)
            )));
        }
    };
    let path = TimelinePath::new(timeline, &history);
    let sources = Sources {
        backups: &manifests,
        index: index.as_ref(),
        identity: identity.as_ref(),
        coverage: coverage.as_ref(),
        path: &path,
    };
    let request = PlanRequest {
        target,
        backup: chosen,
        snapshot: args.snapshot_data,
    };
    let plan = plan(&sources, &request).map_err(|e| AgentError::Invalid(e.to_string()))?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let backup = plan.backup;
    tracing::info!(
        backup = %backup.backup_id,
        wal_through = plan.wal_through.as_deref().unwrap_or("-"),
        "restoring to {target} from backup {} ({})",
        backup.backup_id,
        plan.window
    );
    if let Some(expected) = &args.expect_cluster {
        same_cluster::check(expected, backup, Some(pgdata), args.set_aside.as_deref())?;
    }
    if copy.is_none() {
        super::check_authentic(keys.as_ref(), backup)?;
    }
    super::check_pinned(args, store, backup).await?;
    if args.recover {
        check_server_version(&pg_bin, backup).await?;
    }
    if args.dry_run {
        if !args.snapshot_data {
            let dir = BackupDir {
                server: server.clone(),
                kind: BackupKind::Physical,
                backup_id: backup.backup_id.clone(),
            };
            check_backup(store, &dir, backup, keys.as_ref(), &pg_bin).await?;
            if args.set_aside.is_none() {
                check_empty(pgdata)?;
            }
        }
        return dry_run_report(&plan, target);
    }
    // A copy without a label is consistent once its own WAL is replayed: "immediate" is the
    // end of that WAL, recovered without any WAL of the archive.
    let as_cut = copy.is_some() && *target == RecoveryTarget::Immediate;
    let settings = if as_cut {
        settings::history_only(&settings::recovery_settings(
            &args.repository,
            identity.is_some(),
            &RecoveryTarget::Latest,
            None,
            Some(TimelineChoice::Current),
        )?)
    } else {
        settings::recovery_settings(
            &args.repository,
            identity.is_some(),
            target,
            args.target_inclusive,
            args.target_timeline,
        )?
    };
    if args.snapshot_data {
        // A copy without a label was checked when it was read.
        if copy.is_none() {
            snapshot_copy::check_is_copy(pgdata, &format!("snapshot backup {}", backup.backup_id))?;
        }
        snapshot_copy::prepare(pgdata, backup)?;
        if !args.recover {
            settings::write(pgdata, &settings)?;
            return Ok(format!(
                "snapshot copy of backup {} prepared in {}; PostgreSQL started on it recovers to {target} and promotes",
                backup.backup_id,
                pgdata.display()
            ));
        }
        return recover_and_report(
            args,
            pgdata,
            &pg_bin,
            &settings,
            target,
            backup,
            segment_size,
            copy.as_ref(),
        )
        .await;
    }
    let dir = BackupDir {
        server: server.clone(),
        kind: BackupKind::Physical,
        backup_id: backup.backup_id.clone(),
    };
    let chain = check_backup(store, &dir, backup, keys.as_ref(), &pg_bin).await?;
    // Everything is checked: only now is anything in the data directory touched.
    if let Some(name) = &args.set_aside {
        let moved = aside::set_aside(pgdata, name)?;
        tracing::info!(
            "{moved} entries of {} set aside in {}",
            pgdata.display(),
            aside::aside_dir(pgdata, name).display()
        );
    }
    let undo = |existed: bool| {
        remove_restored(pgdata, existed);
        if let Some(name) = &args.set_aside {
            match aside::put_back(pgdata, name) {
                Ok(moved) => tracing::warn!(
                    "the restore failed: the old data ({moved} entries) is back in place"
                ),
                Err(err) => {
                    tracing::error!(error = %err, "the restore failed and the old data could not be put back: it is in {}", aside::aside_dir(pgdata, name).display())
                }
            }
        }
    };
    let existed = check_empty(pgdata)?;
    let laid_down = match lay_down(
        store,
        &dir,
        backup,
        chain.as_ref(),
        pgdata,
        keys.as_ref(),
        &pg_bin,
    )
    .await
    {
        Ok(laid_down) => laid_down,
        Err(err) => {
            undo(existed);
            return Err(err);
        }
    };
    if !args.recover {
        if let Err(err) = settings::write(pgdata, &settings) {
            undo(existed);
            return Err(err);
        }
        return Ok(format!(
            "{laid_down}; PostgreSQL started on it recovers to {target} and promotes"
        ));
    }
    tracing::info!("{laid_down}");
    match recover_and_report(
        args,
        pgdata,
        &pg_bin,
        &settings,
        target,
        backup,
        segment_size,
        None,
    )
    .await
    {
        Ok(report) => Ok(report),
        Err(err) => {
            undo(existed);
            Err(err)
        }
    }
}

/// The backups whose chain is whole in the repository, and the incremental ones whose chain
/// is not (they cannot be restored).
fn complete_chains(manifests: Vec<&Manifest>) -> (Vec<&Manifest>, Vec<&Manifest>) {
    let physical: std::collections::BTreeSet<&str> = manifests
        .iter()
        .filter(|m| m.kind == BackupKind::Physical)
        .map(|m| m.backup_id.as_str())
        .collect();
    manifests
        .into_iter()
        .partition(|m| m.chain.iter().all(|id| physical.contains(id.as_str())))
}

/// Recovers the prepared data directory to the target and says where it stopped.
#[allow(clippy::too_many_arguments)]
async fn recover_and_report(
    args: &RestoreArgs,
    pgdata: &Path,
    pg_bin: &PgBin,
    settings: &settings::Settings,
    target: &RecoveryTarget,
    backup: &Manifest,
    segment_size: u64,
    copy: Option<&snapshot_copy::CopyBase>,
) -> Result<String, AgentError> {
    let time_target = matches!(target, RecoveryTarget::Time(_));
    let reached = match recover::run(pgdata, pg_bin, settings, time_target).await {
        Ok(reached) => reached,
        Err(err) => {
            return Err(match copy {
                Some(copy) => snapshot_copy::explain(err, copy),
                None => err,
            });
        }
    };
    if let Some(copy) = copy {
        let before = reached
            .stop
            .as_deref()
            .is_some_and(|s| s.starts_with("recovery stopping before"));
        snapshot_copy::check_consistent(reached.lsn.as_deref(), before, copy)?;
    }
    if args.archive_off {
        let auto = pgdata.join("postgresql.auto.conf");
        let before = std::fs::read_to_string(&auto).unwrap_or_default();
        std::fs::write(
            &auto,
            format!("{before}\n# pgbackup: a copy beside the original archives nothing\narchive_mode = 'off'\n"),
        )
        .map_err(|source| AgentError::Io {
            path: auto.display().to_string(),
            source,
        })?;
    } else if let Some(new_timeline) = reached.timeline {
        mark_history_for_archiving(pgdata, new_timeline, segment_size)?;
    }
    if args.json {
        let report = serde_json::json!({
            "backupId": backup.backup_id,
            "chain": backup.chain,
            "target": target.to_string(),
            "reachedLsn": reached.lsn,
            "timeline": reached.timeline,
            "lastTransaction": reached.last_transaction,
            "stop": reached.stop,
            "replayedToEnd": reached.replayed_to_end,
            "walFilesFetched": reached.files_restored,
        });
        return Ok(report.to_string());
    }
    let incremental = backup.parent().map_or(String::new(), |parent| {
        format!(" (incremental, on top of {parent})")
    });
    Ok(format!(
        "recovered backup {}{incremental} to {target}: reached LSN {}, timeline {}, last replayed transaction committed at {}{}; {} WAL files fetched; {} is ready to start",
        backup.backup_id,
        reached.lsn.as_deref().unwrap_or("?"),
        reached
            .timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        reached
            .last_transaction
            .as_deref()
            .unwrap_or("(none replayed)"),
        match (&reached.stop, reached.replayed_to_end) {
            (_, true) => " (no later commit in the archive: replayed to its end)".to_string(),
            (Some(stop), false) => format!(" ({stop})"),
            (None, false) => String::new(),
        },
        reached.files_restored,
        pgdata.display()
    ))
}

/// What `--dry-run` prints: the plan, for people and for the operator's restore Job.
fn dry_run_report(plan: &super::Plan<'_>, target: &RecoveryTarget) -> Result<String, AgentError> {
    let lsn = |l: u64| crate::repository::format_lsn(l);
    let report = serde_json::json!({
        "backupId": plan.backup.backup_id,
        "target": target.to_string(),
        "timeline": plan.window.timeline,
        "walThrough": plan.wal_through,
        "window": {
            "fromTime": plan.window.from.map(|(t, _)| t),
            "fromLsn": plan.window.from.map(|(_, l)| lsn(l)),
            "toTime": plan.window.to.map(|(t, _)| t),
            "toLsn": plan.window.to.map(|(_, l)| lsn(l)),
        },
        "serverVersion": plan.backup.server_version,
        "systemIdentifier": plan.backup.system_identifier,
        "warnings": plan.warnings,
    });
    serde_json::to_string_pretty(&report).map_err(|e| AgentError::Invalid(e.to_string()))
}

/// Marks the new timeline's history file as waiting to be archived: the server archived
/// nothing during recovery, and later restores along the new timeline need the file. A
/// server archiving with `archive_command` stores it on its next start; the WAL archiver
/// stores it when it starts streaming from the server. It is not stored from here, so that
/// restore drills which are never archived do not claim timeline ids.
fn mark_history_for_archiving(
    pgdata: &Path,
    timeline: u32,
    segment_size: u64,
) -> Result<(), AgentError> {
    let name = WalFile::history(timeline).name(segment_size);
    let ready = pgdata
        .join("pg_wal")
        .join("archive_status")
        .join(format!("{name}.ready"));
    std::fs::write(&ready, b"").map_err(|source| AgentError::Io {
        path: ready.display().to_string(),
        source,
    })
}

/// The server binary must be of the backup's major version.
async fn check_server_version(pg_bin: &PgBin, backup: &Manifest) -> Result<(), AgentError> {
    let program = pg_bin.program("postgres");
    let out = crate::agent::process::tool_command(&program)
        .arg("--version")
        .output()
        .await
        .map_err(|source| AgentError::Io {
            path: program.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `postgres (PostgreSQL) 15.8 (Debian 15.8-1)`
    let major = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    let wanted = backup.server_version_num / 10_000;
    if major != Some(wanted) {
        return Err(AgentError::Invalid(format!(
            "backup {} is of PostgreSQL {wanted}, but {} is {}: use the server of the backup's major version (--pg-bin)",
            backup.backup_id,
            program.display(),
            text.trim()
        )));
    }
    Ok(())
}

/// Fails unless `pgdata` is empty or absent (entries that are not PostgreSQL's — an aside
/// directory, `lost+found` — do not count); returns whether it existed.
fn check_empty(pgdata: &Path) -> Result<bool, AgentError> {
    if !pgdata.exists() {
        return Ok(false);
    }
    let entries = std::fs::read_dir(pgdata).map_err(|source| AgentError::Io {
        path: pgdata.display().to_string(),
        source,
    })?;
    let occupied = entries
        .flatten()
        .any(|e| !aside::is_foreign(&e.file_name().to_string_lossy()));
    if occupied {
        return Err(AgentError::Invalid(format!(
            "{} is not empty: restore into an empty or new directory, or give --set-aside to keep its contents aside until the restore is proven",
            pgdata.display()
        )));
    }
    Ok(true)
}

/// Removes what a failed restore wrote: the directory's contents (never an aside directory
/// or `lost+found`), or the directory if it was created.
fn remove_restored(pgdata: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(pgdata);
        return;
    }
    let _ = aside::empty(pgdata);
}

/// The first symbolic link in a laid-down data directory other than the tablespace links
/// PostgreSQL makes (`pg_tblspc/<oid>`), with where it points. The restore writes into the
/// tree (`postgresql.auto.conf`, `recovery.signal`, `pg_wal/archive_status`), so a link
/// from the archive must not lead those writes elsewhere.
fn foreign_link(pgdata: &Path) -> Option<(String, String)> {
    let mut pending = vec![pgdata.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let relative = path.strip_prefix(pgdata).unwrap_or(&path);
            // The data a restore set aside is the user's own, not the backup's.
            if dir == pgdata
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(aside::ASIDE_PREFIX)
            {
                continue;
            }
            if kind.is_symlink() {
                let tablespace = relative.parent() == Some(Path::new("pg_tblspc"))
                    && relative
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().bytes().all(|b| b.is_ascii_digit()));
                if !tablespace {
                    let to = std::fs::read_link(&path).unwrap_or_default();
                    return Some((relative.display().to_string(), to.display().to_string()));
                }
            } else if kind.is_dir() {
                pending.push(path);
            }
        }
    }
    None
}
