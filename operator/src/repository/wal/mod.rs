//! WAL in a repository (DESIGN §3): the archive's records here, WAL file names in `names`,
//! and where WAL lives in `keys`:
//! `<server>/wal/<timeline>/<file>.<sha256>[.zst|.lz4|.gz][.age]`, `.age` when encrypted.
//!
//! The SHA-256 of the file's uncompressed content is part of the key. Objects are therefore
//! immutable: storing the same file again is a no-op, and a different file under the same
//! WAL name can never replace the one already stored; a reader checks what it downloads
//! against the name.

mod keys;
mod names;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use keys::{
    WalObject, coverage_key, identity_key, slots_key, wal_key, wal_name_prefix, wal_prefix,
};
pub use names::{WalFile, WalFileKind, format_lsn, segno_of};

/// Directory of the WAL archive under a server's directory.
pub const WAL_DIR: &str = "wal";

/// File in the WAL directory that names the cluster whose WAL it holds.
pub const IDENTITY_FILE: &str = "archive.json";

/// File in the WAL directory that says up to when the archive is complete.
pub const COVERAGE_FILE: &str = "coverage.json";

/// File in the WAL directory that names the replication slots the archiver created.
pub const SLOTS_FILE: &str = "slots.json";

/// Up to when the archive holds every committed transaction: the archiver's latest word,
/// rewritten as it goes (also when the server is idle, when no WAL object changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveCoverage {
    /// The timeline the archived WAL was streamed on.
    pub timeline: u32,
    /// WAL up to this location is stored.
    pub lsn: String,
    /// Every transaction committed up to this time (server clock) lies before `lsn`.
    pub covers: Timestamp,
}

/// Which cluster a WAL archive belongs to. Written by the first archiver or `wal-push`;
/// WAL of any other cluster is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveIdentity {
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Major version of PostgreSQL, e.g. 15.
    pub server_major: u32,
}
