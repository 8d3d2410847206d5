//! One backup verified object by object: each re-read and checked against its size and
//! SHA-256 in the manifest; a logical dump must read as an archive (`pg_restore --list`),
//! a physical backup must pass `pg_verifybackup` once unpacked.

use super::scratch_dir;
use crate::{
    agent::{
        AgentError,
        process::{PgBin, Tool, drain, pipe_into},
        untar::unpack_tar,
    },
    repository::{BackupEntry, Keys, Manifest, ObjectRole, Store, open_object},
};

pub(super) async fn verify_backup(
    store: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
    pg_bin: &PgBin,
    scratch: Option<&std::path::Path>,
    keys: Option<&Keys>,
) -> Result<(), AgentError> {
    crate::agent::restore::check_authentic(keys, manifest)?;
    for object in &manifest.objects {
        let reader = open_object(store, &entry.dir, object, manifest, keys).await?;
        match object.role {
            ObjectRole::Globals
            | ObjectRole::BackupManifest
            | ObjectRole::Configuration
            | ObjectRole::ServerFile => drain(reader).await?,
            ObjectRole::Database => {
                let tool = Tool::spawn(
                    &pg_bin.program("pg_restore"),
                    &["--list", "--file=/dev/null"],
                    &[],
                    true,
                )?;
                pipe_into(reader, tool).await?;
            }
            ObjectRole::DatabaseDirectory => {
                let scratch = scratch_dir(scratch)?;
                let target = scratch.path().join("dump");
                unpack_tar(reader, &target).await?;
                let tool = Tool::spawn(
                    &pg_bin.program("pg_restore"),
                    &["--list", "--file=/dev/null", &target.to_string_lossy()],
                    &[],
                    false,
                )?;
                tool.finish().await?;
            }
            ObjectRole::Data => {
                let scratch = scratch_dir(scratch)?;
                let target = scratch.path().join("pgdata");
                unpack_tar(reader, &target).await?;
                place_backup_manifest(store, entry, manifest, keys, &target).await?;
                let tool = Tool::spawn(
                    &pg_bin.program("pg_verifybackup"),
                    &["--quiet", &target.to_string_lossy()],
                    &[],
                    false,
                )?;
                tool.finish().await?;
            }
        }
        tracing::info!(backup_id = %entry.dir.backup_id, object = %object.name, "verified");
    }
    Ok(())
}

/// Puts PostgreSQL's `backup_manifest` beside an unpacked data directory for
/// `pg_verifybackup`, from its object when the archive does not hold it (a backup the
/// server compressed keeps it only as its own object).
async fn place_backup_manifest(
    store: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
    keys: Option<&Keys>,
    target: &std::path::Path,
) -> Result<(), AgentError> {
    let path = target.join("backup_manifest");
    let Some(object) = manifest.object(ObjectRole::BackupManifest, None) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    let mut reader = open_object(store, &entry.dir, object, manifest, keys).await?;
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|source| AgentError::Io {
            path: path.display().to_string(),
            source,
        })?;
    tokio::io::copy(&mut reader, &mut file)
        .await
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    Ok(())
}
