//! WAL file names as PostgreSQL writes them (segments, partial segments, history and
//! backup history files), segment numbers and LSNs.

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lsns_print_like_postgresql() {
        assert_eq!(format_lsn(0x3000028), "0/3000028");
        assert_eq!(format_lsn(0x1A_FF00_0000), "1A/FF000000");
    }
}
