//! Fixtures for restore planning: backups and archived segments at known minutes.

use super::*;
use crate::repository::{HistoryEntry, WalFile, WalFileKind, WalObject};

const SEG: u64 = 16 << 20;

fn at(minute: i64) -> Timestamp {
    Timestamp::from_second(minute * 60).expect("time")
}

/// A physical backup on `timeline` whose WAL ends in segment `end_segno`, finished at `minute`.
fn backup(id: &str, timeline: u32, end_segno: u64, minute: i64) -> Manifest {
    Manifest {
        timeline: Some(timeline),
        server_version: "15.8".into(),
        server_version_num: 150008,
        begin_lsn: Some(format_lsn(end_segno * SEG + 0x28)),
        end_lsn: Some(format_lsn(end_segno * SEG + 0x100)),
        begin_time: at(minute - 1),
        end_time: at(minute),
        ..Manifest::fixture(id)
    }
}

/// Segments `(timeline, segno, minute stored)`; a minute below 0 marks a partial copy.
fn index(segments: &[(u32, u64, i64)], histories: &[u32]) -> WalIndex {
    let mut objects: Vec<WalObject> = segments
        .iter()
        .map(|&(timeline, segno, minute)| {
            let mut file = WalFile::segment(timeline, segno);
            if minute < 0 {
                file.kind = WalFileKind::Partial;
            }
            object(file, minute.abs())
        })
        .collect();
    objects.extend(histories.iter().map(|t| object(WalFile::history(*t), 0)));
    WalIndex::new(&objects, SEG)
}

fn object(file: WalFile, minute: i64) -> WalObject {
    WalObject::for_test(file, minute, SEG)
}

fn identity() -> ArchiveIdentity {
    ArchiveIdentity {
        system_identifier: "42".into(),
        wal_segment_size: SEG,
        server_major: 15,
    }
}

/// Backups A (segment 2, minute 10) and B (segment 6, minute 30); segments 2..=10 stored
/// one per 5 minutes from minute 10 (segment 10 at minute 50).
fn fixture() -> (Vec<Manifest>, WalIndex) {
    let backups = vec![backup("A", 1, 2, 10), backup("B", 1, 6, 30)];
    let segments: Vec<(u32, u64, i64)> =
        (2..=10).map(|s| (1, s, 10 + 5 * (s as i64 - 2))).collect();
    (backups, index(&segments, &[]))
}

fn run(
    backups: &[Manifest],
    index: &WalIndex,
    path: &TimelinePath,
    target: RecoveryTarget,
    backup: Option<&str>,
) -> Result<String, PlanError> {
    let refs: Vec<&Manifest> = backups.iter().collect();
    let identity = identity();
    let sources = Sources {
        backups: &refs,
        index: Some(index),
        identity: Some(&identity),
        coverage: None,
        path,
    };
    plan(
        &sources,
        &PlanRequest {
            target: &target,
            backup,
            snapshot: false,
        },
    )
    .map(|p| {
        format!(
            "{} through {}",
            p.backup.backup_id,
            p.wal_through.unwrap_or_default()
        )
    })
}

#[test]
fn time_targets_use_the_newest_backup_that_ended_before_them() {
    let (backups, index) = fixture();
    let path = TimelinePath::new(1, &[]);
    assert_eq!(
        run(&backups, &index, &path, RecoveryTarget::Time(at(22)), None),
        Ok("A through 00000001000000000000000A".into())
    );
    assert_eq!(
        run(&backups, &index, &path, RecoveryTarget::Time(at(31)), None),
        Ok("B through 00000001000000000000000A".into())
    );
    // An explicit older backup replays more WAL.
    assert_eq!(
        run(
            &backups,
            &index,
            &path,
            RecoveryTarget::Time(at(31)),
            Some("A")
        ),
        Ok("A through 00000001000000000000000A".into())
    );
    let err = run(
        &backups,
        &index,
        &path,
        RecoveryTarget::Time(at(31)),
        Some("latest"),
    )
    .expect("B ended before minute 31");
    assert_eq!(err, "B through 00000001000000000000000A");
}

