//! The local spool `pg_receivewal` writes into: which files are complete and waiting to be
//! stored, which one is being written, and how to make `pg_receivewal` start exactly where
//! the repository ends.

use std::{
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::repository::{WalFile, WalFileKind};

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

/// Prepares the spool so that `pg_receivewal` starts streaming at segment `next` of
/// `timeline`: it starts at the beginning of the newest `.partial` file it finds. Partial
/// files of other segments are removed (their WAL is stored, or will be streamed again).
pub(super) fn seed(dir: &Path, timeline: u32, next: u64, segment_size: u64) -> io::Result<()> {
    let state = scan(dir, segment_size)?;
    let wanted = WalFile {
        kind: WalFileKind::Partial,
        ..WalFile::segment(timeline, next)
    };
    if let Some(partial) = &state.partial {
        if partial.file == wanted {
            return Ok(());
        }
        std::fs::remove_file(&partial.path)?;
    }
    // pg_receivewal reuses a file of the full segment size and overwrites it from the start.
    let path = dir.join(wanted.name(segment_size));
    let file = std::fs::File::create(&path)?;
    file.set_len(segment_size)?;
    file.sync_all()
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

    #[test]
    fn seeding_replaces_a_stale_partial_with_a_full_size_one() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("000000010000000000000003.partial"), b"x").expect("write");
        seed(dir.path(), 1, 7, SEG).expect("seed");
        let state = scan(dir.path(), SEG).expect("scan");
        let partial = state.partial.expect("partial");
        assert_eq!(partial.file.name(SEG), "000000010000000000000007.partial");
        assert_eq!(std::fs::metadata(&partial.path).expect("meta").len(), SEG);
        assert!(state.complete.is_empty());
        // Seeding again where streaming already is keeps the file.
        std::fs::write(&partial.path, b"streamed").expect("write");
        seed(dir.path(), 1, 7, SEG).expect("seed");
        assert_eq!(std::fs::read(&partial.path).expect("read"), b"streamed");
    }
}
