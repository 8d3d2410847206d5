//! The data path: `source → count → compress → (encrypt) → sha256 → store` for backups
//! (`store`), and `store → verify sha256 → (decrypt) → decompress` for restores (`open`),
//! with the compression codecs in `codec`. Everything streams: memory does not depend on the
//! size of the database. Here: how objects are written and what is counted.

mod codec;
mod open;
mod store;

use std::sync::atomic::AtomicU64;

use super::{Keys, Manifest, ObjectRole};
use crate::api::CompressionAlgorithm;

pub(crate) use codec::{compress, decompress};
pub use open::open_object;
pub(crate) use store::Hashing;
pub use store::{store_object, store_precompressed};

/// How objects are written.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Compression algorithm.
    pub compression: CompressionAlgorithm,
    /// Compression level.
    pub level: i32,
    /// Largest stored chunk; a longer stream continues in `<file>.1`, `<file>.2`, … so that
    /// no single object needs more than S3's 10,000 parts.
    pub max_chunk_size: u64,
    /// Client-side encryption of what is stored; `None` stores the compressed bytes.
    pub encryption: Option<Keys>,
    /// Threads zstd compresses with (1: on the calling thread).
    pub threads: u32,
}

impl StreamOptions {
    /// The algorithm's fast default level when none is given.
    pub fn default_level(algorithm: CompressionAlgorithm) -> i32 {
        match algorithm {
            CompressionAlgorithm::Zstd => 3,
            CompressionAlgorithm::Lz4 => 1,
            CompressionAlgorithm::Gzip => 6,
            CompressionAlgorithm::None => 0,
        }
    }

    /// The level WAL is compressed at when none is given: the fastest, since every
    /// segment waits for it (`archive_command`) or adds to the archive's lag.
    pub fn default_wal_level(algorithm: CompressionAlgorithm) -> i32 {
        match algorithm {
            CompressionAlgorithm::None => 0,
            CompressionAlgorithm::Zstd | CompressionAlgorithm::Lz4 | CompressionAlgorithm::Gzip => {
                1
            }
        }
    }

    /// One compression thread per CPU the process may use (its cgroup's quota included).
    pub fn default_threads() -> u32 {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1)
    }

    /// File name extension of the algorithm.
    pub fn extension(algorithm: CompressionAlgorithm) -> &'static str {
        match algorithm {
            CompressionAlgorithm::Zstd => ".zst",
            CompressionAlgorithm::Lz4 => ".lz4",
            CompressionAlgorithm::Gzip => ".gz",
            CompressionAlgorithm::None => "",
        }
    }
}

/// Bytes read from the database and bytes stored, shared with a progress reporter.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from the source (uncompressed).
    pub read: AtomicU64,
    /// Bytes stored (compressed).
    pub stored: AtomicU64,
}

/// What an object to store is.
#[derive(Debug, Clone)]
pub struct NewObject {
    /// Logical name, e.g. `data.tar` (the compression's extension is added).
    pub name: String,
    /// What it holds.
    pub role: ObjectRole,
    /// The database of a dump.
    pub database: Option<String>,
}

/// How a backup's objects are stored, from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFormat {
    /// Compression of the stored bytes.
    pub compression: CompressionAlgorithm,
    /// Whether they are encrypted.
    pub encrypted: bool,
}

impl From<&Manifest> for StoredFormat {
    fn from(manifest: &Manifest) -> Self {
        Self {
            compression: manifest.compression,
            encrypted: manifest.encrypted,
        }
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
