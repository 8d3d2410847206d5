//! Where WAL lives in a repository: the keys of a server's archive and its records, and a
//! stored WAL object read back from its key.

use jiff::Timestamp;

use super::{COVERAGE_FILE, IDENTITY_FILE, SLOTS_FILE, WAL_DIR, WalFile};
use crate::{
    api::CompressionAlgorithm,
    repository::{ENCRYPTED_SUFFIX, ObjectInfo, StreamOptions},
};

/// The key prefix of a server's WAL archive, ending in `/`.
pub fn wal_prefix(server: &str) -> String {
    format!("{server}/{WAL_DIR}/")
}

/// The key of a server's archive coverage.
pub fn coverage_key(server: &str) -> String {
    format!("{server}/{WAL_DIR}/{COVERAGE_FILE}")
}

/// The key of the record of the slots a server's archiver created.
pub fn slots_key(server: &str) -> String {
    format!("{server}/{WAL_DIR}/{SLOTS_FILE}")
}

/// The key of a server's archive identity.
pub fn identity_key(server: &str) -> String {
    format!("{server}/{WAL_DIR}/{IDENTITY_FILE}")
}

/// The key under which a WAL file with this content is stored:
/// `<name>[.c<millis>].<sha256>[.ext][.age]`, where `c<millis>` (Unix milliseconds, server
/// clock) says that every transaction committed up to then is in this file or before it.
pub fn wal_key(
    server: &str,
    file: &WalFile,
    name: &str,
    sha256: &str,
    options: &StreamOptions,
    covers: Option<Timestamp>,
) -> String {
    let covers = covers
        .map(|t| format!(".c{}", t.as_millisecond()))
        .unwrap_or_default();
    let encrypted = if options.encryption.is_some() {
        ENCRYPTED_SUFFIX
    } else {
        ""
    };
    format!(
        "{}{:08X}/{name}{covers}.{sha256}{}{encrypted}",
        wal_prefix(server),
        file.timeline,
        StreamOptions::extension(options.compression)
    )
}

/// The key prefix under which the copies of one WAL file are found.
pub fn wal_name_prefix(server: &str, file: &WalFile, name: &str) -> String {
    format!("{}{:08X}/{name}.", wal_prefix(server), file.timeline)
}

/// One stored WAL file, read from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// The key in the store.
    pub key: String,
    /// The WAL file name, e.g. `000000010000000000000003`.
    pub name: String,
    /// What file it is.
    pub file: WalFile,
    /// SHA-256 of the uncompressed content.
    pub sha256: String,
    /// Compression of the stored bytes.
    pub compression: CompressionAlgorithm,
    /// Whether the stored bytes are encrypted (`.age`).
    pub encrypted: bool,
    /// Bytes stored.
    pub size: u64,
    /// When it was stored.
    pub modified: Option<Timestamp>,
    /// Every transaction committed up to this time (server clock) is in this file or an
    /// earlier one.
    pub covers: Option<Timestamp>,
}

impl WalObject {
    /// Reads a listed object as a WAL object; `None` for anything else (the identity file,
    /// a stranger's object).
    pub fn from_listing(info: &ObjectInfo, segment_size: u64) -> Option<Self> {
        let file_name = info.key.rsplit('/').next()?;
        let (file_name, encrypted) = match file_name.strip_suffix(ENCRYPTED_SUFFIX) {
            Some(rest) => (rest, true),
            None => (file_name, false),
        };
        let (rest, compression) = [
            (".zst", CompressionAlgorithm::Zstd),
            (".lz4", CompressionAlgorithm::Lz4),
            (".gz", CompressionAlgorithm::Gzip),
        ]
        .iter()
        .find_map(|(ext, algorithm)| file_name.strip_suffix(ext).map(|r| (r, *algorithm)))
        .unwrap_or((file_name, CompressionAlgorithm::None));
        let (rest, sha256) = rest.rsplit_once('.')?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let (name, covers) = match rest.rsplit_once(".c") {
            Some((name, millis))
                if !millis.is_empty() && millis.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (
                    name,
                    Some(Timestamp::from_millisecond(millis.parse().ok()?).ok()?),
                )
            }
            _ => (rest, None),
        };
        let file = WalFile::parse(name, segment_size)?;
        Some(Self {
            key: info.key.clone(),
            name: name.to_string(),
            file,
            sha256: sha256.to_string(),
            compression,
            encrypted,
            size: info.size,
            modified: info.modified,
            covers,
        })
    }
}

