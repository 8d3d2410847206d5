//! Which moment the stored WAL reaches. The archiver samples the server's clock with its
//! WAL insert position; once the WAL up to a sampled position is stored, every transaction
//! committed before that sample is in the archive. This is what time targets are checked
//! against, and it stays true when the archiver catches up after an outage, when upload
//! times say nothing about the WAL's age. Pure.

use std::collections::VecDeque;

use jiff::{SignedDuration, Timestamp};

/// Most samples kept (at two a second, about half an hour of backlog).
const MAX_SAMPLES: usize = 4096;

/// Slack for a commit whose timestamp was taken just before its record was inserted.
const SLACK: SignedDuration = SignedDuration::from_secs(1);

/// Bytes of the page headers at the start of a segment and of any other WAL page: an
/// insert position just past one holds no record yet.
const LONG_PAGE_HEADER: u64 = 40;
const SHORT_PAGE_HEADER: u64 = 24;
const WAL_PAGE: u64 = 8192;

/// Samples of (server time, WAL insert position), oldest first.
#[derive(Debug)]
pub(super) struct Coverage {
    samples: VecDeque<(Timestamp, u64)>,
    stored_until: Option<u64>,
    segment_size: u64,
}

impl Coverage {
    /// Coverage of WAL with segments of `segment_size` bytes.
    pub fn new(segment_size: u64) -> Self {
        Self {
            samples: VecDeque::new(),
            stored_until: None,
            segment_size,
        }
    }

    /// Records that at `at` the server had inserted WAL up to `lsn`. A position just past a
    /// page header (after a segment switch, say) counts as the page's start: nothing has
    /// been written there yet.
    pub fn record(&mut self, at: Timestamp, lsn: u64) {
        let lsn = if self.segment_size > 0 && lsn % self.segment_size == LONG_PAGE_HEADER {
            lsn - LONG_PAGE_HEADER
        } else if lsn % WAL_PAGE == SHORT_PAGE_HEADER {
            lsn - SHORT_PAGE_HEADER
        } else {
            lsn
        };
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// The latest time up to which every commit lies before `stored_until` (the end of the
    /// WAL stored), if a sample says so.
    pub fn covers(&self, stored_until: u64) -> Option<Timestamp> {
        self.samples
            .iter()
            .rev()
            .find(|(_, lsn)| *lsn <= stored_until)
            .and_then(|(at, _)| at.checked_sub(SLACK).ok())
    }

    /// Forgets samples that cannot matter any more once WAL up to `stored_until` is stored:
    /// all but the latest one at or before it.
    pub fn stored(&mut self, stored_until: u64) {
        while self.samples.len() > 1 && self.samples[1].1 <= stored_until {
            self.samples.pop_front();
        }
        self.stored_until = self.stored_until.max(Some(stored_until));
    }

    /// How far complete segments are stored, as far as this session knows.
    pub fn stored_until(&self) -> Option<u64> {
        self.stored_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    #[test]
    fn coverage_follows_the_stored_wal_not_the_clock() {
        let mut coverage = Coverage::new(16 << 20);
        coverage.record(at(100), 1_000);
        coverage.record(at(101), 2_000);
        coverage.record(at(102), 9_000);
        // Stored up to 2,500: commits up to second 101 (less the slack) are in.
        assert_eq!(coverage.covers(2_500), Some(at(100)));
        assert_eq!(coverage.covers(999), None);
        assert_eq!(coverage.covers(9_000), Some(at(101)));
        coverage.stored(2_500);
        assert_eq!(coverage.covers(2_500), Some(at(100)));
        assert_eq!(coverage.samples.len(), 2);
        assert_eq!(coverage.stored_until(), Some(2_500));
        // Just after a segment switch nothing is written past the segment's end.
        let end = 3 << 24;
        coverage.record(at(103), end + 40);
        assert_eq!(coverage.covers(end), Some(at(102)));
    }
}
