//! Where streaming resumes: the first segment the repository does not have, along the
//! server's timeline history, from where the replication slot holds WAL. Pure.

use crate::repository::{TimelinePath, WalIndex};

/// Where to start streaming, and the WAL known to be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Resume {
    /// The first segment to stream.
    pub next: u64,
    /// Segments `first..=last` that are not archived and no longer on the server.
    pub gap: Option<(u64, u64)>,
}

/// `held_from` is the first segment the slot holds; `server_removed` says the server has
/// already refused to stream from before it.
pub(super) fn resume_point(
    index: &WalIndex,
    path: &TimelinePath,
    held_from: u64,
    server_removed: bool,
) -> Resume {
    let size = index.segment_size;
    let stored = |segno: u64| {
        index
            .segments
            .contains_key(&(path.timeline_of_segment(segno, size), segno))
    };
    let Some(last) = index.last_complete(path) else {
        return Resume {
            next: held_from,
            gap: None,
        };
    };
    if last + 1 < held_from {
        // The slot is ahead of the archive (a new slot, or one moved by someone else): the
        // server may still have the WAL in between; only once it says otherwise is it lost.
        return if server_removed {
            Resume {
                next: held_from,
                gap: Some((last + 1, held_from - 1)),
            }
        } else {
            Resume {
                next: last + 1,
                gap: None,
            }
        };
    }
    // The first segment not stored from the slot's position on: a hole below the newest
    // stored segment is streamed again rather than skipped.
    let mut next = held_from;
    while stored(next) {
        next += 1;
    }
    Resume { next, gap: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{StoredSegment, WalIndex};

    const SEG: u64 = 16 << 20;

    fn index(segments: &[u64]) -> WalIndex {
        let mut index = WalIndex {
            segment_size: SEG,
            ..WalIndex::default()
        };
        for s in segments {
            index.segments.insert(
                (1, *s),
                StoredSegment {
                    modified: None,
                    covers: None,
                },
            );
        }
        index
    }

    #[test]
    fn resumes_after_the_archive_or_at_its_first_hole() {
        let path = TimelinePath::new(1, &[]);
        let resume =
            |segments: &[u64], held, removed| resume_point(&index(segments), &path, held, removed);
        assert_eq!(resume(&[], 7, false), Resume { next: 7, gap: None });
        assert_eq!(resume(&[3, 4, 5], 5, false), Resume { next: 6, gap: None });
        assert_eq!(
            resume(&[3, 4, 6, 7], 4, false),
            Resume { next: 5, gap: None }
        );
        assert_eq!(resume(&[3, 4, 5], 9, false), Resume { next: 6, gap: None });
        assert_eq!(
            resume(&[3, 4, 5], 9, true),
            Resume {
                next: 9,
                gap: Some((6, 8))
            }
        );
    }
}
