//! `restore --recover`: runs PostgreSQL on the restored data directory until recovery
//! reaches its target and promotes, then stops it cleanly and reports where it got to.
//! The server listens only on a socket in a private directory, archives nothing and takes
//! its recovery settings from the command line, so the configuration is left as restored.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use super::settings::{Settings, signal_recovery, without_target};
use crate::agent::{AgentError, process::PgBin};

/// Most server log lines kept for messages and parsing.
const LOG_LINES: usize = 400;

/// PostgreSQL's message when WAL ends before the target.
const TARGET_NOT_REACHED: &str = "recovery ended before configured recovery target was reached";

/// Where recovery ended.
#[derive(Debug, Clone, Default)]
pub(super) struct Reached {
    /// Where replay ended (`redo done at`).
    pub lsn: Option<String>,
    /// The timeline the server promoted to.
    pub timeline: Option<u32>,
    /// Commit time of the last replayed transaction.
    pub last_transaction: Option<String>,
    /// PostgreSQL's words on why it stopped.
    pub stop: Option<String>,
    /// WAL files fetched from the archive.
    pub files_restored: usize,
    /// A time target past the last commit in the archive: recovered to the end instead.
    pub replayed_to_end: bool,
}

/// Runs recovery to the target in `settings`. A time target inside the window with no
/// commit after it in the archive cannot be "reached" in PostgreSQL's sense; the state at
/// that time is then the end of the archived WAL, and recovery is run to it.
pub(super) async fn run(
    pgdata: &Path,
    pg_bin: &PgBin,
    settings: &Settings,
    time_target: bool,
) -> Result<Reached, AgentError> {
    signal_recovery(pgdata)?;
    let lines = match start(pgdata, pg_bin, settings).await? {
        Outcome::Promoted(lines) => lines,
        Outcome::NotReached(_) if time_target => {
            tracing::info!(
                "no transaction in the archive committed after the target time: recovering to the end of the archived WAL, which is the state at that time"
            );
            match start(pgdata, pg_bin, &without_target(settings)).await? {
                Outcome::Promoted(lines) => {
                    let mut reached = parse(&lines);
                    reached.replayed_to_end = true;
                    return finish(pgdata, reached);
                }
                Outcome::NotReached(lines) | Outcome::Failed(lines) => {
                    return Err(failed(&lines));
                }
            }
        }
        Outcome::NotReached(lines) | Outcome::Failed(lines) => return Err(failed(&lines)),
    };
    finish(pgdata, parse(&lines))
}

fn finish(pgdata: &Path, reached: Reached) -> Result<Reached, AgentError> {
    // What wal-fetch prefetched and recovery did not use, once its prefetching ended.
    let prefetched = pgdata
        .join("pg_wal")
        .join(crate::agent::wal_fetch::PREFETCH_DIR);
    crate::agent::wal_fetch::wait_for_prefetching(&prefetched, std::time::Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(prefetched);
    Ok(reached)
}

enum Outcome {
    /// Recovery reached its target and the server promoted (and has been stopped).
    Promoted(Vec<String>),
    /// The WAL ended before the target.
    NotReached(Vec<String>),
    /// The server stopped with an error.
    Failed(Vec<String>),
}

async fn start(pgdata: &Path, pg_bin: &PgBin, settings: &Settings) -> Result<Outcome, AgentError> {
    let sockets = tempfile::Builder::new()
        .prefix("pgbackup-recover-")
        .tempdir()
        .map_err(|source| AgentError::Io {
            path: "temporary socket directory".into(),
            source,
        })?;
    let mut command = recovery_command(pgdata, pg_bin, settings, sockets.path())?;
    let mut child = command.spawn().map_err(|source| AgentError::Io {
        path: pg_bin.program("postgres").display().to_string(),
        source,
    })?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let reader = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(read_log(stderr, lines.clone(), ready_tx)));
    let signal = pgdata.join("recovery.signal");
    let promoted = tokio::select! {
        status = child.wait() => {
            status.map_err(|source| AgentError::Io { path: "postgres".into(), source })?;
            false
        }
        Ok(_) = ready_rx.wait_for(|ready| *ready) => true,
        // Recovery ends by removing recovery.signal, whatever the log says.
        () = recovery_ended(&signal) => true,
    };
    if promoted && let Err(err) = stop(pgdata, pg_bin).await {
        let tail = lines.lock().map(|l| l.join(" | ")).unwrap_or_default();
        return Err(AgentError::Invalid(format!("{err}; server log: {tail}")));
    }
    if promoted {
        child.wait().await.map_err(|source| AgentError::Io {
            path: "postgres".into(),
            source,
        })?;
    }
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(if promoted {
        Outcome::Promoted(lines)
    } else if lines.iter().any(|l| l.contains(TARGET_NOT_REACHED)) {
        Outcome::NotReached(lines)
    } else {
        Outcome::Failed(lines)
    })
}