#[cfg(test)]
impl WalObject {
    /// A stored object for fixtures: `file`, uncompressed, covering up to `covers_minute`
    /// minutes after the epoch.
    pub(crate) fn for_test(file: WalFile, covers_minute: i64, segment_size: u64) -> Self {
        let info = ObjectInfo {
            key: format!(
                "s/wal/x/{}.c{}.{}",
                file.name(segment_size),
                covers_minute * 60_000,
                "0".repeat(64)
            ),
            size: 1,
            modified: None,
        };
        Self::from_listing(&info, segment_size).expect("a WAL object's key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::Keys;

    const SEG: u64 = 16 << 20;

    #[test]
    fn keys_carry_the_content_hash_and_compression() {
        let file = WalFile::segment(1, 3);
        let sha = "a".repeat(64);
        let covers = Timestamp::from_millisecond(1_795_000_000_123).expect("time");
        let key = wal_key(
            "ns-pg",
            &file,
            &file.name(SEG),
            &sha,
            &options(CompressionAlgorithm::Zstd, None),
            Some(covers),
        );
        assert_eq!(
            key,
            format!("ns-pg/wal/00000001/000000010000000000000003.c1795000000123.{sha}.zst")
        );
        let info = ObjectInfo {
            key: key.clone(),
            size: 10,
            modified: None,
        };
        let object = WalObject::from_listing(&info, SEG).expect("parsed");
        assert_eq!(object.file, file);
        assert_eq!(object.sha256, sha);
        assert_eq!(object.compression, CompressionAlgorithm::Zstd);
        assert_eq!(object.covers, Some(covers));

        let history = WalFile::history(2);
        let key = wal_key(
            "s",
            &history,
            &history.name(SEG),
            &sha,
            &options(CompressionAlgorithm::None, None),
            None,
        );
        assert_eq!(key, format!("s/wal/00000002/00000002.history.{sha}"));
        let info = ObjectInfo {
            key,
            size: 1,
            modified: None,
        };
        assert_eq!(
            WalObject::from_listing(&info, SEG).map(|o| o.file),
            Some(history)
        );
        let identity = ObjectInfo {
            key: identity_key("s"),
            size: 1,
            modified: None,
        };
        assert_eq!(WalObject::from_listing(&identity, SEG), None);
    }

    fn options(compression: CompressionAlgorithm, encryption: Option<Keys>) -> StreamOptions {
        StreamOptions {
            compression,
            level: 1,
            max_chunk_size: u64::MAX,
            encryption,
            threads: 1,
        }
    }

    #[test]
    fn encrypted_objects_say_so_in_their_key() {
        let file = WalFile::segment(1, 3);
        let sha = "b".repeat(64);
        let keys: Keys = Keys::generate().parse().expect("key");
        let key = wal_key(
            "s",
            &file,
            &file.name(SEG),
            &sha,
            &options(CompressionAlgorithm::Zstd, Some(keys)),
            None,
        );
        assert_eq!(
            key,
            format!("s/wal/00000001/000000010000000000000003.{sha}.zst.age")
        );
        let info = ObjectInfo {
            key,
            size: 1,
            modified: None,
        };
        let object = WalObject::from_listing(&info, SEG).expect("parsed");
        assert!(object.encrypted);
        assert_eq!(object.compression, CompressionAlgorithm::Zstd);
        assert_eq!(object.sha256, sha);
        assert_eq!(object.file, file);
    }
}
