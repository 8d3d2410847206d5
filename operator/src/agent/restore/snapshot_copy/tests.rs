//! Tests of reading a snapshot's copy (its control file, its WAL's last record) and of the
//! checks that refuse a copy that cannot be recovered, or a recovery that stopped too early.

use super::{
    control::{parse_control, record_start},
    *,
};
use jiff::Timestamp;

const CONTROLDATA: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7442101530187406372
Database cluster state:               in production
pg_control last modified:             Sat Dec  5 21:40:01 2026
Latest checkpoint location:           0/3000080
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's REDO WAL file:    000000010000000000000003
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Time of latest checkpoint:            Sat Dec  5 21:39:58 2026
Bytes per WAL segment:                16777216
";

#[test]
fn the_control_file_says_where_recovery_starts() {
    let control = parse_control(CONTROLDATA).expect("parsed");
    assert_eq!(control.system_identifier, "7442101530187406372");
    assert_eq!(control.state, "in production");
    assert_eq!(control.timeline, 1);
    assert_eq!(control.redo, 0x3000028);
    assert_eq!(control.segment_size, 16 << 20);
    assert_eq!(
        control.checkpoint_time,
        "2026-12-05T21:39:58Z".parse::<Timestamp>().expect("time")
    );
    let broken = CONTROLDATA.replace("Latest checkpoint's REDO location:", "REDO:");
    assert!(parse_control(&broken).is_err());
    let no_time = CONTROLDATA.replace("Sat Dec  5 21:39:58 2026", "");
    assert!(parse_control(&no_time).is_err());
}

#[test]
fn a_record_line_gives_where_the_record_starts() {
    let line = "rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/03000148, prev 0/03000110, desc: INSERT off 2 flags 0x00";
    assert_eq!(record_start(line), Some(0x3000148));
    assert_eq!(record_start("pg_waldump: error: error in WAL record"), None);
}

#[test]
fn a_copy_whose_wal_volume_was_not_taken_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("PG_VERSION"), "16\n").expect("version");
    assert!(check_is_copy(dir.path(), "a snapshot").is_ok());
    std::os::unix::fs::symlink("/nonexistent/wal", dir.path().join("pg_wal")).expect("link");
    let refused = check_is_copy(dir.path(), "a snapshot").expect_err("no WAL");
    assert!(refused.to_string().contains("includeVolumes"), "{refused}");
    let empty = tempfile::tempdir().expect("empty");
    assert!(check_is_copy(empty.path(), "a snapshot").is_err());
}

#[test]
fn recovery_must_replay_the_copys_last_record() {
    let control = parse_control(CONTROLDATA).expect("parsed");
    let base = base(&control, 0x3000148, None, "srv", "15").expect("base");
    assert_eq!(base.manifest.backup_id, UNRECORDED_ID);
    assert_eq!(base.manifest.end_lsn.as_deref(), Some("0/3000148"));
    assert!(check_consistent(Some("0/3000148"), false, &base).is_ok());
    assert!(check_consistent(Some("0/3100000"), true, &base).is_ok());
    let early = check_consistent(Some("0/3000110"), false, &base).expect_err("too early");
    assert!(
        early.to_string().contains("before the end of the WAL"),
        "{early}"
    );
    assert!(check_consistent(Some("0/3000148"), true, &base).is_err());
    assert!(check_consistent(Some("not a location"), false, &base).is_err());
    assert!(
        check_consistent(None, false, &base).is_ok(),
        "nothing to redo"
    );
}
