//! Whether a WAL file is the archive's cluster's, judged from the file alone: a segment by
//! its first page header (system identifier, segment size, position, timeline), a history
//! file by the timelines it lists. Every path that stores WAL asks before storing, and
//! `verify --wal` asks again of what is stored.

use super::{
    timeline::{HistoryEntry, TimelinePath, parse_history},
    wal::{ArchiveIdentity, WalFile, WalFileKind, format_lsn},
};
use crate::postgres::WalSegmentHeader;

/// Why a segment (or partial segment) with `header` is not `cluster`'s WAL at the place
/// its name `file` says. `history` is the history of `file`'s timeline when known; it is
/// needed only for the first segment of a timeline, whose first pages were written on the
/// parent timeline.
pub fn segment_mismatch(
    header: Option<&WalSegmentHeader>,
    file: &WalFile,
    cluster: &ArchiveIdentity,
    history: Option<&[HistoryEntry]>,
) -> Option<String> {
    let Some(header) = header else {
        return Some("its first page has no WAL segment header".into());
    };
    let found = header.system_identifier.to_string();
    if found != cluster.system_identifier {
        return Some(format!(
            "it was written by cluster {found}, not by cluster {} whose archive this is",
            cluster.system_identifier
        ));
    }
    if header.segment_size != cluster.wal_segment_size {
        return Some(format!(
            "its segment size is {} bytes, the cluster's is {}",
            header.segment_size, cluster.wal_segment_size
        ));
    }
    let start = file.segno * cluster.wal_segment_size;
    if header.page_address != start {
        return Some(format!(
            "it starts at WAL location {}, not at {} where its name puts it",
            format_lsn(header.page_address),
            format_lsn(start)
        ));
    }
    if header.timeline == file.timeline {
        return None;
    }
    // The segment where a timeline begins is a copy of the parent's up to the switch.
    let Some(history) = history else {
        return Some(format!(
            "its first page is of timeline {}, and no history file of timeline {} says that timeline {} leads to it",
            header.timeline, file.timeline, header.timeline
        ));
    };
    let expected = TimelinePath::new(file.timeline, history).timeline_at(start);
    (header.timeline != expected).then(|| {
        format!(
            "its first page is of timeline {}, but on timeline {}'s history the WAL at {} is timeline {expected}'s",
            header.timeline,
            file.timeline,
            format_lsn(start)
        )
    })
}

