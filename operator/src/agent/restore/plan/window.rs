//! The recoverability window along a timeline path: from the end of the first backup the
//! archive is continuous from, to the last moment every committed transaction is archived.

use super::{Sources, Window};
use crate::{
    postgres::parse_lsn,
    repository::{Manifest, segno_of},
};

/// A backup's timeline and end LSN.
pub(super) fn backup_end(manifest: &Manifest) -> Option<(u32, u64)> {
    Some((
        manifest.timeline.unwrap_or(1),
        parse_lsn(manifest.end_lsn.as_deref()?)?,
    ))
}

/// The recoverability window along the path.
pub fn window(sources: &Sources<'_>) -> Window {
    let timeline = sources.path.timeline();
    let Some(index) = sources.index else {
        return Window {
            timeline,
            from: None,
            to: None,
        };
    };
    let size = index.segment_size;
    let Some(last) = index.last_segment(sources.path) else {
        return Window {
            timeline,
            from: None,
            to: None,
        };
    };
    // The archiver's record counts where the WAL it names is stored on this path.
    let recorded = sources.coverage.and_then(|c| {
        let lsn = parse_lsn(&c.lsn)?;
        let segno = segno_of(lsn.saturating_sub(1), size);
        let timeline = sources.path.timeline_of_segment(segno, size);
        let stored = index.segments.contains_key(&(timeline, segno))
            || index.partials.contains_key(&(timeline, segno));
        (timeline == c.timeline && stored).then_some((c.covers, lsn))
    });
    let to = index.covered_until(sources.path).max(recorded);
    let from = sources
        .backups
        .iter()
        .filter_map(|m| {
            let (tli, end) = backup_end(m)?;
            let first = segno_of(end.saturating_sub(1), size);
            let continuous = sources.path.contains(tli, end)
                && first <= last
                && index
                    .chain(sources.path, first, last)
                    .iter()
                    .all(|l| l.stored.is_some());
            continuous.then_some((m.end_time, end))
        })
        .next();
    Window { timeline, from, to }
}
