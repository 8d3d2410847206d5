//! Laying a physical backup down in an empty data directory (an incremental one combined
//! with its chain), with the data directory's own checks, and undoing it when a later step
//! fails; a snapshot copy prepared in place instead.

use std::path::Path;

use super::Run;
use crate::agent::restore::{
    Plan, aside, backup_checks::check_objects_present, combine::Chain, settings, snapshot_copy,
};
use crate::{
    agent::{AgentError, process::PgBin, untar::unpack_tar},
    repository::{BackupDir, BackupKind, Catalog, Keys, Manifest, ObjectRole, Store, open_object},
};

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

impl Run<'_> {
    /// `--dry-run`: the plan, after the checks a real restore would make first.
    pub(super) async fn dry_run(&self, plan: &Plan<'_>) -> Result<String, AgentError> {
        if !self.args.snapshot_data {
            let dir = self.backup_dir(plan.backup);
            let keys = self.held.keys.as_ref();
            check_backup(self.store, &dir, plan.backup, keys, &self.pg_bin).await?;
            if self.args.set_aside.is_none() {
                check_empty(self.pgdata)?;
            }
        }
        super::report::dry_run_report(plan, self.target)
    }

    /// A snapshot's copy is the data directory already: checked, prepared for recovery,
    /// and recovered with `--recover`.
    pub(super) async fn prepare_snapshot_copy(
        &self,
        backup: &Manifest,
        settings: &settings::Settings,
        copy: Option<&snapshot_copy::CopyBase>,
    ) -> Result<String, AgentError> {
        let pgdata = self.pgdata;
        // A copy without a label was checked when it was read.
        if copy.is_none() {
            snapshot_copy::check_is_copy(pgdata, &format!("snapshot backup {}", backup.backup_id))?;
        }
        snapshot_copy::prepare(pgdata, backup)?;
        if !self.args.recover {
            settings::write(pgdata, settings)?;
            return Ok(format!(
                "snapshot copy of backup {} prepared in {}; PostgreSQL started on it recovers to {} and promotes",
                backup.backup_id,
                pgdata.display(),
                self.target
            ));
        }
        self.recover_and_report(settings, backup, copy).await
    }

    /// Everything is checked: sets the old data aside (`--set-aside`), lays the backup
    /// down, writes the recovery settings and, with `--recover`, recovers. A failure on
    /// the way removes what was written and puts the old data back.
    pub(super) async fn lay_down_and_recover(
        &self,
        backup: &Manifest,
        settings: &settings::Settings,
    ) -> Result<String, AgentError> {
        let (args, pgdata) = (self.args, self.pgdata);
        let dir = self.backup_dir(backup);
        let keys = self.held.keys.as_ref();
        let chain = check_backup(self.store, &dir, backup, keys, &self.pg_bin).await?;
        // Only now is anything in the data directory touched.
        if let Some(name) = &args.set_aside {
            let moved = aside::set_aside(pgdata, name)?;
            tracing::info!(
                "{moved} entries of {} set aside in {}",
                pgdata.display(),
                aside::aside_dir(pgdata, name).display()
            );
        }
        let existed = check_empty(pgdata)?;
        let laid_down = lay_down(
            self.store,
            &dir,
            backup,
            chain.as_ref(),
            pgdata,
            keys,
            &self.pg_bin,
        )
        .await;
        let restored = match laid_down {
            Ok(laid_down) if !args.recover => settings::write(pgdata, settings).map(|()| {
                format!(
                    "{laid_down}; PostgreSQL started on it recovers to {} and promotes",
                    self.target
                )
            }),
            Ok(laid_down) => {
                tracing::info!("{laid_down}");
                self.recover_and_report(settings, backup, None).await
            }
            Err(err) => Err(err),
        };
        if restored.is_err() {
            self.undo(existed);
        }
        restored
    }

    /// Removes what a failed restore wrote and puts the data set aside back.
    fn undo(&self, existed: bool) {
        let pgdata = self.pgdata;
        remove_restored(pgdata, existed);
        if let Some(name) = &self.args.set_aside {
            match aside::put_back(pgdata, name) {
                Ok(moved) => tracing::warn!(
                    "the restore failed: the old data ({moved} entries) is back in place"
                ),
                Err(err) => {
                    tracing::error!(error = %err, "the restore failed and the old data could not be put back: it is in {}", aside::aside_dir(pgdata, name).display())
                }
            }
        }
    }

    fn backup_dir(&self, backup: &Manifest) -> BackupDir {
        BackupDir {
            server: self.args.repository.server.clone(),
            kind: BackupKind::Physical,
            backup_id: backup.backup_id.clone(),
        }
    }
}
