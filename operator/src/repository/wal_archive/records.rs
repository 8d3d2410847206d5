//! The archive's small JSON records beside the WAL: which cluster it belongs to, up to
//! when it is complete, and the replication slots the archiver created.

use tokio::io::AsyncReadExt;

use super::{WalArchive, WalError, corrupt};
use crate::repository::{
    ObjectStore, StoreError,
    wal::{ArchiveCoverage, ArchiveIdentity, coverage_key, identity_key, slots_key},
};

impl<S: ObjectStore> WalArchive<'_, S> {
    /// Which cluster the archive belongs to; `None` before anything was archived.
    pub async fn identity(&self) -> Result<Option<ArchiveIdentity>, WalError> {
        self.read_json(&identity_key(&self.server)).await
    }

    /// Up to when the archive is complete, as the archiver last wrote it.
    pub async fn coverage(&self) -> Result<Option<ArchiveCoverage>, WalError> {
        self.read_json(&coverage_key(&self.server)).await
    }

    /// Records up to when the archive is complete.
    pub async fn set_coverage(&self, coverage: &ArchiveCoverage) -> Result<(), WalError> {
        let key = coverage_key(&self.server);
        let text = serde_json::to_vec_pretty(coverage).map_err(|e| corrupt(&key, e.to_string()))?;
        Ok(self.store.put_bytes(&key, text).await?)
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, WalError> {
        let mut reader = match self.store.get(key).await {
            Ok(reader) => reader,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let mut text = Vec::new();
        reader
            .read_to_end(&mut text)
            .await
            .map_err(|e| corrupt(key, e.to_string()))?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| corrupt(key, e.to_string()))
    }

    /// The replication slots the archiver created on the archive's cluster (it manages
    /// only those: an existing slot of another name is another application's).
    pub async fn created_slots(&self) -> Result<Vec<String>, WalError> {
        Ok(self.created_slots_record().await?.unwrap_or_default())
    }

    /// [`Self::created_slots`], `None` when the archive has no record at all (archived by
    /// an archiver from before the record).
    pub async fn created_slots_record(&self) -> Result<Option<Vec<String>>, WalError> {
        self.read_json(&slots_key(&self.server)).await
    }

    /// Records that the archiver created slot `slot` (`true`) or dropped it (`false`).
    pub async fn record_slot(&self, slot: &str, created: bool) -> Result<(), WalError> {
        let mut slots = self.created_slots().await?;
        slots.retain(|s| s != slot);
        if created {
            slots.push(slot.to_string());
        }
        let key = slots_key(&self.server);
        let text = serde_json::to_vec_pretty(&slots).map_err(|e| corrupt(&key, e.to_string()))?;
        Ok(self.store.put_bytes(&key, text).await?)
    }

    /// Makes sure the archive is `cluster`'s: claims an empty archive, refuses another
    /// cluster's.
    pub async fn claim(&self, cluster: &ArchiveIdentity) -> Result<(), WalError> {
        match self.identity().await? {
            Some(archive) if archive == *cluster => Ok(()),
            Some(archive) => Err(WalError::OtherCluster {
                server: self.server.clone(),
                archive: archive.system_identifier,
                archive_segment_size: archive.wal_segment_size,
                archive_major: archive.server_major,
                found: cluster.system_identifier.clone(),
                found_segment_size: cluster.wal_segment_size,
                found_major: cluster.server_major,
            }),
            None => {
                let text = serde_json::to_vec_pretty(cluster)
                    .map_err(|e| corrupt(&identity_key(&self.server), e.to_string()))?;
                self.store
                    .put_bytes(&identity_key(&self.server), text)
                    .await?;
                Ok(())
            }
        }
    }
}