#[test]
fn targets_outside_the_window_name_it() {
    let (backups, index) = fixture();
    let path = TimelinePath::new(1, &[]);
    for target in [RecoveryTarget::Time(at(5)), RecoveryTarget::Time(at(51))] {
        let err = run(&backups, &index, &path, target, None).expect_err("outside");
        assert!(matches!(err, PlanError::OutsideWindow { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("is 1970-01-01 00:10:00 UTC (LSN 0/2000100) to 1970-01-01 00:50:00 UTC (LSN 0/B000000)"),
            "{text}"
        );
    }
    let err = run(
        &backups,
        &index,
        &path,
        RecoveryTarget::Lsn(0xB000001),
        None,
    )
    .expect_err("after the archive");
    assert!(matches!(err, PlanError::OutsideWindow { .. }), "{err}");
    assert_eq!(
        run(
            &backups,
            &index,
            &path,
            RecoveryTarget::Lsn(0x8000000),
            None
        ),
        Ok("B through 000000010000000000000008".into())
    );
}

#[test]
fn a_missing_segment_before_the_target_stops_the_restore() {
    let (backups, mut index) = fixture();
    index.segments.remove(&(1, 4));
    let path = TimelinePath::new(1, &[]);
    let err = run(&backups, &index, &path, RecoveryTarget::Time(at(27)), None).expect_err("gap");
    assert_eq!(
        err,
        PlanError::MissingSegment {
            segment: "000000010000000000000004".into(),
            backup: "A".into(),
            target: "time 1970-01-01 00:27:00 UTC".into(),
        }
    );
    // After backup B the archive is whole: later targets still work, and the window starts
    // at B.
    assert!(run(&backups, &index, &path, RecoveryTarget::Time(at(45)), None).is_ok());
    assert!(run(&backups, &index, &path, RecoveryTarget::Latest, None).is_ok());
    let refs: Vec<&Manifest> = backups.iter().collect();
    let sources = Sources {
        backups: &refs,
        index: Some(&index),
        identity: None,
        coverage: None,
        path: &path,
    };
    assert_eq!(window(&sources).from, Some((at(30), 6 * SEG + 0x100)));
    // With the gap after B, latest cannot be reached; a named point only warns.
    index.segments.remove(&(1, 8));
    assert!(matches!(
        run(&backups, &index, &path, RecoveryTarget::Latest, None),
        Err(PlanError::MissingSegment { .. })
    ));
    let refs: Vec<&Manifest> = backups.iter().collect();
    let sources = Sources {
        backups: &refs,
        index: Some(&index),
        identity: None,
        coverage: None,
        path: &path,
    };
    let target = RecoveryTarget::Name("before upgrade".into());
    let plan = plan(
        &sources,
        &PlanRequest {
            target: &target,
            backup: Some("B"),
            snapshot: false,
        },
    )
    .expect("plan");
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
}

#[test]
fn xid_and_name_targets_need_a_backup() {
    let (backups, index) = fixture();
    let path = TimelinePath::new(1, &[]);
    let err = run(
        &backups,
        &index,
        &path,
        RecoveryTarget::Xid("1234".into()),
        None,
    )
    .expect_err("needs --backup");
    assert!(err.to_string().contains("needs --backup"), "{err}");
    assert!(
        run(
            &backups,
            &index,
            &path,
            RecoveryTarget::Xid("1234".into()),
            Some("A")
        )
        .is_ok()
    );
    let err = run(
        &backups,
        &index,
        &path,
        RecoveryTarget::Immediate,
        Some("C"),
    )
    .expect_err("no such backup");
    assert!(
        err.to_string().contains("no complete physical backup C"),
        "{err}"
    );
}

#[test]
fn timeline_paths_decide_which_backups_and_segments_count() {
    // Timeline 2 branched off in segment 7; timeline 1 went on to segment 10.
    let backups = vec![
        backup("A", 1, 2, 10),
        backup("B", 1, 8, 40),
        backup("C", 2, 9, 45),
    ];
    let mut segments: Vec<(u32, u64, i64)> =
        (2..=10).map(|s| (1, s, 10 + 5 * (s as i64 - 2))).collect();
    segments.extend([(2, 7, 41), (2, 8, 42), (2, 9, 43), (2, 10, -44)]);
    let index = index(&segments, &[2]);
    let path = TimelinePath::new(
        2,
        &[HistoryEntry {
            parent: 1,
            switch_lsn: 7 * SEG + 0x500,
        }],
    );
    assert_eq!(index.latest_timeline(), 2);
    // B is on timeline 1 after the branch: not usable for timeline 2.
    assert_eq!(
        run(&backups, &index, &path, RecoveryTarget::Time(at(42)), None),
        Ok("A through 00000002000000000000000A".into())
    );
    let err = run(
        &backups,
        &index,
        &path,
        RecoveryTarget::Time(at(42)),
        Some("B"),
    )
    .expect_err("B is not on the path");
    assert!(
        err.to_string().contains("not on the history of timeline 2"),
        "{err}"
    );
    // The partial copy of the last segment counts.
    assert_eq!(
        run(&backups, &index, &path, RecoveryTarget::Latest, None),
        Ok("C through 00000002000000000000000A".into())
    );
}

#[test]
fn backups_of_another_cluster_are_refused() {
    let (mut backups, index) = fixture();
    backups[1].system_identifier = Some("7".into());
    let path = TimelinePath::new(1, &[]);
    let err = run(&backups, &index, &path, RecoveryTarget::Latest, None).expect_err("other");
    assert!(matches!(err, PlanError::Mismatch(_)), "{err}");
}

#[test]
fn the_archivers_coverage_record_extends_the_window_only_over_stored_wal() {
    let (backups, index) = fixture();
    let refs: Vec<&Manifest> = backups.iter().collect();
    let path = TimelinePath::new(1, &[]);
    let record = |segno: u64, minute: i64| ArchiveCoverage {
        timeline: 1,
        lsn: format_lsn(segno * SEG + 0x200),
        covers: at(minute),
    };
    let to = |coverage: Option<&ArchiveCoverage>| {
        window(&Sources {
            backups: &refs,
            index: Some(&index),
            identity: None,
            coverage,
            path: &path,
        })
        .to
        .map(|(t, _)| t)
    };
    assert_eq!(to(None), Some(at(50)));
    // An idle server: segment 10 is the last, and the archiver says it covers minute 70.
    assert_eq!(to(Some(&record(10, 70))), Some(at(70)));
    // A record naming WAL that is not stored (segment 12) says nothing.
    assert_eq!(to(Some(&record(12, 90))), Some(at(50)));
}