/// The `postgres` command that recovers `pgdata`: a private socket only, nothing archived,
/// the recovery settings on the command line, and a configuration of our own when the data
/// directory has none.
fn recovery_command(
    pgdata: &Path,
    pg_bin: &PgBin,
    settings: &Settings,
    sockets: &Path,
) -> Result<Command, AgentError> {
    let mut command = Command::new(pg_bin.program("postgres"));
    command.arg("-D").arg(pgdata);
    let fixed = [
        ("listen_addresses", String::new()),
        (
            "unix_socket_directories",
            sockets.to_string_lossy().into_owned(),
        ),
        ("archive_mode", "off".into()),
        ("hot_standby", "off".into()),
        // Only a private socket listens: certificates the server names, which may live
        // outside PGDATA (mounted from a Secret), are not needed to recover.
        ("ssl", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_line_prefix", String::new()),
        // The messages this module reads, untranslated and not filtered away.
        ("lc_messages", "C".into()),
        ("log_min_messages", "warning".into()),
    ];
    let code_off = super::RESTORED_CODE_OFF.map(|(name, value)| (name, value.to_string()));
    for (name, value) in fixed.iter().chain(&code_off).chain(settings.iter()) {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    // Images that keep the configuration outside PGDATA (Bitnami's) restore a data
    // directory without it: recover with a configuration of our own, left outside.
    if !pgdata.join("postgresql.conf").exists() {
        for (name, file, text) in [
            ("config_file", "postgresql.conf", ""),
            ("hba_file", "pg_hba.conf", "local all all trust\n"),
            ("ident_file", "pg_ident.conf", ""),
        ] {
            let path = sockets.join(file);
            std::fs::write(&path, text).map_err(|source| AgentError::Io {
                path: path.display().to_string(),
                source,
            })?;
            command.arg("-c").arg(format!("{name}={}", path.display()));
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(command)
}

/// Reads the server's log: keeps its last lines, says how far recovery got every 10 s, and
/// tells when the server accepts connections.
async fn read_log(
    stderr: tokio::process::ChildStderr,
    lines: Arc<Mutex<Vec<String>>>,
    ready_tx: tokio::sync::watch::Sender<bool>,
) {
    let mut stderr = BufReader::new(stderr).lines();
    let mut restored = 0usize;
    let mut last_report = tokio::time::Instant::now();
    while let Ok(Some(line)) = stderr.next_line().await {
        tracing::debug!(target: "postgres", "{line}");
        if line.contains("restored log file") {
            restored += 1;
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = tokio::time::Instant::now();
                tracing::info!("recovery: {restored} WAL files replayed; {line}");
            }
        }
        if line.contains("database system is ready to accept connections") {
            let _ = ready_tx.send(true);
        }
        if let Ok(mut kept) = lines.lock() {
            if kept.len() >= LOG_LINES {
                kept.remove(0);
            }
            kept.push(line);
        }
    }
}

/// Resolves once `recovery.signal` is gone (and stays gone, so not before the server is up).
async fn recovery_ended(signal: &Path) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !signal.exists() {
            // Give the server the moment between ending recovery and accepting connections.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    }
}

/// Stops the server with a fast shutdown (a clean shutdown checkpoint).
async fn stop(pgdata: &Path, pg_bin: &PgBin) -> Result<(), AgentError> {
    let out = crate::agent::process::tool_command(pg_bin.program("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .args(["stop", "-m", "fast", "-w", "-t", "600"])
        .output()
        .await
        .map_err(|source| AgentError::Io {
            path: pg_bin.program("pg_ctl").display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(AgentError::Invalid(format!(
            "pg_ctl stop failed after recovery: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn failed(lines: &[String]) -> AgentError {
    let important: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FATAL") || l.starts_with("ERROR") || l.starts_with("PANIC"))
        .map(String::as_str)
        .collect();
    let shown = if important.is_empty() {
        lines
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(String::as_str)
            .collect()
    } else {
        important
    };
    AgentError::Invalid(format!(
        "PostgreSQL did not complete recovery: {}",
        shown.join(" | ")
    ))
}

/// What the server log says about where recovery ended.
fn parse(lines: &[String]) -> Reached {
    let after = |marker: &str| {
        lines.iter().rev().find_map(|l| {
            l.split_once(marker)
                .map(|(_, rest)| rest.trim().to_string())
        })
    };
    Reached {
        lsn: after("redo done at ").and_then(|r| r.split_whitespace().next().map(String::from)),
        timeline: after("selected new timeline ID: ")
            .and_then(|r| r.split_whitespace().next().and_then(|t| t.parse().ok())),
        last_transaction: after("last completed transaction was at log time "),
        stop: lines.iter().rev().find_map(|l| {
            l.split_once("recovery stopping ")
                .map(|(_, r)| format!("recovery stopping {}", r.trim()))
        }),
        files_restored: lines
            .iter()
            .filter(|l| l.contains("restored log file"))
            .count(),
        replayed_to_end: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_where_recovery_ended_from_the_log() {
        let log = [
            "LOG:  starting point-in-time recovery to 2026-11-21 12:00:00+00",
            "LOG:  restored log file \"000000010000000000000003\" from archive",
            "LOG:  recovery stopping before commit of transaction 741, time 2026-11-21 12:00:02.5+00",
            "LOG:  redo done at 0/3000148 system usage: CPU: user: 0.00 s",
            "LOG:  last completed transaction was at log time 2026-11-21 11:59:58.1+00",
            "LOG:  selected new timeline ID: 2",
            "LOG:  database system is ready to accept connections",
        ]
        .map(String::from);
        let reached = parse(&log);
        assert_eq!(reached.lsn.as_deref(), Some("0/3000148"));
        assert_eq!(reached.timeline, Some(2));
        assert_eq!(
            reached.last_transaction.as_deref(),
            Some("2026-11-21 11:59:58.1+00")
        );
        assert_eq!(reached.files_restored, 1);
        assert!(
            reached
                .stop
                .as_deref()
                .is_some_and(|s| s.contains("transaction 741"))
        );
        let err = failed(&["LOG:  x".into(), format!("FATAL:  {TARGET_NOT_REACHED}")]);
        assert!(err.to_string().contains(TARGET_NOT_REACHED));
    }
}
