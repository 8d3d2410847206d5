//! What WAL an archive holds, on which timeline path, and where it has gaps: the pure
//! computations behind recovery planning and the recoverability window.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::wal::{WalFileKind, WalObject, segno_of};

/// One line of a timeline history file: timeline `parent` ended at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub parent: u32,
    /// Where the next timeline branched off.
    pub switch_lsn: u64,
}

/// Parses a `.history` file: `<parent timeline>\t<switch LSN>\t<reason>` per line.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("bad timeline in history line {line:?}"))?;
        let switch_lsn = fields
            .next()
            .and_then(crate::postgres::parse_lsn)
            .ok_or_else(|| format!("bad switch point in history line {line:?}"))?;
        entries.push(HistoryEntry { parent, switch_lsn });
    }
    Ok(entries)
}

/// One timeline of a path, from where it begins to where the next one branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStep {
    /// The timeline.
    pub timeline: u32,
    /// Where it begins (0 for the first).
    pub begin_lsn: u64,
    /// Where the next timeline of the path branched off; `None` for the last.
    pub end_lsn: Option<u64>,
}

/// The timelines a server on `timeline` went through, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    /// The steps.
    pub steps: Vec<PathStep>,
}

impl TimelinePath {
    /// The path to `timeline` from its history (empty for timeline 1).
    pub fn new(timeline: u32, history: &[HistoryEntry]) -> Self {
        let mut steps = Vec::with_capacity(history.len() + 1);
        let mut begin = 0;
        for entry in history {
            steps.push(PathStep {
                timeline: entry.parent,
                begin_lsn: begin,
                end_lsn: Some(entry.switch_lsn),
            });
            begin = entry.switch_lsn;
        }
        steps.push(PathStep {
            timeline,
            begin_lsn: begin,
            end_lsn: None,
        });
        Self { steps }
    }

    /// The timeline the path ends on.
    pub fn timeline(&self) -> u32 {
        self.steps.last().map(|s| s.timeline).unwrap_or(1)
    }

    /// The timeline recovery reads segment `segno` from: the newest one that begins at or
    /// before the segment (the segment where a timeline branches off is read from the new
    /// timeline), as PostgreSQL does.
    pub fn timeline_of_segment(&self, segno: u64, segment_size: u64) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|s| segno_of(s.begin_lsn, segment_size) <= segno)
            .map(|s| s.timeline)
            .unwrap_or(1)
    }

    /// The timeline that wrote position `lsn` on this path (a switch point belongs to the
    /// new timeline).
    pub fn timeline_at(&self, lsn: u64) -> u32 {
        self.steps
            .iter()
            .find(|s| s.begin_lsn <= lsn && s.end_lsn.is_none_or(|end| lsn < end))
            .map(|s| s.timeline)
            .unwrap_or_else(|| self.timeline())
    }

    /// Whether position `lsn` of `timeline` is on this path (a backup taken there can be
    /// recovered along it).
    pub fn contains(&self, timeline: u32, lsn: u64) -> bool {
        self.steps.iter().any(|s| {
            s.timeline == timeline && s.begin_lsn <= lsn && s.end_lsn.is_none_or(|end| lsn <= end)
        })
    }
}

/// A stored segment (complete or partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSegment {
    /// When it was stored.
    pub modified: Option<Timestamp>,
    /// Every transaction committed up to this time is in this segment or an earlier one.
    pub covers: Option<Timestamp>,
}

/// What WAL an archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalIndex {
    /// WAL segment size in bytes.
    pub segment_size: u64,
    /// Complete segments by (timeline, segment number).
    pub segments: BTreeMap<(u32, u64), StoredSegment>,
    /// Partial segments by (timeline, segment number).
    pub partials: BTreeMap<(u32, u64), StoredSegment>,
    /// Timelines whose history file is stored.
    pub histories: Vec<u32>,
}

