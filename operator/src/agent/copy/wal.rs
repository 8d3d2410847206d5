//! Copying the archived WAL the copy lacks, each file read back from the copy and checked
//! against the hash in its name, and the source's coverage after it.

use std::collections::{BTreeMap, BTreeSet};

use super::{CopyArgs, Tally, backups::copy_object};
use crate::{
    agent::{AgentError, prune},
    repository::{
        ArchiveIdentity, BackupKind, Catalog, ObjectStore, Store, WalArchive, WalFileKind,
        WalObject,
    },
};

/// Copies the archive of `identity`'s cluster (claiming the copy's for it first), from the
/// oldest segment a backup the copy keeps needs when there are keep rules, then the
/// source's coverage as it was read before the listing.
pub(super) async fn copy_archive(
    args: &CopyArgs,
    (from_archive, to_archive): (&WalArchive<'_, Store>, &WalArchive<'_, Store>),
    (source, destination): (&Store, &Store),
    identity: &ArchiveIdentity,
    (catalog, present): (&Catalog, &Catalog),
    kept: Option<&BTreeSet<String>>,
    tally: &mut Tally,
) -> Result<(), AgentError> {
    // Read first: it may speak only of WAL stored before the listing copied below.
    let coverage = from_archive.coverage().await?;
    if !args.dry_run {
        to_archive.claim(identity).await?;
    }
    // With keep rules, the WAL older than the oldest base the copy keeps is of no use
    // there (its prune would drop it again).
    let from_segment = kept.and_then(|kept| {
        let bases = catalog
            .completed()
            .chain(present.completed())
            .filter(|(b, _)| b.dir.kind != BackupKind::Logical && kept.contains(&b.dir.backup_id))
            .map(|(_, m)| m);
        prune::oldest_needed_segment(bases, identity.wal_segment_size).map(|(segno, _)| segno)
    });
    copy_wal(
        (from_archive, to_archive),
        (source, destination),
        WalRange {
            segment_size: identity.wal_segment_size,
            from_segment,
        },
        args.dry_run,
        tally,
    )
    .await?;
    if !args.dry_run
        && let Some(coverage) = coverage
    {
        // Every WAL file the source held when the run began is now in the copy.
        to_archive.set_coverage(&coverage).await?;
    }
    Ok(())
}

/// Which archived WAL a run copies: segments of `segment_size` bytes, from `from_segment`
/// on when set (history files always).
#[derive(Clone, Copy, Debug)]
pub(super) struct WalRange {
    segment_size: u64,
    from_segment: Option<u64>,
}

/// Copies the archived WAL the copy lacks (by key: the key carries the content's hash),
/// each read back from the copy and checked against that hash. The archiver's record of
/// its replication slots stays behind: it belongs to the source's archiver.
async fn copy_wal(
    (from, to): (&WalArchive<'_, Store>, &WalArchive<'_, Store>),
    (source, destination): (&Store, &Store),
    range: WalRange,
    dry_run: bool,
    tally: &mut Tally,
) -> Result<(), AgentError> {
    let there: BTreeMap<String, u64> = to
        .objects(range.segment_size)
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let scratch = tempfile::Builder::new()
        .prefix("pgbackup-copy-")
        .tempdir()
        .map_err(|source| AgentError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let check = scratch.path().join("wal");
    let mut missing = BTreeSet::new();
    for object in from.objects(range.segment_size).await? {
        if range.from_segment.is_some_and(|first| {
            object.file.kind != WalFileKind::History && object.file.segno < first
        }) {
            continue;
        }
        if there.get(&object.key) == Some(&object.size) {
            tally.wal_present += 1;
            continue;
        }
        if dry_run {
            missing.insert(object.name.clone());
            tally.wal_files += 1;
            continue;
        }
        let (size, _) = copy_object(source, destination, &object.key).await?;
        let copied = WalObject {
            size,
            ..object.clone()
        };
        if let Err(err) = to.download(&copied, &check).await {
            destination.delete(&object.key).await?;
            return Err(AgentError::Corrupt(format!(
                "WAL file {} does not read back from {} as stored in {}: {}; not copied",
                object.key,
                destination.describe(),
                source.describe(),
                crate::agent::error_chain(&err)
            )));
        }
        let _ = tokio::fs::remove_file(&check).await;
        tally.wal_files += 1;
        tally.bytes += size;
    }
    if !missing.is_empty() {
        tracing::info!(files = missing.len(), "WAL files that would be copied");
    }
    Ok(())
}
