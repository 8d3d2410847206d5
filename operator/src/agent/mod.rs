//! What runs in the Jobs and Deployments the operator creates (and on any machine by hand):
//! backup, WAL archiving, list, verify, restore and prune against a repository.

pub mod backup;
pub mod configuration;
pub mod copy;
pub mod data_dir;
pub mod list;
pub mod process;
pub mod progress;
pub mod prune;
pub mod record_snapshot;
pub mod repository_args;
pub mod restore;
pub mod trigger;
pub mod untar;
pub mod verify;
pub mod wal_archive;
pub mod wal_fetch;
mod wal_fetch_ahead;
pub mod wal_push;
mod wal_push_ahead;
mod worker_lock;

use crate::{
    postgres::ConnectionError,
    repository::{CatalogError, LocationError, StoreError, WalError},
};

/// An agent command failed. The message is one line that names the cause.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The repository URL is unusable.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The WAL archive refused or failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The database could not be reached or queried.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A PostgreSQL tool failed.
    #[error(transparent)]
    Tool(#[from] process::ToolError),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    /// A backup, object or file is not as it should be.
    #[error("{0}")]
    Corrupt(String),
    /// A restore test ran and the restored data is not what the backup recorded.
    #[error("{0}")]
    Verification(String),
    /// The backup is not of the cluster the restore replaces or copies.
    #[error("{0}")]
    OtherCluster(String),
    /// Work stopped for a reason that may pass (a server restarting); it may be retried.
    #[error("{0}")]
    Interrupted(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// A one-word cause in `PascalCase`, for the backup object's condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Location(_) => "InvalidRepository",
            Self::Store(_) | Self::Catalog(_) => "RepositoryError",
            Self::Wal(_) => "WALArchiveError",
            Self::Connection(ConnectionError::Authentication { .. }) => "DatabaseLoginFailed",
            Self::Connection(_) => "DatabaseUnreachable",
            Self::Tool(_) => "PostgresToolFailed",
            Self::Invalid(_) => "InvalidRequest",
            Self::Corrupt(_) => "Corrupt",
            Self::Verification(_) => "VerificationFailed",
            Self::OtherCluster(_) => "OtherCluster",
            Self::Interrupted(_) => "Interrupted",
            Self::Io { .. } => "LocalIOError",
        }
    }
}

/// The text of an error and its causes on one line: `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    crate::redact::text(&text).into_owned()
}
