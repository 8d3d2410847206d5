//! Storing a backup: the method's objects, then the manifest last; a tool's output as one
//! object; and removing what a failed or stopped backup stored.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::agent::{AgentError, process::Tool};
use crate::{
    api::BackupMethod,
    repository::{
        BackupDir, Catalog, FORMAT_VERSION, MANIFEST_FILE, Manifest, NewObject, ObjectEntry,
        ObjectStore, Store, new_backup_id, store_object,
    },
};

use super::{BackupArgs, BackupContext, configuration, logical, physical};

/// Stores the backup, or — when it fails or a signal stops it — removes what it stored.
pub(super) async fn stored_or_removed(
    context: &BackupContext<'_>,
    begin_time: Timestamp,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(Manifest, String, Option<String>), AgentError> {
    let dir = &context.dir;
    // Until the summary is out, a backup stopped by a signal (its object deleted, its pod
    // evicted) is not kept: what it stored goes, and a retried Job makes a new one. So a
    // backup is either reported or gone, never left behind unknown to its object.
    let written = tokio::select! {
        written = store_backup(context, begin_time) => written,
        _ = stop.changed() => Err(AgentError::Interrupted(format!(
            "stopped by a signal before backup {} was complete; what it stored is removed",
            dir.backup_id
        ))),
    };
    // Stopped just as it finished: not reported, so not kept either.
    let written = match written {
        Ok(_) if *stop.borrow() => Err(AgentError::Interrupted(format!(
            "stopped by a signal before backup {} was reported; what it stored is removed",
            dir.backup_id
        ))),
        other => other,
    };
    if written.is_err() {
        remove_partial(context.store, dir).await;
    }
    written
}

/// Runs the method and stores the manifest; the manifest, its SHA-256, and why a full
/// backup was taken where an incremental one was asked for.
async fn store_backup(
    context: &BackupContext<'_>,
    begin_time: Timestamp,
) -> Result<(Manifest, String, Option<String>), AgentError> {
    let (args, dir, server) = (context.args, &context.dir, context.server);
    let (algorithm, level) = (context.options.compression, context.options.level);
    let keys = &context.options.encryption;
    let result = match args.method {
        BackupMethod::Logical => logical::run(context).await,
        BackupMethod::Physical => physical::run(context).await,
    };
    let mut result = result?;
    result.objects.extend(configuration::store(context).await?);

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: dir.kind,
        backup_id: dir.backup_id.clone(),
        server: dir.server.clone(),
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        system_identifier: server.system_identifier.clone(),
        timeline: result.timeline,
        begin_lsn: result.begin_lsn,
        end_lsn: result.end_lsn,
        begin_wal: result.begin_wal,
        end_wal: result.end_wal,
        begin_time,
        end_time: Timestamp::now(),
        compression: algorithm,
        compression_level: level,
        encrypted: keys.is_some(),
        tool_version: format!("pgbackup {}", env!("CARGO_PKG_VERSION")),
        databases: result.databases,
        chain: result.chain,
        objects: result.objects,
        snapshot: None,
        row_counts: result.row_counts,
        mac: None,
    };
    let mut manifest = manifest;
    if let Some(keys) = keys {
        manifest.seal(keys);
    }
    let bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| AgentError::Invalid(format!("manifest: {e}")))?;
    let manifest_sha256 = crate::repository::hex_digest(&Sha256::digest(&bytes));
    context
        .store
        .put_bytes(&dir.key(MANIFEST_FILE), bytes)
        .await?;
    Ok((manifest, manifest_sha256, result.full_because))
}

/// Runs a PostgreSQL tool and streams its stdout into the repository as one object. The
/// tool's exit status decides: a tool that died half-way leaves a short stdout that would
/// otherwise have been stored "successfully". Returns the object and the tool's stderr.
/// `wrap` may put a reader around stdout that looks at the stream on its way.
pub(crate) async fn store_tool_output<R>(
    ctx: &BackupContext<'_>,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    object: NewObject,
    wrap: impl FnOnce(tokio::process::ChildStdout) -> R,
) -> Result<(ObjectEntry, Vec<String>), AgentError>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let mut tool = Tool::spawn(&ctx.pg_bin.program(program), args, env, false)?;
    let stdout = tool
        .take_stdout()
        .map(wrap)
        .ok_or_else(|| AgentError::Invalid(format!("{program} has no stdout")))?;
    // Storing ends (and drops stdout, so a still-running tool stops) before we wait.
    let stored = store_object(
        ctx.store,
        &ctx.dir,
        object,
        stdout,
        &ctx.options,
        &ctx.progress,
    )
    .await;
    let finished = tool.finish().await;
    let object = stored?;
    Ok((object, finished?))
}

/// A new directory in `--scratch-dir` (default: the temporary directory), removed when
/// dropped.
pub(crate) fn scratch_dir(
    args: &BackupArgs,
    prefix: &str,
) -> Result<tempfile::TempDir, AgentError> {
    let parent = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .map_err(|source| AgentError::Io {
            path: parent.display().to_string(),
            source,
        })
}

/// The id for a backup starting now; a later second when the repository already has one of
/// that second (ids stay sortable and unique).
pub(super) fn unique_id(catalog: &Catalog, at: Timestamp) -> String {
    let taken = |id: &str| catalog.backups.iter().any(|b| b.dir.backup_id == id);
    let mut time = at;
    loop {
        let id = new_backup_id(time);
        if !taken(&id) {
            return id;
        }
        time = time
            .saturating_add(jiff::SignedDuration::from_secs(1))
            .unwrap_or(time);
    }
}

/// Removes the objects of a failed backup (best effort: an incomplete backup has no
/// manifest, so it is never taken for a complete one anyway).
async fn remove_partial(store: &Store, dir: &BackupDir) {
    store.abort_unfinished().await;
    match store.list(&dir.prefix()).await {
        Ok(objects) => {
            for object in objects {
                if let Err(err) = store.delete(&object.key).await {
                    tracing::warn!(key = %object.key, error = %err, "could not remove an object of the failed backup");
                }
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not list the objects of the failed backup to remove them")
        }
    }
}
