//! The local spool `pg_receivewal` writes into: which files are complete and waiting to be
//! stored, which one is being written, and how to make `pg_receivewal` start exactly where
//! the repository ends.

use std::{
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    postgres::{LONG_HEADER_LEN, WalSegmentHeader},
    repository::{ArchiveIdentity, WalFile, WalFileKind},
};

/// The spool of one cluster's archiver.
#[derive(Debug, Clone)]
pub(super) struct Spool {
    /// The directory.
    pub dir: PathBuf,
    /// The cluster whose WAL it receives.
    pub cluster: ArchiveIdentity,
}

impl Spool {
    /// The spool in `dir` (created when missing); by default a directory of the server and
    /// cluster in the system's temporary directory, so that two clusters archived under one
    /// server name never share one.
    pub fn open(dir: Option<&Path>, server: &str, cluster: ArchiveIdentity) -> io::Result<Self> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "pgbackup-wal-spool-{server}-{}",
                cluster.system_identifier
            ))
        });
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, cluster })
    }

    /// WAL segment size of the cluster.
    pub fn segment_size(&self) -> u64 {
        self.cluster.wal_segment_size
    }

    /// Where files that are not the cluster's WAL are moved to.
    pub fn rejected_dir(&self) -> PathBuf {
        self.dir.join("rejected")
    }

    /// Moves `path` out of the spool into [`Self::rejected_dir`] (under a name that says
    /// when), so that it is never stored and can be looked at; returns where it went.
    pub fn set_aside(&self, path: &Path) -> io::Result<PathBuf> {
        let dir = self.rejected_dir();
        std::fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = dir.join(format!(
            "{name}.{}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.fZ")
        ));
        std::fs::rename(path, &to)?;
        Ok(to)
    }
}

/// A file in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SpoolFile {
    /// Its path.
    pub path: PathBuf,
    /// What it is.
    pub file: WalFile,
    /// When it was last written.
    pub modified: Option<SystemTime>,
}

/// What the spool holds.
#[derive(Debug, Clone, Default)]
pub(super) struct SpoolState {
    /// History files and complete segments, in the order they must be stored (histories
    /// first, then segments by position).
    pub complete: Vec<SpoolFile>,
    /// The segment being written.
    pub partial: Option<SpoolFile>,
}

/// Reads the spool directory.
pub(super) fn scan(dir: &Path, segment_size: u64) -> io::Result<SpoolState> {
    let mut state = SpoolState::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(file) = WalFile::parse(&name, segment_size) else {
            continue;
        };
        let spooled = SpoolFile {
            path: entry.path(),
            file,
            modified: entry.metadata().ok().and_then(|m| m.modified().ok()),
        };
        match file.kind {
            WalFileKind::Partial => {
                // pg_receivewal writes one at a time; keep the newest if an old one lingers.
                if state.partial.as_ref().is_none_or(|p| p.file < file) {
                    state.partial = Some(spooled);
                }
            }
            WalFileKind::Segment | WalFileKind::History => state.complete.push(spooled),
            WalFileKind::BackupHistory => {}
        }
    }
    state.complete.sort_by_key(|f| {
        (
            f.file.kind != WalFileKind::History,
            f.file.segno,
            f.file.timeline,
        )
    });
    Ok(state)
}

