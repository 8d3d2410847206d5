//! Finding the backup a restore asks for, and the checks made on it before anything is
//! written: its manifest authentic and as pinned, its objects present, the server binary of
//! its major version.

use super::RestoreArgs;
use crate::{
    agent::{AgentError, process::PgBin},
    repository::{BackupDir, Catalog, Keys, Manifest, ObjectStore, Store},
};

/// The backup `--backup` names (default: the latest), with its objects checked present.
pub(super) async fn find_backup(
    args: &RestoreArgs,
    store: &Store,
) -> Result<(BackupDir, Manifest), AgentError> {
    let catalog = Catalog::load(store, &args.repository.server).await?;
    let wanted = args.backup.as_deref().unwrap_or("latest");
    let (entry, manifest) = catalog.find(wanted).ok_or_else(|| {
        AgentError::Invalid(format!(
            "no complete backup {wanted} of server {}",
            args.repository.server
        ))
    })?;
    check_authentic(args.repository.keys()?.as_ref(), manifest)?;
    check_objects_present(store, &entry.dir, manifest).await?;
    check_pinned(args, store, manifest).await?;
    Ok((entry.dir.clone(), manifest.clone()))
}

/// With an encryption key, a manifest must carry its MAC (written by a holder of the key),
/// unless unencrypted data is accepted (`--allow-unencrypted`: also for backups made
/// before manifests carried one); a MAC that does not match is refused always.
pub(crate) fn check_authentic(keys: Option<&Keys>, manifest: &Manifest) -> Result<(), AgentError> {
    let Some(keys) = keys else {
        return Ok(());
    };
    match manifest.sealed_by(keys) {
        Ok(true) => Ok(()),
        Ok(false) if keys.accepts_plaintext() => Ok(()),
        Ok(false) if !manifest.encrypted => Err(AgentError::Corrupt(format!(
            "backup {} is not encrypted, but the repository's encryption key is given: anyone who can write to the repository could have put it there (pass --allow-unencrypted for backups made before encryption was turned on)",
            manifest.backup_id
        ))),
        Ok(false) => Err(AgentError::Corrupt(format!(
            "the manifest of backup {} carries no MAC under the encryption key: someone without the key wrote it (or a pgbackup that did not yet authenticate manifests: pass --allow-unencrypted to read it all the same)",
            manifest.backup_id
        ))),
        Err(reason) => Err(AgentError::Corrupt(reason)),
    }
}

/// With `--expect-sha256`: `manifest` (as the catalog read it) must be the manifest whose
/// stored bytes have that digest, read again now.
pub(super) async fn check_pinned(
    args: &RestoreArgs,
    store: &Store,
    manifest: &Manifest,
) -> Result<(), AgentError> {
    let Some(sha256) = &args.expect_sha256 else {
        return Ok(());
    };
    let pinned = crate::agent::verify::expected_manifest(store, manifest, sha256).await?;
    if pinned != *manifest {
        return Err(AgentError::Corrupt(format!(
            "the manifest of backup {} changed while it was being read: not restoring it",
            manifest.backup_id
        )));
    }
    Ok(())
}

/// Every chunk the manifest names is in the store with the recorded size.
pub(crate) async fn check_objects_present(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
) -> Result<(), AgentError> {
    let present = store.list(&dir.prefix()).await?;
    for chunk in manifest.objects.iter().flat_map(|o| &o.chunks) {
        let key = dir.key(&chunk.file);
        match present.iter().find(|p| p.key == key) {
            None => {
                return Err(AgentError::Corrupt(format!(
                    "object {key} of backup {} is missing",
                    dir.backup_id
                )));
            }
            Some(p) if p.size != chunk.size => {
                return Err(AgentError::Corrupt(format!(
                    "object {key} is corrupt: {} bytes stored, {} recorded in the manifest",
                    p.size, chunk.size
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The server binary must be of the backup's major version.
pub(super) async fn check_server_version(
    pg_bin: &PgBin,
    backup: &Manifest,
) -> Result<(), AgentError> {
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
