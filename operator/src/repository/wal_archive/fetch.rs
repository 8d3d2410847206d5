//! Finding what the archive holds and fetching it: listing, choosing the copy recovery
//! should use, downloading with the hash checked, and reading a timeline's history.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{WalArchive, WalError, corrupt, io_error};
use crate::repository::{
    ObjectStore,
    pipeline::{Hashing, decompress, hex},
    timeline::{HistoryEntry, WalIndex, parse_history},
    wal::{WalFile, WalFileKind, WalObject, wal_name_prefix, wal_prefix},
};

impl<S: ObjectStore> WalArchive<'_, S> {
    /// Every WAL object of the archive.
    pub async fn objects(&self, segment_size: u64) -> Result<Vec<WalObject>, WalError> {
        Ok(self
            .store
            .list(&wal_prefix(&self.server))
            .await?
            .iter()
            .filter_map(|info| WalObject::from_listing(info, segment_size))
            .collect())
    }

    /// What the archive holds.
    pub async fn index(&self, segment_size: u64) -> Result<WalIndex, WalError> {
        Ok(WalIndex::new(
            &self.objects(segment_size).await?,
            segment_size,
        ))
    }

    /// The stored copies of one file name (a segment's listing includes its partials).
    pub(super) async fn copies(
        &self,
        file: &WalFile,
        segment_size: u64,
    ) -> Result<Vec<WalObject>, WalError> {
        let name = file.name(segment_size);
        Ok(self
            .store
            .list(&wal_name_prefix(&self.server, file, &name))
            .await?
            .iter()
            .filter_map(|info| WalObject::from_listing(info, segment_size))
            .collect())
    }

    /// The copy recovery should use: the complete segment, else the fullest partial copy
    /// (a partial copy holds the WAL received until it was stored).
    pub async fn find(&self, file: &WalFile, segment_size: u64) -> Result<WalObject, WalError> {
        let copies = self.copies(file, segment_size).await?;
        let complete = copies.iter().find(|o| o.file == *file);
        let partial = || {
            copies
                .iter()
                .filter(|o| {
                    file.kind == WalFileKind::Segment
                        && o.file.kind == WalFileKind::Partial
                        && o.file.timeline == file.timeline
                        && o.file.segno == file.segno
                })
                .max_by_key(|o| (o.covers, o.size, o.modified))
        };
        complete
            .or_else(partial)
            .cloned()
            .ok_or_else(|| WalError::NotFound {
                name: file.name(segment_size),
                server: self.server.clone(),
            })
    }

    /// Downloads a stored WAL object to `dest` (written aside, checked, then renamed into
    /// place, so `dest` never holds a partial or unverified file). Returns the bytes
    /// written.
    pub async fn download(&self, object: &WalObject, dest: &Path) -> Result<u64, WalError> {
        let stored = self.store.get(&object.key).await?;
        let reader = match (object.encrypted, &self.keys) {
            (false, Some(keys)) if !keys.accepts_plaintext() => {
                return Err(WalError::NotEncrypted {
                    key: object.key.clone(),
                });
            }
            (false, _) => stored,
            (true, None) => {
                return Err(WalError::KeyNeeded {
                    key: object.key.clone(),
                });
            }
            (true, Some(keys)) => {
                keys.decrypt(stored)
                    .await
                    .map_err(|source| WalError::Decrypt {
                        key: object.key.clone(),
                        source,
                    })?
            }
        };
        let mut content = Hashing {
            inner: decompress(reader, object.compression),
            hasher: Sha256::new(),
            progress: None,
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".pgbackup-fetch-")
            .tempfile_in(dir)
            .map_err(|e| io_error(dir, e))?;
        let mut out = tokio::fs::File::from_std(temp.reopen().map_err(|e| io_error(dir, e))?);
        let size = tokio::io::copy(&mut content, &mut out)
            .await
            .map_err(|e| corrupt(&object.key, e.to_string()))?;
        let actual = hex(&content.hasher.finalize());
        if actual != object.sha256 {
            return Err(corrupt(
                &object.key,
                format!(
                    "its content hashes to {actual}, not to the {} in its name",
                    object.sha256
                ),
            ));
        }
        out.flush().await.map_err(|e| io_error(dir, e))?;
        out.sync_all().await.map_err(|e| io_error(dir, e))?;
        temp.persist(dest).map_err(|e| io_error(dest, e.error))?;
        Ok(size)
    }

    /// The history of `timeline` from the archive; empty for timeline 1, `None` when its
    /// history file is not stored.
    pub async fn history(
        &self,
        timeline: u32,
        segment_size: u64,
    ) -> Result<Option<Vec<HistoryEntry>>, WalError> {
        if timeline <= 1 {
            return Ok(Some(Vec::new()));
        }
        let object = match self.find(&WalFile::history(timeline), segment_size).await {
            Ok(object) => object,
            Err(WalError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let dir = tempfile::tempdir().map_err(|e| io_error(Path::new("."), e))?;
        let path = dir.path().join(&object.name);
        self.download(&object, &path).await?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        parse_history(&text)
            .map(Some)
            .map_err(|reason| corrupt(&object.key, reason))
    }
}
