//! The WAL archive of one server: storing and fetching WAL files, each verified against the
//! SHA-256 in its key, never replacing a different file of the same name, and only ever
//! from the cluster the archive belongs to. The archive's records (identity, coverage,
//! slots) in `records`, storing in `push`, the ownership check in `owner`, listing and
//! fetching in `fetch`, hashing and compressing a file for storing in `prepare`.

mod fetch;
mod owner;
mod prepare;
mod push;
mod records;

use std::{io, path::Path};

use super::{DecryptError, Keys, ObjectStore, StoreError};

/// A WAL archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not in the archive.
    #[error("{name} is not in the WAL archive of server {server}")]
    NotFound {
        /// The WAL file.
        name: String,
        /// The server.
        server: String,
    },
    /// A different file of the same name is archived already.
    #[error(
        "a different {name} is already archived ({key}); WAL objects are never replaced. Is another cluster archiving as server {server}?"
    )]
    Conflict {
        /// The WAL file.
        name: String,
        /// The object already there.
        key: String,
        /// The server.
        server: String,
    },
    /// The WAL comes from a different cluster than the archive's.
    #[error(
        "the WAL archive of server {server} belongs to cluster {archive} (segment size {archive_segment_size}, PostgreSQL {archive_major}), not to cluster {found} (segment size {found_segment_size}, PostgreSQL {found_major}); use another --server for this cluster"
    )]
    OtherCluster {
        /// The server.
        server: String,
        /// The archive's system identifier.
        archive: String,
        /// Its segment size.
        archive_segment_size: u64,
        /// Its major version.
        archive_major: u32,
        /// The cluster's system identifier.
        found: String,
        /// Its segment size.
        found_segment_size: u64,
        /// Its major version.
        found_major: u32,
    },
    /// The file is not WAL of the archive's cluster, or not at the place its name says.
    #[error(
        "{path} was not stored: it is not WAL of cluster {cluster} (server {server}) as its name says: {reason}"
    )]
    Foreign {
        /// The file.
        path: String,
        /// The cluster it was to be stored for.
        cluster: String,
        /// The server.
        server: String,
        /// What does not fit.
        reason: String,
    },
    /// The first segment of a timeline, whose history file is not stored yet: it cannot be
    /// told apart from a stray until it is. Retried, never set aside.
    #[error(
        "{path}: its first page is of timeline {found}, and timeline {timeline}'s history file, which would say that timeline {found} leads to it, is not stored yet (it is stored before its segments; retried)"
    )]
    HistoryNotStored {
        /// The file.
        path: String,
        /// The timeline of its first page.
        found: u32,
        /// The timeline of its name.
        timeline: u32,
    },
    /// A stored WAL object does not match its key.
    #[error("WAL object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The object is encrypted and no key was given.
    #[error(
        "WAL object {key} is encrypted: give the repository's encryption key (PGBACKUP_ENCRYPTION_KEY, from the Secret of repository.encryption)"
    )]
    KeyNeeded {
        /// The object.
        key: String,
    },
    /// The object is stored unencrypted though the repository's key is given.
    #[error(
        "WAL object {key} is not encrypted, but the repository's encryption key is given: refused, as anyone who can write to the repository could have put it there (WAL stored before encryption was turned on is read with --allow-unencrypted, spec.repository.encryption.allowUnencrypted)"
    )]
    NotEncrypted {
        /// The object.
        key: String,
    },
    /// The object could not be decrypted.
    #[error("cannot decrypt WAL object {key}: {source}")]
    Decrypt {
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: DecryptError,
    },
    /// The name is not a WAL file name.
    #[error("{0:?} is not the name of a WAL segment, partial segment or history file")]
    NotWal(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What storing a WAL file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored as a new object.
    Stored {
        /// Its key.
        key: String,
        /// Bytes before compression.
        size: u64,
        /// Bytes stored.
        stored: u64,
    },
    /// The same content was stored already; nothing was written.
    AlreadyArchived {
        /// The key of the stored copy.
        key: String,
    },
}

/// The WAL archive of one server in a store.
#[derive(Debug)]
pub struct WalArchive<'a, S> {
    store: &'a S,
    server: String,
    keys: Option<Keys>,
}

impl<'a, S: ObjectStore> WalArchive<'a, S> {
    /// The archive of `server`.
    pub fn new(store: &'a S, server: &str) -> Self {
        Self {
            store,
            server: server.to_string(),
            keys: None,
        }
    }

    /// The archive, reading encrypted objects with `keys`. (Writing encrypts with the
    /// keys of the [`StreamOptions`] given to [`Self::push`].)
    pub fn with_keys(mut self, keys: Option<Keys>) -> Self {
        self.keys = keys;
        self
    }
}

fn corrupt(key: &str, reason: String) -> WalError {
    WalError::Corrupt {
        key: key.to_string(),
        reason,
    }
}

fn io_error(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        source,
    }
}
