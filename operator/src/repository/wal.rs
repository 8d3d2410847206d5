//! WAL file names and where WAL lives in a repository (DESIGN §3):
//! `<server>/wal/<timeline>/<file>.<sha256>[.zst|.lz4|.gz][.age]`, `.age` when encrypted.
//!
//! The SHA-256 of the file's uncompressed content is part of the key. Objects are therefore
//! immutable: storing the same file again is a no-op, and a different file under the same
//! WAL name can never replace the one already stored; a reader checks what it downloads
//! against the name.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{ENCRYPTED_SUFFIX, ObjectInfo, StreamOptions};
use crate::api::CompressionAlgorithm;

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

/// What a WAL file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileKind {
    /// A complete segment.
    Segment,
    /// The beginning of a segment still being written (`<segment>.partial`).
    Partial,
    /// A timeline history file (`<timeline>.history`).
    History,
    /// A backup history file (`<segment>.<offset>.backup`), written by `pg_backup_stop`.
    BackupHistory,
}

/// A WAL file: its timeline, kind and (for segments) segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFile {
    /// Timeline.
    pub timeline: u32,
    /// Segment number (0 for history files).
    pub segno: u64,
    /// What it is.
    pub kind: WalFileKind,
    /// Byte offset in the segment (backup history files only).
    pub offset: u32,
}

impl WalFile {
    /// A complete segment.
    pub fn segment(timeline: u32, segno: u64) -> Self {
        Self {
            timeline,
            segno,
            kind: WalFileKind::Segment,
            offset: 0,
        }
    }

    /// A timeline history file.
    pub fn history(timeline: u32) -> Self {
        Self {
            timeline,
            segno: 0,
            kind: WalFileKind::History,
            offset: 0,
        }
    }

    /// Parses a file name as PostgreSQL writes it; `None` for anything else.
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        let hex8 = |s: &str| {
            (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        if let Some(timeline) = name.strip_suffix(".history").and_then(hex8) {
            return Some(Self::history(timeline));
        }
        let (segment, kind, offset) = if let Some(s) = name.strip_suffix(".partial") {
            (s, WalFileKind::Partial, 0)
        } else if let Some(s) = name.strip_suffix(".backup") {
            let (segment, offset) = s.split_once('.')?;
            (segment, WalFileKind::BackupHistory, hex8(offset)?)
        } else {
            (name, WalFileKind::Segment, 0)
        };
        if segment.len() != 24 {
            return None;
        }
        let timeline = hex8(segment.get(0..8)?)?;
        let log = u64::from(hex8(segment.get(8..16)?)?);
        let seg = u64::from(hex8(segment.get(16..24)?)?);
        let per_log = segments_per_log(segment_size);
        if seg >= per_log {
            return None;
        }
        Some(Self {
            timeline,
            segno: log * per_log + seg,
            kind,
            offset,
        })
    }

    /// The file name PostgreSQL uses.
    pub fn name(&self, segment_size: u64) -> String {
        let per_log = segments_per_log(segment_size);
        let segment = format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_log,
            self.segno % per_log
        );
        match self.kind {
            WalFileKind::Segment => segment,
            WalFileKind::Partial => format!("{segment}.partial"),
            WalFileKind::History => format!("{:08X}.history", self.timeline),
            WalFileKind::BackupHistory => format!("{segment}.{:08X}.backup", self.offset),
        }
    }

    /// Whether the file holds WAL records (a segment or the beginning of one).
    pub fn is_wal(&self) -> bool {
        matches!(self.kind, WalFileKind::Segment | WalFileKind::Partial)
    }
}

/// Segments per 4 GiB "log file" (the middle 8 hex digits of a segment name).
fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

/// The segment holding `lsn`.
pub fn segno_of(lsn: u64, segment_size: u64) -> u64 {
    lsn / segment_size.max(1)
}

/// `0/3000028` for an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

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
    fn names_round_trip() {
        for name in [
            "000000010000000000000003",
            "000000020000001A000000FF",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            let file = WalFile::parse(name, SEG).expect(name);
            assert_eq!(file.name(SEG), name);
        }
        let file = WalFile::parse("000000020000001A000000FF", SEG).expect("segment");
        assert_eq!(file.timeline, 2);
        assert_eq!(file.segno, 0x1A * 256 + 0xFF);
        assert_eq!(
            WalFile::segment(1, 256).name(SEG),
            "000000010000000100000000"
        );
    }

    #[test]
    fn segment_numbers_depend_on_the_segment_size() {
        let big = 1 << 30; // 1 GiB segments: 4 per log file
        assert_eq!(
            WalFile::parse("000000010000000100000002", big).map(|f| f.segno),
            Some(6)
        );
        assert_eq!(WalFile::parse("000000010000000000000004", big), None);
    }

    #[test]
    fn other_names_are_not_wal() {
        for name in [
            "archive_status",
            "0000000100000000000000",
            "00000001000000000000000G",
            "000000010000000000000003.tmp",
            "RECOVERYXLOG",
            "0000000X.history",
        ] {
            assert_eq!(WalFile::parse(name, SEG), None, "{name}");
        }
    }

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

    #[test]
    fn lsns_print_like_postgresql() {
        assert_eq!(format_lsn(0x3000028), "0/3000028");
        assert_eq!(format_lsn(0x1A_FF00_0000), "1A/FF000000");
    }
}
