//! `verify --wal`: every object of the WAL archive read back, each checked against the
//! SHA-256 in its name and the cluster it must belong to, and every stored timeline
//! followable through its history file.

use std::path::PathBuf;

use crate::{
    agent::{AgentError, error_chain, repository_args::RepositoryArgs},
    repository::{Store, WalArchive, WalFile, WalIndex},
};

/// Reads back every WAL object; each download checks the content against its name.
pub(super) async fn verify_wal(
    store: &Store,
    repository: &RepositoryArgs,
    scratch: Option<&std::path::Path>,
) -> Result<String, AgentError> {
    let server = &repository.server;
    let archive = WalArchive::new(store, server).with_keys(repository.keys()?);
    let identity = archive
        .identity()
        .await?
        .ok_or_else(|| AgentError::Invalid(format!("server {server} has no WAL archive")))?;
    let objects = archive.objects(identity.wal_segment_size).await?;
    let dir = scratch
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("pgbackup-verify-wal-")
        .tempdir_in(&dir)
        .map_err(|source| AgentError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    let check = scratch.path().join("wal");
    let mut wrong = Vec::new();
    for object in &objects {
        let found = match archive.download(object, &check).await {
            Ok(_) => archive.check_owner(&check, &object.file, &identity).await,
            Err(err) => Err(err),
        };
        match found {
            Ok(None) => {}
            Ok(Some(reason)) => wrong.push(format!(
                "{} is not WAL of cluster {} as its name says: {reason}",
                object.key, identity.system_identifier
            )),
            Err(err) => wrong.push(format!("{}: {}", object.key, error_chain(&err))),
        }
    }
    let index = WalIndex::new(&objects, identity.wal_segment_size);
    for stray in index.unplaced_timelines() {
        wrong.push(format!(
            "WAL of timeline {stray} is stored but its history file ({}) is not: recovery cannot follow it",
            WalFile::history(stray).name(identity.wal_segment_size)
        ));
    }
    if !wrong.is_empty() {
        return Err(AgentError::Corrupt(format!(
            "{} of {} files: {}",
            wrong.len(),
            objects.len(),
            wrong.join("; ")
        )));
    }
    Ok(format!(
        "WAL archive: {} files verified (cluster {})\n",
        objects.len(),
        identity.system_identifier
    ))
}
