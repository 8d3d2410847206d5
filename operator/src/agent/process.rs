//! PostgreSQL's tools (and `tar`) as child processes: stdout streamed, stderr kept for the
//! error message, killed when dropped (a failed backup leaves no stray `pg_dump` behind);
//! and feeding a stored object into one while every byte of it is still checked.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
    task::JoinHandle,
};

use super::AgentError;

/// Set to `true` on SIGTERM or SIGINT (a pod being deleted, a node drained), when
/// `doing` is logged.
pub fn termination(doing: &'static str) -> Result<tokio::sync::watch::Receiver<bool>, AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let io_err = |source| AgentError::Io {
        path: "signal handler".into(),
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("{doing}");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// What only pgbackup itself reads from its environment: the repository's encryption key
/// and S3 credentials. PostgreSQL's tools never need them, so [`tool_command`] does not
/// pass them on; only a server in recovery gets them, for its `restore_command`
/// (`pgbackup wal-fetch`).
pub const AGENT_ONLY_ENV: [&str; 4] = [
    "PGBACKUP_ENCRYPTION_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// A command for a PostgreSQL tool, without [`AGENT_ONLY_ENV`] in its environment.
pub fn tool_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for name in AGENT_ONLY_ENV {
        command.env_remove(name);
    }
    command
}

/// Most stderr lines kept per tool.
const STDERR_LINES: usize = 200;

/// A tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Exit status.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
}

/// Where PostgreSQL's programs are: a directory, or `PATH` when `None`.
#[derive(Debug, Clone, Default)]
pub struct PgBin(pub Option<PathBuf>);

impl PgBin {
    /// The path of a program.
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.0 {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// A running tool.
#[derive(Debug)]
pub struct Tool {
    name: String,
    child: Child,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    stderr_task: Option<JoinHandle<()>>,
}

impl Tool {
    /// Starts `program args` with `env` added, stdout piped; stdin piped when `stdin`.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        stdin: bool,
    ) -> Result<Self, ToolError> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut command = tool_command(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ToolError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_task = child.stderr.take().map(|stderr| {
            let lines = stderr_lines.clone();
            let tool = name.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    tracing::debug!(tool = %tool, "{line}");
                    if let Ok(mut kept) = lines.lock() {
                        if kept.len() >= STDERR_LINES {
                            kept.remove(0);
                        }
                        kept.push(line);
                    }
                }
            })
        });
        Ok(Self {
            name,
            child,
            stderr_lines,
            stderr_task,
        })
    }

    /// The tool's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the tool at once and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The tool's stdout (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The tool's stdin (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Waits for the tool; an error carries its last stderr lines. Returns the stderr lines.
    pub async fn finish(mut self) -> Result<Vec<String>, ToolError> {
        let status = self.child.wait().await.map_err(|source| ToolError::Spawn {
            program: self.name.clone(),
            source,
        })?;
        if let Some(task) = self.stderr_task.take() {
            let _ = task.await;
        }
        let lines = self
            .stderr_lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        if status.success() {
            Ok(lines)
        } else {
            Err(ToolError::Failed {
                program: self.name.clone(),
                status: status.to_string(),
                stderr: telling_lines(&lines).join(" | "),
            })
        }
    }
}

/// The stderr lines that say why a tool failed: its last error lines (a statement it echoes
/// after an error tells less than the error), else its last lines.
fn telling_lines(lines: &[String]) -> Vec<&str> {
    let is_error = |l: &&String| ["error:", "ERROR:", "FATAL:"].iter().any(|e| l.contains(e));
    let errors: Vec<&String> = lines.iter().filter(is_error).collect();
    let chosen: Vec<&String> = if errors.is_empty() {
        lines.iter().collect()
    } else {
        errors
    };
    let skip = chosen.len().saturating_sub(5);
    chosen[skip..].iter().map(|l| l.as_str()).collect()
}

/// Reads an object to the end; its size and checksum are checked on the way.
pub async fn drain(mut reader: impl AsyncRead + Unpin) -> Result<(), AgentError> {
    tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
    Ok(())
}

/// Feeds an object to a tool's stdin, then reads the rest even when the tool stops reading
/// early, so that every byte is still checked. Fails when the object or the tool fails.
pub async fn pipe_into(
    mut reader: impl AsyncRead + Unpin,
    mut tool: Tool,
) -> Result<Vec<String>, AgentError> {
    let mut stdin = tool
        .take_stdin()
        .ok_or_else(|| AgentError::Invalid("tool has no stdin".into()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut tool_open = true;
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            Ok(n) => n,
            Err(err) => {
                // Stopped before its input ends: a tool that saw the end of a damaged
                // object could take what it read as whole (pg_restore would commit).
                tool.kill().await;
                return Err(AgentError::Corrupt(err.to_string()));
            }
        };
        if n == 0 {
            break;
        }
        if tool_open && stdin.write_all(&buf[..n]).await.is_err() {
            tool_open = false; // the tool has read what it needs
        }
    }
    drop(stdin);
    Ok(tool.finish().await?)
}
