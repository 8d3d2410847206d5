//! How far a segment still being written holds whole, checksummed WAL records: where
//! `pg_waldump` stops reading it. Only WAL up to there counts as stored when the partial
//! segment's coverage in time is worked out.

use std::path::Path;

use crate::{agent::process::PgBin, postgres::parse_lsn};

/// The end of the last valid record in the segment file `name` in `dir`, if `pg_waldump`
/// (of the server's major version) can tell.
pub(super) async fn valid_end(pg_bin: &PgBin, dir: &Path, name: &str) -> Option<u64> {
    let out = crate::agent::process::tool_command(pg_bin.program("pg_waldump"))
        .arg("--quiet")
        .arg("--path")
        .arg(dir)
        .arg(name)
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let end = end_from_error(&stderr);
    if end.is_none() {
        tracing::debug!(
            "pg_waldump could not tell where {name} ends: {}",
            stderr.trim()
        );
    }
    end
}

/// `error in WAL record at A: invalid record length at B: …` — B is where the next record
/// was due, the exact end of the valid WAL. Any other error names only A, the start of the
/// last valid record, which is a safe lower bound.
fn end_from_error(stderr: &str) -> Option<u64> {
    let lsn_after = |marker: &str| {
        stderr
            .split(marker)
            .nth(1)?
            .split(|c: char| c == ':' || c.is_whitespace() || c == ',')
            .next()
            .and_then(parse_lsn)
    };
    lsn_after("invalid record length at ").or_else(|| lsn_after("error in WAL record at "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_where_the_valid_wal_ends() {
        let zero_length = "pg_waldump: error: error in WAL record at 0/15165D8: invalid record length at 0/1516770: wanted 24, got 0";
        assert_eq!(end_from_error(zero_length), Some(0x1516770));
        let torn = "pg_waldump: error: error in WAL record at 0/3017F00: invalid magic number 0000 in WAL segment 000000010000000000000003, LSN 0/3018000, offset 98304";
        assert_eq!(end_from_error(torn), Some(0x3017F00));
        assert_eq!(
            end_from_error("pg_waldump: error: could not open file"),
            None
        );
    }
}
