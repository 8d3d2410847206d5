//! `pg_receivewal` streaming into the spool, as a child process the archiver can watch and
//! stop. Its log goes to ours; its last lines explain why it stopped.

use std::{
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
    task::JoinHandle,
};

use crate::agent::{AgentError, process::PgBin};

/// Lines of pg_receivewal's log kept for the error message.
const KEPT_LINES: usize = 20;

/// A running `pg_receivewal`.
#[derive(Debug)]
pub(super) struct Receiver {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    log_task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts streaming into `spool` (from where its newest `.partial` file begins).
    pub fn start(pg_bin: &PgBin, spool: &Path, env: &[(&str, String)]) -> Result<Self, AgentError> {
        let program = pg_bin.program("pg_receivewal");
        let mut child = crate::agent::process::tool_command(&program)
            .arg("--directory")
            .arg(spool)
            .args([
                "--no-loop",
                "--verbose",
                "--no-password",
                "--status-interval=10",
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| AgentError::Io {
                path: program.display().to_string(),
                source,
            })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log_task = child.stderr.take().map(|stderr| {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    tracing::info!(tool = "pg_receivewal", "{line}");
                    if let Ok(mut kept) = lines.lock() {
                        if kept.len() >= KEPT_LINES {
                            kept.remove(0);
                        }
                        kept.push(line);
                    }
                }
            })
        });
        Ok(Self {
            child,
            lines,
            log_task,
        })
    }

    /// Waits until it exits; returns why, in its own words.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        if let Some(task) = self.log_task.take() {
            let _ = task.await;
        }
        let tail = self
            .lines
            .lock()
            .map(|l| {
                l.iter()
                    .rev()
                    .take(3)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default();
        match status {
            Ok(status) => format!("pg_receivewal stopped ({status}): {tail}"),
            Err(err) => format!("pg_receivewal: {err}"),
        }
    }

    /// Lets it take what the server still sends, up to `grace`, then stops it. A server
    /// that shuts down closes the other connections first and its WAL senders last, after
    /// they sent everything: killed at once, it would leave that tail unreceived.
    pub async fn finish(mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        if let Some(task) = self.log_task.take() {
            let _ = task.await;
        }
    }

    /// Stops it. Everything it received is in the spool already (written as received).
    pub async fn stop(self) {
        self.finish(Duration::ZERO).await;
    }
}
