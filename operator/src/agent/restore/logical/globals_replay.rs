//! The backup's roles and tablespaces replayed statement by statement over the agent's own
//! connection, once the whole script is read and checked; and [`read_whole`], which reads
//! one object of a backup whole, checked against its manifest.

use tokio::io::AsyncReadExt;

use crate::{
    agent::AgentError,
    repository::{BackupDir, Keys, Manifest, ObjectRole, Store, open_object},
};

/// Largest globals script read: roles and tablespaces, never this much.
const GLOBALS_LIMIT: u64 = 64 << 20;

/// The whole of one object of a backup, checked against its manifest; `None` when it is
/// larger than `limit` bytes (no more than that is read).
pub(crate) async fn read_whole(
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    object: &crate::repository::ObjectEntry,
    keys: Option<&Keys>,
    limit: u64,
) -> Result<Option<Vec<u8>>, AgentError> {
    let reader = open_object(store, dir, object, manifest, keys).await?;
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| AgentError::Io {
            path: dir.key(&object.name),
            source,
        })?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Replays the backup's roles and tablespaces, statement by statement.
pub(super) async fn restore_globals(
    client: &tokio_postgres::Client,
    store: &Store,
    dir: &BackupDir,
    manifest: &Manifest,
    keys: Option<&Keys>,
) -> Result<(), AgentError> {
    let Some(globals) = manifest.object(ObjectRole::Globals, None) else {
        return Ok(());
    };
    let script = read_whole(store, dir, manifest, globals, keys, GLOBALS_LIMIT)
        .await?
        .ok_or_else(|| {
            AgentError::Corrupt(format!(
                "the globals of backup {} are larger than {} MiB: no roles script is",
                dir.backup_id,
                GLOBALS_LIMIT >> 20
            ))
        })?;
    let script = String::from_utf8_lossy(&script);
    // Checked whole before the first statement runs.
    let statements = super::super::globals::statements(&script)?;
    // Roles that exist already make CREATE ROLE fail; the ALTER ROLE after it still
    // applies, so errors do not stop the script.
    for statement in &statements {
        if let Err(err) = client.batch_execute(statement).await {
            let words = err
                .as_db_error()
                .map_or_else(|| err.to_string(), |e| e.message().to_string());
            tracing::warn!("globals: {words}");
        }
    }
    Ok(())
}