/// Why the history file `file` with content `text` does not fit the archive: it must list
/// earlier timelines in order, and agree with the stored history of the timeline it
/// branched from (`parent_history`, when that is stored).
pub fn history_mismatch(
    file: &WalFile,
    text: &str,
    parent_history: Option<&[HistoryEntry]>,
) -> Option<String> {
    if file.kind != WalFileKind::History {
        return None;
    }
    let entries = match parse_history(text) {
        Ok(entries) => entries,
        Err(reason) => return Some(format!("it is not a timeline history: {reason}")),
    };
    let Some((last, earlier)) = entries.split_last() else {
        return Some("it lists no timeline".into());
    };
    let ordered = entries
        .windows(2)
        .all(|pair| pair[0].parent < pair[1].parent && pair[0].switch_lsn <= pair[1].switch_lsn);
    if !ordered || last.parent >= file.timeline {
        return Some(format!(
            "its timelines do not lead in order to timeline {}",
            file.timeline
        ));
    }
    match parent_history {
        // PostgreSQL writes a history without the parent's past when it cannot read the
        // parent's history at promotion: nothing to compare.
        Some(_) if earlier.is_empty() => None,
        Some(parent) if parent != earlier => Some(format!(
            "it says timeline {} branched from timeline {} after a history that differs from the stored history of timeline {}",
            file.timeline, last.parent, last.parent
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn cluster() -> ArchiveIdentity {
        ArchiveIdentity {
            system_identifier: "7310450979226025411".into(),
            wal_segment_size: SEG,
            server_major: 16,
        }
    }

    fn header(timeline: u32, segno: u64) -> WalSegmentHeader {
        WalSegmentHeader {
            magic: 0xD113,
            timeline,
            page_address: segno * SEG,
            system_identifier: 7310450979226025411,
            segment_size: SEG,
            block_size: 8192,
        }
    }

    #[test]
    fn a_segment_of_the_cluster_at_its_place_belongs() {
        let file = WalFile::segment(1, 3);
        assert_eq!(
            segment_mismatch(Some(&header(1, 3)), &file, &cluster(), None),
            None
        );
    }

    #[test]
    fn another_clusters_or_misplaced_segment_does_not() {
        let file = WalFile::segment(1, 3);
        let other = WalSegmentHeader {
            system_identifier: 42,
            ..header(1, 3)
        };
        let reason = segment_mismatch(Some(&other), &file, &cluster(), None).expect("refused");
        assert!(reason.contains("cluster 42"), "{reason}");
        let reason =
            segment_mismatch(Some(&header(1, 4)), &file, &cluster(), None).expect("refused");
        assert!(reason.contains("0/4000000"), "{reason}");
        let big = WalSegmentHeader {
            segment_size: 64 << 20,
            ..header(1, 3)
        };
        assert!(segment_mismatch(Some(&big), &file, &cluster(), None).is_some());
        assert!(segment_mismatch(None, &file, &cluster(), None).is_some());
        // A segment of timeline 2 named as timeline 1's.
        assert!(segment_mismatch(Some(&header(2, 3)), &file, &cluster(), None).is_some());
    }

    #[test]
    fn the_first_segment_of_a_timeline_begins_on_its_parent() {
        let history = [HistoryEntry {
            parent: 1,
            switch_lsn: 3 * SEG + 0x1000,
        }];
        let file = WalFile::segment(2, 3);
        assert_eq!(
            segment_mismatch(Some(&header(1, 3)), &file, &cluster(), Some(&history)),
            None
        );
        // Without the history it cannot be told apart from a stray.
        assert!(segment_mismatch(Some(&header(1, 3)), &file, &cluster(), None).is_some());
        // A later segment of timeline 2 is timeline 2's throughout.
        let later = WalFile::segment(2, 4);
        assert!(
            segment_mismatch(Some(&header(1, 4)), &later, &cluster(), Some(&history)).is_some()
        );
        // Timeline 3 never branched from timeline 1 at segment 3.
        let history3 = [
            HistoryEntry {
                parent: 1,
                switch_lsn: SEG,
            },
            HistoryEntry {
                parent: 2,
                switch_lsn: 3 * SEG + 0x1000,
            },
        ];
        let reason = segment_mismatch(
            Some(&header(1, 3)),
            &WalFile::segment(3, 3),
            &cluster(),
            Some(&history3),
        )
        .expect("refused");
        assert!(reason.contains("timeline 2's"), "{reason}");
    }

    #[test]
    fn a_history_must_lead_to_its_timeline_and_agree_with_its_parent() {
        let file = WalFile::history(3);
        let text = "1\t0/3000000\tno recovery target specified\n2\t0/5000028\tno recovery target specified\n";
        let parent = [HistoryEntry {
            parent: 1,
            switch_lsn: 0x3000000,
        }];
        assert_eq!(history_mismatch(&file, text, Some(&parent)), None);
        assert_eq!(history_mismatch(&file, text, None), None);
        let other_parent = [HistoryEntry {
            parent: 1,
            switch_lsn: 0x7000000,
        }];
        assert!(history_mismatch(&file, text, Some(&other_parent)).is_some());
        assert!(history_mismatch(&WalFile::history(2), text, None).is_some());
        // Written when the parent's history could not be read at promotion: no past given.
        assert_eq!(
            history_mismatch(&file, "2\t0/6000000\tx\n", Some(&other_parent)),
            None
        );
        assert!(history_mismatch(&file, "", None).is_some());
        assert!(history_mismatch(&file, "not a history", None).is_some());
        assert!(history_mismatch(&file, "2\t0/5000000\tx\n1\t0/3000000\tx\n", None).is_some());
    }
}
