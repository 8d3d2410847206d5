//! The database sessions of volume snapshots. `pg_backup_start`/`pg_backup_stop` are scoped
//! to one session, so the operator holds that session in a task of its own, keyed by the
//! VolumeSnapshotBackup's UID, across reconciles: the reconciler starts it, reads its state
//! and tells it to stop. A restarted operator has no sessions: the reconciler sees the
//! session gone and rolls the attempt back.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::{oneshot, watch};
use tokio_postgres::Client;

use crate::postgres::{
    BackupModeError, ConnectionError, PgConnection, ServerInfo, StoppedBackup, checkpoint,
    start_backup, stop_backup,
};

/// How often a session in backup mode checks that its connection is alive, and how long
/// the server may take to answer.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long leaving backup mode may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a session does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// Enter backup mode with this label and hold it until told to stop.
    Online {
        /// The backup label's `LABEL`.
        label: String,
    },
    /// Run `CHECKPOINT` and report where recovery from a crash-consistent copy starts.
    Checkpoint,
}

/// Where a session stands, as the reconciler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// No session for this object: never started here, ended, or the operator restarted.
    Absent,
    /// Connecting and entering backup mode (or checkpointing).
    Starting,
    /// In backup mode since `begin_lsn`.
    InBackup {
        /// Where the backup starts.
        begin_lsn: String,
        /// The server.
        server: ServerInfo,
    },
    /// The checkpoint is done.
    Checkpointed {
        /// Where recovery of a crash-consistent copy starts (`redo_lsn`).
        redo_lsn: String,
        /// The server's timeline.
        timeline: u32,
        /// The server.
        server: ServerInfo,
    },
    /// Leaving backup mode.
    Stopping,
    /// Backup mode left; the label and tablespace map to keep.
    Stopped(StoppedBackup),
    /// The session failed; backup mode (if it was entered) ended with it.
    Failed {
        /// `PascalCase` reason.
        reason: &'static str,
        /// What happened.
        message: String,
    },
}

/// Ends a session.
enum Command {
    /// Leave backup mode and report the label.
    Stop,
}

struct Entry {
    state: watch::Receiver<SessionState>,
    stop: Option<oneshot::Sender<Command>>,
    task: tokio::task::JoinHandle<()>,
}

/// The operator's sessions, by object UID.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.lock().len();
        f.debug_struct("Sessions").field("open", &count).finish()
    }
}

impl Sessions {
    /// The entries; a panic elsewhere while holding the lock leaves them usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of the session of `uid`.
    pub fn state(&self, uid: &str) -> SessionState {
        self.lock()
            .get(uid)
            .map_or(SessionState::Absent, |e| e.state.borrow().clone())
    }

    /// Starts a session for `uid` unless one is there. A session never holds backup mode
    /// longer than `max_hold` (the backup's deadline and then some), even if nothing tells
    /// it to stop — its object deleted without the finalizer, say.
    pub fn start(
        &self,
        uid: &str,
        connection: PgConnection,
        kind: SessionKind,
        max_hold: Duration,
    ) {
        let mut entries = self.lock();
        if entries.contains_key(uid) {
            return;
        }
        let (state_tx, state_rx) = watch::channel(SessionState::Starting);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(connection, kind, state_tx, stop_rx, max_hold));
        entries.insert(
            uid.to_string(),
            Entry {
                state: state_rx,
                stop: Some(stop_tx),
                task,
            },
        );
    }

    /// Tells the session of `uid` to leave backup mode; its state becomes `Stopped`.
    pub fn stop(&self, uid: &str) {
        if let Some(stop) = self.lock().get_mut(uid).and_then(|e| e.stop.take()) {
            let _ = stop.send(Command::Stop);
        }
    }

    /// Forgets the session of `uid`. One still in backup mode is ended by closing its
    /// connection, which makes the server abort the backup.
    pub fn end(&self, uid: &str) {
        let entry = self.lock().remove(uid);
        if let Some(entry) = entry {
            entry.task.abort();
        }
    }
}

async fn run(
    connection: PgConnection,
    kind: SessionKind,
    state: watch::Sender<SessionState>,
    stop: oneshot::Receiver<Command>,
    max_hold: Duration,
) {
    let next = match session(&connection, kind, &state, stop, max_hold).await {
        Ok(next) => next,
        Err(failure) => failure,
    };
    let _ = state.send(next);
}

