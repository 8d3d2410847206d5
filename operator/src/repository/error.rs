//! Errors of the object stores, worded for the person reading the log.

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{location}: object {key} does not exist")]
    NotFound {
        /// The store.
        location: String,
        /// The object's key.
        key: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the data to store failed (the producer of the stream died or errored).
    #[error("reading the data for {key} failed")]
    Source {
        /// The object being written.
        key: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// S3 refused or failed a request.
    #[error("S3 {operation} {target}: {reason}")]
    S3 {
        /// The S3 operation, e.g. `PutObject`.
        operation: &'static str,
        /// `s3://bucket/key`.
        target: String,
        /// What S3 (or the connection) said, in words.
        reason: String,
    },
    /// The object is encrypted and no key was given.
    #[error(
        "{key} is encrypted: give the repository's encryption key (PGBACKUP_ENCRYPTION_KEY, from the Secret of repository.encryption)"
    )]
    KeyNeeded {
        /// The object.
        key: String,
    },
    /// The object is stored unencrypted though the repository's key is given.
    #[error(
        "{key} is not encrypted, but the repository's encryption key is given: refused, as anyone who can write to the repository could have put it there (objects stored before encryption was turned on are read with --allow-unencrypted, spec.repository.encryption.allowUnencrypted)"
    )]
    NotEncrypted {
        /// The object.
        key: String,
    },
    /// The object could not be decrypted.
    #[error("cannot decrypt {key}: {source}")]
    Decrypt {
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: super::DecryptError,
    },
    /// A key that would lead outside the repository.
    #[error("{key:?} is not a key of this repository (it leaves the repository's directory)")]
    BadKey {
        /// The key.
        key: String,
    },
    /// The S3 client could not be set up.
    #[error("S3 client set-up: {0}")]
    S3Setup(String),
}
