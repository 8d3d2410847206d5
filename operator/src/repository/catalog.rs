//! The catalog: which backups a repository holds for a server, read from their manifests.
//! A backup directory without a manifest is an incomplete (failed or running) backup.

use std::collections::BTreeMap;

use tokio::io::AsyncReadExt;

use super::{
    BackupDir, BackupKind, FORMAT_VERSION, MANIFEST_FILE, Manifest, ObjectStore, StoreError,
};

/// One backup in the repository.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    /// Where it is.
    pub dir: BackupDir,
    /// Its manifest; `None` for an incomplete backup.
    pub manifest: Option<Manifest>,
    /// Bytes stored under its directory.
    pub stored_bytes: u64,
}

/// Reading the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest cannot be read.
    #[error("manifest {key} is unreadable: {reason}")]
    BadManifest {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The backups of one server in a repository.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Every backup, oldest first.
    pub backups: Vec<BackupEntry>,
}

impl Catalog {
    /// Reads the catalog of `server`.
    pub async fn load<S: ObjectStore>(store: &S, server: &str) -> Result<Self, CatalogError> {
        // Only the backup directories: the WAL archive beside them can hold many thousands
        // of segments.
        let mut objects = Vec::new();
        for kind in [
            BackupKind::Physical,
            BackupKind::Logical,
            BackupKind::Snapshot,
        ] {
            objects.extend(
                store
                    .list(&format!("{server}/{}/", kind.directory()))
                    .await?,
            );
        }
        let mut dirs: BTreeMap<(String, &'static str), (BackupDir, u64, bool)> = BTreeMap::new();
        for object in &objects {
            let mut parts = object.key.splitn(4, '/');
            let (Some(_), Some(kind_dir), Some(id), Some(file)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let kind = match kind_dir {
                "base" => BackupKind::Physical,
                "logical" => BackupKind::Logical,
                "snapshots" => BackupKind::Snapshot,
                _ => continue,
            };
            let entry = dirs
                .entry((id.to_string(), kind.directory()))
                .or_insert_with(|| {
                    (
                        BackupDir {
                            server: server.to_string(),
                            kind,
                            backup_id: id.to_string(),
                        },
                        0,
                        false,
                    )
                });
            entry.1 += object.size;
            entry.2 |= file == MANIFEST_FILE;
        }
        let mut backups = Vec::with_capacity(dirs.len());
        for (_, (dir, stored_bytes, has_manifest)) in dirs {
            let manifest = if has_manifest {
                Some(read_manifest(store, &dir).await?)
            } else {
                None
            };
            backups.push(BackupEntry {
                dir,
                manifest,
                stored_bytes,
            });
        }
        Ok(Self { backups })
    }

    /// Completed backups, oldest first.
    pub fn completed(&self) -> impl Iterator<Item = (&BackupEntry, &Manifest)> {
        self.backups
            .iter()
            .filter_map(|b| b.manifest.as_ref().map(|m| (b, m)))
    }

    /// A completed backup by id, or the newest one for `latest`.
    pub fn find(&self, id: &str) -> Option<(&BackupEntry, &Manifest)> {
        if id == "latest" {
            self.completed().last()
        } else {
            self.completed().find(|(b, _)| b.dir.backup_id == id)
        }
    }
}

/// Reads and parses a backup's manifest.
pub async fn read_manifest<S: ObjectStore>(
    store: &S,
    dir: &BackupDir,
) -> Result<Manifest, CatalogError> {
    let key = dir.key(MANIFEST_FILE);
    let mut reader = store.get(&key).await?;
    let mut text = Vec::new();
    reader
        .read_to_end(&mut text)
        .await
        .map_err(|e| CatalogError::BadManifest {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| CatalogError::BadManifest {
            key: key.clone(),
            reason: e.to_string(),
        })?;
    if let Err(reason) = manifest.check(&dir.backup_id) {
        return Err(CatalogError::BadManifest { key, reason });
    }
    if manifest.format_version > FORMAT_VERSION {
        return Err(CatalogError::BadManifest {
            key,
            reason: format!(
                "format version {} is newer than this pgbackup understands ({FORMAT_VERSION})",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}
