//! Which backups a run copies, and copying them: every chunk hashed on the way and checked
//! against the manifest, the manifest last.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::{CopyArgs, Tally};
use crate::{
    agent::AgentError,
    repository::{BackupEntry, Catalog, MANIFEST_FILE, Manifest, ObjectStore, Store, hex_digest},
};

/// The backups `--backup` names (all when none is named); an error naming those that are
/// not complete backups of the source.
pub(super) fn selected_backups<'a>(
    args: &CopyArgs,
    catalog: &'a Catalog,
    source: &Store,
) -> Result<BTreeSet<&'a str>, AgentError> {
    let server = &args.repository.server;
    let selected: BTreeSet<&str> = args
        .backups
        .iter()
        .filter_map(|id| catalog.find(id).map(|(b, _)| b.dir.backup_id.as_str()))
        .collect();
    let unknown: Vec<&String> = args
        .backups
        .iter()
        .filter(|id| catalog.find(id).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(AgentError::Invalid(format!(
            "no complete backup {} of server {server} in {}",
            unknown
                .iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            source.describe()
        )));
    }
    Ok(selected)
}

/// Copies the selected backups the copy lacks and its keep rules keep, oldest first;
/// a line for each (or for what a dry run would copy).
pub(super) async fn copy_backups(
    args: &CopyArgs,
    (source, destination): (&Store, &Store),
    (catalog, present): (&Catalog, &Catalog),
    kept: Option<&BTreeSet<String>>,
    selected: &BTreeSet<&str>,
    tally: &mut Tally,
) -> Result<Vec<String>, AgentError> {
    let server = &args.repository.server;
    let mut lines = Vec::new();
    // Oldest first: an incremental backup's parents are in the copy before it is.
    for (entry, manifest) in catalog.completed() {
        let id = &entry.dir.backup_id;
        if !args.backups.is_empty() && !selected.contains(id.as_str()) {
            continue;
        }
        if kept.is_some_and(|kept| !kept.contains(id)) {
            tally.backups_outside += 1;
            continue;
        }
        match present.completed().find(|(b, _)| b.dir == entry.dir) {
            Some((_, there)) if there == manifest => {
                tally.backups_present += 1;
                continue;
            }
            Some(_) => {
                return Err(AgentError::OtherCluster(format!(
                    "backup {id} in {} is not the one of that name in {}: refusing to overwrite it (was the copy written by another cluster under server name {server}?)",
                    destination.describe(),
                    source.describe()
                )));
            }
            // Not there, or only part of it (an interrupted copy): copied whole.
            None => {}
        }
        if args.dry_run {
            lines.push(format!(
                "would copy backup {id} ({} stored)",
                crate::agent::progress::human_bytes(entry.stored_bytes)
            ));
            continue;
        }
        let bytes = copy_backup(source, destination, entry, manifest).await?;
        tracing::info!(backup_id = %id, bytes, "backup copied");
        lines.push(format!(
            "copied backup {id} ({})",
            crate::agent::progress::human_bytes(bytes)
        ));
        tally.backups += 1;
        tally.bytes += bytes;
    }
    Ok(lines)
}

/// Copies one complete backup: every chunk its manifest names, hashed on the way and
/// checked against the manifest, then the manifest itself. On a mismatch the chunk copied
/// is removed and nothing of the backup looks complete in the copy.
async fn copy_backup(
    source: &Store,
    destination: &Store,
    entry: &BackupEntry,
    manifest: &Manifest,
) -> Result<u64, AgentError> {
    let dir = &entry.dir;
    let mut bytes = 0;
    for chunk in manifest.objects.iter().flat_map(|o| &o.chunks) {
        let key = dir.key(&chunk.file);
        let (size, sha256) = copy_object(source, destination, &key).await?;
        if size != chunk.size || sha256 != chunk.sha256 {
            destination.delete(&key).await?;
            return Err(AgentError::Corrupt(format!(
                "{key} in {} is not what backup {}'s manifest says ({} bytes, SHA-256 {}), but {size} bytes with SHA-256 {sha256}: not copied; check it with `pgbackup verify --backup {}`",
                source.describe(),
                dir.backup_id,
                chunk.size,
                chunk.sha256,
                dir.backup_id
            )));
        }
        bytes += size;
    }
    let (size, _) = copy_object(source, destination, &dir.key(MANIFEST_FILE)).await?;
    Ok(bytes + size)
}

/// Streams one object from `source` to the same key in `destination`; its size and the
/// SHA-256 of its bytes.
pub(super) async fn copy_object(
    source: &Store,
    destination: &Store,
    key: &str,
) -> Result<(u64, String), AgentError> {
    let reader = source.get(key).await?;
    let mut hashing = crate::repository::Hashing {
        inner: reader,
        hasher: Sha256::new(),
        progress: None,
    };
    let size = destination.put(key, &mut hashing).await?;
    Ok((size, hex_digest(&hashing.hasher.finalize())))
}