/// Runs the session to its last state.
async fn session(
    connection: &PgConnection,
    kind: SessionKind,
    state: &watch::Sender<SessionState>,
    mut stop: oneshot::Receiver<Command>,
    max_hold: Duration,
) -> Result<SessionState, SessionState> {
    let client = connection.connect(None).await.map_err(connection_failed)?;
    let server = ServerInfo::query(&client)
        .await
        .map_err(|err| backup_mode_failed(err.into()))?;
    let label = match kind {
        SessionKind::Checkpoint => return checkpointed(&client, server).await,
        SessionKind::Online { label } => label,
    };
    let begin_lsn = start_backup(&client, &label, true)
        .await
        .map_err(backup_mode_failed)?;
    tracing::info!(target = %connection.target(), %begin_lsn, "in backup mode");
    let _ = state.send(SessionState::InBackup { begin_lsn, server });
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let give_up = tokio::time::sleep(max_hold);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            command = &mut stop => {
                if command.is_err() {
                    // The registry forgot us: closing the connection aborts the backup.
                    return Err(lost("the operator ended the session"));
                }
                break;
            }
            () = &mut give_up => {
                return Err(lost("nothing asked it to stop within the backup's deadline"));
            }
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(lost(&crate::agent::error_chain(&err))),
                    Err(_) => return Err(lost("the server stopped answering")),
                }
            }
        }
    }
    let _ = state.send(SessionState::Stopping);
    let stopped = tokio::time::timeout(STOP_TIMEOUT, stop_backup(&client))
        .await
        .map_err(|_| SessionState::Failed {
            reason: "BackupModeFailed",
            message: format!(
                "pg_backup_stop did not return within {} s",
                STOP_TIMEOUT.as_secs()
            ),
        })?
        .map_err(backup_mode_failed)?;
    tracing::info!(target = %connection.target(), end_lsn = %stopped.end_lsn, "backup mode left");
    Ok(SessionState::Stopped(stopped))
}

async fn checkpointed(client: &Client, server: ServerInfo) -> Result<SessionState, SessionState> {
    if server.in_recovery {
        return Err(backup_mode_failed(BackupModeError::InRecovery));
    }
    checkpoint(client).await.map_err(backup_mode_failed)?;
    let row = client
        .query_one(
            "SELECT redo_lsn::text, timeline_id FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .map_err(|err| SessionState::Failed {
            reason: "CheckpointFailed",
            message: format!(
                "reading the checkpoint: {}",
                crate::agent::error_chain(&err)
            ),
        })?;
    let timeline: i32 = row.get(1);
    Ok(SessionState::Checkpointed {
        redo_lsn: row.get(0),
        timeline: timeline as u32,
        server,
    })
}

fn lost(why: &str) -> SessionState {
    SessionState::Failed {
        reason: REASON_SESSION_LOST,
        message: format!("the database session holding backup mode ended: {why}"),
    }
}

/// The reason of a session that ended while holding backup mode.
pub const REASON_SESSION_LOST: &str = "SessionLost";
/// The reason of a server that could not be reached.
pub const REASON_UNREACHABLE: &str = "DatabaseUnreachable";

fn connection_failed(err: ConnectionError) -> SessionState {
    let reason = match &err {
        ConnectionError::Authentication { .. } => "DatabaseLoginFailed",
        ConnectionError::Tls(_) | ConnectionError::TlsHandshake { .. } => "DatabaseTlsFailed",
        ConnectionError::BadSslMode(_) => "InvalidSpec",
        _ => REASON_UNREACHABLE,
    };
    SessionState::Failed {
        reason,
        message: crate::agent::error_chain(&err),
    }
}

fn backup_mode_failed(err: BackupModeError) -> SessionState {
    match err {
        BackupModeError::InRecovery => SessionState::Failed {
            reason: "NotPrimary",
            message: "the server is a standby (pg_is_in_recovery() is true): snapshot the primary's volumes; set target.pod to the primary's pod".into(),
        },
        BackupModeError::Connection(err) => {
            let message = crate::agent::error_chain(&err);
            match err {
                ConnectionError::Query { .. } => SessionState::Failed {
                    reason: "BackupModeFailed",
                    message,
                },
                other => connection_failed(other),
            }
        }
        other => SessionState::Failed {
            reason: "BackupModeFailed",
            message: other.to_string(),
        },
    }
}
