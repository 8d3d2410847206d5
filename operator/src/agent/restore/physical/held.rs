//! What the repository holds for a point-in-time restore: the catalog, the WAL archive's
//! identity, index and coverage, and which backups have their whole chain.

use std::collections::BTreeSet;

use super::super::RestoreArgs;
use crate::{
    agent::AgentError,
    repository::{
        ArchiveCoverage, ArchiveIdentity, BackupKind, Catalog, Keys, Manifest, Store, WalArchive,
        WalIndex,
    },
};

/// WAL segment size assumed when there is no archive to say (PostgreSQL's default).
const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The repository as a restore reads it, once, before planning.
pub(super) struct Held<'a> {
    pub catalog: Catalog,
    pub keys: Option<Keys>,
    pub archive: WalArchive<'a, Store>,
    /// Whose WAL archive it is; `None` when there is none.
    pub identity: Option<ArchiveIdentity>,
    pub segment_size: u64,
    pub index: Option<WalIndex>,
    pub coverage: Option<ArchiveCoverage>,
}

impl<'a> Held<'a> {
    pub(super) async fn read(args: &RestoreArgs, store: &'a Store) -> Result<Self, AgentError> {
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
        Ok(Self {
            catalog,
            keys,
            archive,
            identity,
            segment_size,
            index,
            coverage,
        })
    }

    /// The backups a restore can start from: those whose chain is whole (an incremental
    /// backup whose base is gone is left out, with a warning).
    pub(super) fn restorable(&self) -> Vec<&Manifest> {
        let manifests: Vec<&Manifest> = self
            .catalog
            .backups
            .iter()
            .filter_map(|b| b.manifest.as_ref())
            .collect();
        let (whole, broken) = complete_chains(manifests);
        for backup in broken {
            tracing::warn!(
                "incremental backup {} is left out: a backup it builds on ({}) is not in the repository",
                backup.backup_id,
                backup.chain.join(", ")
            );
        }
        whole
    }
}

/// The backups whose chain is whole in the repository, and the incremental ones whose chain
/// is not (they cannot be restored).
fn complete_chains(manifests: Vec<&Manifest>) -> (Vec<&Manifest>, Vec<&Manifest>) {
    let physical: BTreeSet<&str> = manifests
        .iter()
        .filter(|m| m.kind == BackupKind::Physical)
        .map(|m| m.backup_id.as_str())
        .collect();
    manifests
        .into_iter()
        .partition(|m| m.chain.iter().all(|id| physical.contains(id.as_str())))
}