/// Removes the temporary copies a killed archiver left (`.pgbackup-*`).
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".pgbackup-")
        {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

/// Prepares `spool` so that `pg_receivewal` starts streaming at segment `next` of
/// `timeline`: it starts at the beginning of the newest `.partial` file it finds. Partial
/// files of other segments are removed (their WAL is stored, or will be streamed again);
/// one of the right name that another cluster wrote is set aside.
pub(super) fn seed(spool: &Spool, timeline: u32, next: u64) -> io::Result<()> {
    let segment_size = spool.segment_size();
    let state = scan(&spool.dir, segment_size)?;
    let wanted = WalFile {
        kind: WalFileKind::Partial,
        ..WalFile::segment(timeline, next)
    };
    if let Some(partial) = &state.partial {
        if partial.file != wanted {
            std::fs::remove_file(&partial.path)?;
        } else if let Some(header) = read_header(&partial.path)?
            && (header.system_identifier.to_string() != spool.cluster.system_identifier
                || header.page_address != next * segment_size)
        {
            let to = spool.set_aside(&partial.path)?;
            tracing::error!(
                "{} in the spool is not WAL of cluster {} at its place: moved to {}",
                partial.path.display(),
                spool.cluster.system_identifier,
                to.display()
            );
        } else {
            return Ok(());
        }
    }
    // pg_receivewal reuses a file of the full segment size and overwrites it from the start.
    let path = spool.dir.join(wanted.name(segment_size));
    let file = std::fs::File::create(&path)?;
    file.set_len(segment_size)?;
    file.sync_all()
}

/// The first page header of a file, `None` when it has none.
fn read_header(path: &Path) -> io::Result<Option<WalSegmentHeader>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(LONG_HEADER_LEN);
    std::fs::File::open(path)?
        .take(LONG_HEADER_LEN as u64)
        .read_to_end(&mut bytes)?;
    Ok(WalSegmentHeader::parse(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn orders_histories_before_segments_and_finds_the_partial() {
        let dir = tempfile::tempdir().expect("dir");
        for name in [
            "000000020000000000000005",
            "000000010000000000000004",
            "00000002.history",
            "000000020000000000000006.partial",
            ".pgbackup-snapshot-x",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let state = scan(dir.path(), SEG).expect("scan");
        let names: Vec<String> = state.complete.iter().map(|f| f.file.name(SEG)).collect();
        assert_eq!(
            names,
            [
                "00000002.history",
                "000000010000000000000004",
                "000000020000000000000005"
            ]
        );
        assert_eq!(
            state.partial.map(|p| p.file.name(SEG)).as_deref(),
            Some("000000020000000000000006.partial")
        );
    }

    #[test]
    fn leftovers_of_a_killed_archiver_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(".pgbackup-snapshot-1"), b"x").expect("write");
        std::fs::create_dir(dir.path().join(".pgbackup-partial-2")).expect("mkdir");
        std::fs::write(dir.path().join(".pgbackup-partial-2/seg"), b"x").expect("write");
        std::fs::write(dir.path().join("000000010000000000000003"), b"x").expect("write");
        remove_leftovers(dir.path()).expect("clean");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["000000010000000000000003"]);
    }

    fn spool_in(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            cluster: ArchiveIdentity {
                system_identifier: "7310450979226025411".into(),
                wal_segment_size: SEG,
                server_major: 16,
            },
        }
    }

    /// The first page of segment `segno` as cluster `system_identifier` writes it.
    fn first_page(system_identifier: u64, segno: u64) -> Vec<u8> {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
        page[24..32].copy_from_slice(&system_identifier.to_le_bytes());
        page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        page
    }

    #[test]
    fn seeding_sets_aside_a_partial_of_another_cluster() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = spool_in(dir.path());
        let name = "000000010000000000000007.partial";
        std::fs::write(dir.path().join(name), first_page(42, 7)).expect("write");
        seed(&spool, 1, 7).expect("seed");
        let rejected: Vec<String> = std::fs::read_dir(spool.rejected_dir())
            .expect("rejected")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].starts_with(name), "{rejected:?}");
        // A fresh file of the full size takes its place.
        let partial = scan(dir.path(), SEG)
            .expect("scan")
            .partial
            .expect("partial");
        assert_eq!(std::fs::metadata(&partial.path).expect("meta").len(), SEG);
        // The cluster's own partial is kept.
        std::fs::write(&partial.path, first_page(7310450979226025411, 7)).expect("write");
        seed(&spool, 1, 7).expect("seed");
        assert_eq!(
            std::fs::read(&partial.path).expect("read"),
            first_page(7310450979226025411, 7)
        );
    }

    #[test]
    fn seeding_replaces_a_stale_partial_with_a_full_size_one() {
        let dir = tempfile::tempdir().expect("dir");
        let spool = spool_in(dir.path());
        std::fs::write(dir.path().join("000000010000000000000003.partial"), b"x").expect("write");
        seed(&spool, 1, 7).expect("seed");
        let state = scan(dir.path(), SEG).expect("scan");
        let partial = state.partial.expect("partial");
        assert_eq!(partial.file.name(SEG), "000000010000000000000007.partial");
        assert_eq!(std::fs::metadata(&partial.path).expect("meta").len(), SEG);
        assert!(state.complete.is_empty());
        // Seeding again where streaming already is keeps the file.
        std::fs::write(&partial.path, b"streamed").expect("write");
        seed(&spool, 1, 7).expect("seed");
        assert_eq!(std::fs::read(&partial.path).expect("read"), b"streamed");
    }
}