/// Segment `segno` as the archive holds it on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    /// Segment number.
    pub segno: u64,
    /// Timeline it is read from.
    pub timeline: u32,
    /// `None` when the segment is missing.
    pub stored: Option<StoredSegment>,
    /// Whether only a partial copy is stored.
    pub partial: bool,
}

impl WalIndex {
    /// The index of a listing of the archive.
    pub fn new(objects: &[WalObject], segment_size: u64) -> Self {
        let mut index = Self {
            segment_size,
            ..Self::default()
        };
        for object in objects {
            let stored = StoredSegment {
                modified: object.modified,
                covers: object.covers,
            };
            let at = (object.file.timeline, object.file.segno);
            let newer =
                |old: &StoredSegment| (old.covers, old.modified) < (stored.covers, stored.modified);
            match object.file.kind {
                WalFileKind::Segment => {
                    index.segments.insert(at, stored);
                }
                WalFileKind::Partial => {
                    if index.partials.get(&at).is_none_or(newer) {
                        index.partials.insert(at, stored);
                    }
                }
                WalFileKind::History => index.histories.push(object.file.timeline),
                WalFileKind::BackupHistory => {}
            }
        }
        index.histories.sort_unstable();
        index.histories.dedup();
        index
    }

    /// The newest timeline the archive knows of, as `recovery_target_timeline = latest`
    /// finds it: from history files. WAL of a timeline without one cannot be placed and
    /// does not count (see [`Self::unplaced_timelines`]).
    pub fn latest_timeline(&self) -> u32 {
        self.histories.iter().copied().max().unwrap_or(1).max(1)
    }

    /// Timelines (after the first) that WAL is stored for but whose history file is not:
    /// recovery cannot follow them, and nothing that does not need them waits for them.
    pub fn unplaced_timelines(&self) -> Vec<u32> {
        let mut timelines: Vec<u32> = self
            .segments
            .keys()
            .chain(self.partials.keys())
            .map(|(t, _)| *t)
            .filter(|t| *t > 1 && self.histories.binary_search(t).is_err())
            .collect();
        timelines.sort_unstable();
        timelines.dedup();
        timelines
    }

    /// The last segment stored on a path (complete or partial).
    pub fn last_segment(&self, path: &TimelinePath) -> Option<u64> {
        self.segments
            .keys()
            .chain(self.partials.keys())
            .filter(|(t, s)| path.timeline_of_segment(*s, self.segment_size) == *t)
            .map(|(_, s)| *s)
            .max()
    }

    /// The last complete segment stored on a path.
    pub fn last_complete(&self, path: &TimelinePath) -> Option<u64> {
        self.segments
            .keys()
            .filter(|(t, s)| path.timeline_of_segment(*s, self.segment_size) == *t)
            .map(|(_, s)| *s)
            .max()
    }

    /// How far the archive covers the path in time: the latest time up to which every
    /// committed transaction is stored, and the end of the segment that says so.
    pub fn covered_until(&self, path: &TimelinePath) -> Option<(Timestamp, u64)> {
        self.segments
            .iter()
            .chain(self.partials.iter())
            .filter(|((t, s), _)| path.timeline_of_segment(*s, self.segment_size) == *t)
            .filter_map(|((_, s), stored)| Some((stored.covers?, (s + 1) * self.segment_size)))
            .max()
    }

