//! The backup repository: S3-compatible object storage or a filesystem (a mounted volume)
//! behind one trait, the repository layout and manifests of DESIGN §3, the streaming data
//! path (compress → sha256 → store) and the catalog of backups.

mod catalog;
mod encryption;
mod error;
mod fs;
mod layout;
mod location;
mod manifest;
mod pipeline;
mod retention;
mod s3;
mod timeline;
mod wal;
mod wal_archive;
mod wal_owner;

use std::{future::Future, pin::Pin};

use tokio::io::AsyncRead;

pub use catalog::{BackupEntry, Catalog, CatalogError, read_manifest};
pub use encryption::{DecryptError, ENCRYPTED_SUFFIX, KeyError, Keys};
pub use error::StoreError;
pub use fs::FsStore;
pub use layout::{BackupDir, database_object_name, new_backup_id};
pub use location::{Location, LocationError};
pub use manifest::{
    BackupKind, ChunkEntry, FORMAT_VERSION, MANIFEST_FILE, Manifest, ObjectEntry, ObjectRole,
    SnapshotDetails, VolumeSnapshotEntry,
};
pub(crate) use pipeline::Hashing;
pub use pipeline::{
    NewObject, Progress, StoredFormat, StreamOptions, hex as hex_digest, open_object, store_object,
    store_precompressed,
};
pub use retention::{
    RetentionPolicy, RetentionPolicyError, keep_chains, orphaned_by, parse_duration, select_kept,
};
pub use s3::{MAX_PARTS, MIN_PART_SIZE, S3Options, S3Store, StaticCredentials};
pub use timeline::{
    ChainLink, HistoryEntry, PathStep, StoredSegment, TimelinePath, WalIndex, parse_history,
};
pub use wal::{
    ArchiveCoverage, ArchiveIdentity, IDENTITY_FILE, WAL_DIR, WalFile, WalFileKind, WalObject,
    format_lsn, segno_of, wal_prefix,
};
pub use wal_archive::{Pushed, WalArchive, WalError};
pub use wal_owner::{history_mismatch, segment_mismatch};

/// A stream of an object's bytes.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// One object in a store, with its key relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root, `/`-separated.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was stored, when the store says.
    pub modified: Option<jiff::Timestamp>,
}

/// Where objects are kept. Keys are relative to the repository root and `/`-separated; an
/// object is visible only once completely written.
pub trait ObjectStore: Send + Sync {
    /// Stores everything `body` yields under `key`, streaming with bounded memory; returns the
    /// bytes stored. On failure nothing is left under `key` (and no partial upload).
    fn put(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Stores a small object from memory.
    fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let mut body = std::io::Cursor::new(bytes);
            self.put(key, &mut body).await.map(|_| ())
        }
    }

    /// Opens an object for streaming reads. `StoreError::NotFound` when it does not exist.
    fn get(&self, key: &str) -> impl Future<Output = Result<ObjectReader, StoreError>> + Send;

    /// Every object whose key starts with `prefix`, in key order.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;

    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where the store is, for messages: `s3://bucket/prefix` or `file:///path`.
    fn describe(&self) -> String;
}

/// A store of either kind, chosen at run time from a repository URL.
#[derive(Debug)]
pub enum Store {
    /// A directory (a mounted volume or a local path).
    Fs(FsStore),
    /// An S3 bucket.
    S3(S3Store),
}

impl Store {
    /// Aborts what writes given up half-way left unfinished (S3 multipart uploads; a
    /// file store's temporary files go when their write is dropped).
    pub async fn abort_unfinished(&self) {
        if let Store::S3(s) = self {
            s.abort_unfinished().await;
        }
    }

    /// Opens the store at a location.
    pub async fn open(location: &Location, s3: &S3Options) -> Result<Self, StoreError> {
        Ok(match location {
            Location::File(path) => Store::Fs(FsStore::new(path.clone())),
            Location::S3 { bucket, prefix } => {
                Store::S3(S3Store::connect(bucket, prefix, s3).await?)
            }
        })
    }
}

impl ObjectStore for Store {
    async fn put(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<u64, StoreError> {
        match self {
            Store::Fs(s) => s.put(key, body).await,
            Store::S3(s) => s.put(key, body).await,
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        match self {
            Store::Fs(s) => s.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            Store::Fs(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Fs(s) => s.delete(key).await,
            Store::S3(s) => s.delete(key).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::Fs(s) => s.describe(),
            Store::S3(s) => s.describe(),
        }
    }
}
