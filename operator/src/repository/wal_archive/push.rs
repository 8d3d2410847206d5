//! Storing a WAL file: checked to be the cluster's, compared with the stored copies of its
//! name (never replacing a different one), stored, and the partial copies it supersedes
//! removed.

use std::path::Path;

use jiff::Timestamp;

use super::{
    Pushed, WalArchive, WalError, io_error,
    prepare::{IN_MEMORY, Prepared, hash_file, prepare_in_memory, stored_form},
};
use crate::repository::{
    ObjectStore, StreamOptions,
    wal::{ArchiveIdentity, WalFile, WalFileKind, WalObject, wal_key},
};

impl<S: ObjectStore> WalArchive<'_, S> {
    /// Stores the WAL file at `path` as `file` of `cluster`, which must not change
    /// meanwhile: it is checked to be `cluster`'s WAL at the place its name says
    /// ([`Self::check_owner`]), read once into memory (up to [`IN_MEMORY`]; larger files
    /// are read twice, hash then upload), hashed and compressed at the same time on two
    /// threads while the stored copies are listed. The archiver copies the segment being
    /// written aside first. `covers` is the time up to which every commit is in this file
    /// or before it, when known. Storing a complete segment removes the partial copies of
    /// it.
    pub async fn push(
        &self,
        path: &Path,
        file: &WalFile,
        cluster: &ArchiveIdentity,
        covers: Option<Timestamp>,
        options: &StreamOptions,
    ) -> Result<Pushed, WalError> {
        let segment_size = cluster.wal_segment_size;
        if let Some(reason) = self.check_owner(path, file, cluster).await? {
            return Err(WalError::Foreign {
                path: path.display().to_string(),
                cluster: cluster.system_identifier.clone(),
                server: self.server.clone(),
                reason,
            });
        }
        let (content, copies) = self
            .prepare_and_list(path, file, segment_size, options)
            .await?;
        let same_name = |o: &&WalObject| o.file == *file;
        // The same content is stored already, unless this partial copy covers a later time.
        let already = copies.iter().filter(same_name).find(|o| {
            o.sha256 == content.sha256 && (file.kind != WalFileKind::Partial || o.covers >= covers)
        });
        let pushed = if let Some(same) = already {
            Pushed::AlreadyArchived {
                key: same.key.clone(),
            }
        } else {
            let name = file.name(segment_size);
            self.refuse_conflict(file, &name, &copies)?;
            let key = wal_key(&self.server, file, &name, &content.sha256, options, covers);
            self.store_new(path, key, content, options).await?
        };
        self.remove_superseded(file, &copies, &pushed).await?;
        Ok(pushed)
    }

    /// The file's hash (and its stored form, when it is small enough to be read into
    /// memory), and the stored copies of its name, listed meanwhile.
    async fn prepare_and_list(
        &self,
        path: &Path,
        file: &WalFile,
        segment_size: u64,
        options: &StreamOptions,
    ) -> Result<(Prepared, Vec<WalObject>), WalError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| io_error(path, e))?
            .len();
        if size <= IN_MEMORY {
            let (content, copies) = tokio::join!(
                prepare_in_memory(path, options),
                self.copies(file, segment_size)
            );
            Ok((content?, copies?))
        } else {
            let (sha256, size) = hash_file(path).await?;
            let content = Prepared {
                sha256,
                size,
                body: None,
            };
            Ok((content, self.copies(file, segment_size).await?))
        }
    }

    /// Refuses to store a file when a different one of the same name is stored (partial
    /// copies excepted: a later one is stored beside the earlier).
    fn refuse_conflict(
        &self,
        file: &WalFile,
        name: &str,
        copies: &[WalObject],
    ) -> Result<(), WalError> {
        if file.kind != WalFileKind::Partial
            && let Some(other) = copies.iter().find(|o| o.file == *file)
        {
            return Err(WalError::Conflict {
                name: name.to_string(),
                key: other.key.clone(),
                server: self.server.clone(),
            });
        }
        Ok(())
    }

    /// Stores content that is not stored yet under `key`: from memory when it was read
    /// into memory, else streamed from the file again.
    async fn store_new(
        &self,
        path: &Path,
        key: String,
        content: Prepared,
        options: &StreamOptions,
    ) -> Result<Pushed, WalError> {
        let stored = match content.body {
            Some(body) => {
                let stored = body.len() as u64;
                self.store.put_bytes(&key, body).await?;
                stored
            }
            None => {
                let opened = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| io_error(path, e))?;
                let mut body =
                    stored_form(Box::pin(opened), options).map_err(|e| io_error(path, e))?;
                self.store.put(&key, &mut body).await?
            }
        };
        Ok(Pushed::Stored {
            key,
            size: content.size,
            stored,
        })
    }

    /// Deletes the partial copies of the segment that the copy just kept supersedes.
    async fn remove_superseded(
        &self,
        file: &WalFile,
        copies: &[WalObject],
        pushed: &Pushed,
    ) -> Result<(), WalError> {
        let kept = match pushed {
            Pushed::Stored { key, .. } | Pushed::AlreadyArchived { key } => key,
        };
        let superseded = copies.iter().filter(|o| {
            o.file.kind == WalFileKind::Partial
                && o.file.timeline == file.timeline
                && o.file.segno == file.segno
                && file.is_wal()
                && o.key != *kept
        });
        for old in superseded {
            self.store.delete(&old.key).await?;
        }
        Ok(())
    }
}