    /// Segments `from..=to` as recovery along `path` reads them. A partial copy counts only
    /// for the last segment stored on the path.
    pub fn chain(&self, path: &TimelinePath, from: u64, to: u64) -> Vec<ChainLink> {
        let last = self.last_segment(path);
        (from..=to)
            .map(|segno| {
                let timeline = path.timeline_of_segment(segno, self.segment_size);
                let complete = self.segments.get(&(timeline, segno));
                let partial = (Some(segno) == last)
                    .then(|| self.partials.get(&(timeline, segno)))
                    .flatten();
                ChainLink {
                    segno,
                    timeline,
                    stored: complete.or(partial).copied(),
                    partial: complete.is_none() && partial.is_some(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::CompressionAlgorithm, repository::wal::WalFile};

    const SEG: u64 = 16 << 20;

    fn object(file: WalFile, minute: i64) -> WalObject {
        let object = WalObject::for_test(file, minute, SEG);
        assert_eq!(object.compression, CompressionAlgorithm::None);
        object
    }

    #[test]
    fn history_files_parse_into_a_path() {
        let text = "1\t0/3000000\tbefore 2026-11-21 10:00:00+00\n\n2\t0/5000028\tno recovery target specified\n";
        let history = parse_history(text).expect("parsed");
        assert_eq!(history.len(), 2);
        let path = TimelinePath::new(3, &history);
        assert_eq!(path.timeline(), 3);
        // The segment holding a switch point is read from the new timeline.
        assert_eq!(path.timeline_of_segment(2, SEG), 1);
        assert_eq!(path.timeline_of_segment(3, SEG), 2);
        assert_eq!(path.timeline_of_segment(5, SEG), 3);
        assert_eq!(path.timeline_of_segment(9, SEG), 3);
        assert!(path.contains(1, 0x2000000));
        assert!(!path.contains(1, 0x4000000));
        assert!(path.contains(2, 0x4000000));
        assert!(!path.contains(4, 0x4000000));
        assert!(parse_history("x 0/1 y").is_err());
    }

    #[test]
    fn wal_of_a_timeline_without_history_is_not_the_latest() {
        let objects = vec![
            object(WalFile::segment(1, 1), 1),
            object(WalFile::segment(2, 3), 4),
            object(WalFile::history(2), 4),
            // A stray: timeline 5 was never recorded as branching off anything.
            object(WalFile::segment(5, 9), 5),
            object(
                WalFile {
                    kind: WalFileKind::Partial,
                    ..WalFile::segment(5, 10)
                },
                6,
            ),
        ];
        let index = WalIndex::new(&objects, SEG);
        assert_eq!(index.latest_timeline(), 2);
        assert_eq!(index.unplaced_timelines(), vec![5]);
        assert_eq!(WalIndex::new(&objects[..1], SEG).latest_timeline(), 1);
    }

    #[test]
    fn chains_follow_the_path_and_show_gaps() {
        let objects = vec![
            object(WalFile::segment(1, 1), 1),
            object(WalFile::segment(1, 2), 2),
            object(WalFile::segment(1, 3), 3), // timeline 1 went on after the branch
            object(WalFile::segment(2, 3), 4),
            object(WalFile::segment(2, 5), 6),
            object(
                WalFile {
                    kind: WalFileKind::Partial,
                    ..WalFile::segment(2, 6)
                },
                7,
            ),
            object(WalFile::history(2), 4),
        ];
        let index = WalIndex::new(&objects, SEG);
        assert_eq!(index.latest_timeline(), 2);
        let path = TimelinePath::new(
            2,
            &[HistoryEntry {
                parent: 1,
                switch_lsn: 0x3000100,
            }],
        );
        assert_eq!(index.last_segment(&path), Some(6));
        assert_eq!(index.last_complete(&path), Some(5));
        let chain = index.chain(&path, 1, 6);
        let timelines: Vec<u32> = chain.iter().map(|l| l.timeline).collect();
        assert_eq!(timelines, vec![1, 1, 2, 2, 2, 2]);
        let missing: Vec<u64> = chain
            .iter()
            .filter(|l| l.stored.is_none())
            .map(|l| l.segno)
            .collect();
        assert_eq!(missing, vec![4]);
        assert!(chain[5].partial);
        // Timeline 1 alone ends at segment 3.
        let one = TimelinePath::new(1, &[]);
        assert_eq!(index.last_segment(&one), Some(3));
        assert!(index.chain(&one, 1, 3).iter().all(|l| l.stored.is_some()));
    }
}
