//! What a snapshot's copy says of itself: its control file, read with `pg_controldata`
//! (cluster, timeline, where recovery starts), and where the last whole WAL record it holds
//! starts, found with `pg_waldump`.

use std::path::Path;

use jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    agent::{AgentError, process::PgBin},
    postgres::parse_lsn,
    repository::format_lsn,
};

/// What a copy's `pg_control` says (`pg_controldata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Control {
    /// `Database system identifier`.
    pub system_identifier: String,
    /// `Database cluster state`: `shut down` for an offline copy.
    pub state: String,
    /// `Latest checkpoint's TimeLineID`.
    pub timeline: u32,
    /// `Latest checkpoint's REDO location`: where recovery starts.
    pub redo: u64,
    /// `Time of latest checkpoint`.
    pub checkpoint_time: Timestamp,
    /// `Bytes per WAL segment`.
    pub segment_size: u64,
}

/// Reads the copy's `pg_control` with `pg_controldata`.
pub(crate) async fn read_control(pg_bin: &PgBin, pgdata: &Path) -> Result<Control, AgentError> {
    let out = crate::agent::process::tool_command(pg_bin.program("pg_controldata"))
        .arg(pgdata)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| AgentError::Io {
            path: pg_bin.program("pg_controldata").display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AgentError::Invalid(format!(
            "pg_controldata cannot read the control file of {}: {}",
            pgdata.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_control(&String::from_utf8_lossy(&out.stdout)).map_err(|why| {
        AgentError::Corrupt(format!(
            "the control file of {} is not what PostgreSQL writes: {why}",
            pgdata.display()
        ))
    })
}

pub(super) fn parse_control(text: &str) -> Result<Control, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("no {name:?}"))
    };
    let number = |name: &str| {
        field(name)?
            .parse::<u64>()
            .map_err(|e| format!("{name:?}: {e}"))
    };
    let lsn = |name: &str| {
        let value = field(name)?;
        parse_lsn(value).ok_or_else(|| format!("{name:?} {value:?} is not a WAL location"))
    };
    let time = field("Time of latest checkpoint")?;
    // `Sat Dec  5 21:32:00 2026` in the C locale and UTC.
    let words: Vec<&str> = time.split_whitespace().collect();
    let checkpoint_time = jiff::fmt::strtime::parse(
        "%b %d %H:%M:%S %Y",
        words.get(1..).unwrap_or_default().join(" "),
    )
    .and_then(|t| t.to_datetime())
    .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
    .map(|t| t.timestamp())
    .map_err(|e| format!("time of latest checkpoint {time:?}: {e}"))?;
    Ok(Control {
        system_identifier: field("Database system identifier")?.to_string(),
        state: field("Database cluster state")?.to_string(),
        timeline: u32::try_from(number("Latest checkpoint's TimeLineID")?)
            .map_err(|e| e.to_string())?,
        redo: lsn("Latest checkpoint's REDO location")?,
        checkpoint_time,
        segment_size: number("Bytes per WAL segment")?,
    })
}

/// Where the last valid WAL record in the copy's `pg_wal` starts, reading from the
/// checkpoint's REDO location to wherever the WAL stops being whole.
pub(super) async fn last_local_record(
    pg_bin: &PgBin,
    pgdata: &Path,
    control: &Control,
) -> Result<u64, AgentError> {
    let program = pg_bin.program("pg_waldump");
    let mut child = crate::agent::process::tool_command(&program)
        .arg("--path")
        .arg(pgdata.join("pg_wal"))
        .arg("--start")
        .arg(format_lsn(control.redo))
        .arg("--timeline")
        .arg(control.timeline.to_string())
        .env("LC_ALL", "C")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| AgentError::Io {
            path: program.display().to_string(),
            source,
        })?;
    let mut last = None;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(lsn) = record_start(&line) {
                last = Some(lsn);
            }
        }
    }
    // It ends with an error where the WAL stops being whole: that is expected.
    let _ = child.wait().await;
    last.ok_or_else(|| {
        AgentError::Corrupt(format!(
            "the WAL in {} holds no valid record from the checkpoint's REDO location {} on timeline {}: the copy cannot be recovered",
            pgdata.join("pg_wal").display(),
            format_lsn(control.redo),
            control.timeline
        ))
    })
}

/// The `lsn: 0/01549E90,` of a `pg_waldump` record line.
pub(super) fn record_start(line: &str) -> Option<u64> {
    let rest = line.split("lsn: ").nth(1)?;
    parse_lsn(rest.split([',', ' ']).next()?)
}
