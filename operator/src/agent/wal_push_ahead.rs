//! Storing ahead for `wal-push`, as an asynchronous archiver does: when PostgreSQL has
//! more than the asked segment ready (its archiving fell behind), a worker of its own (the
//! same command with `--ahead-only`) stores the ready files in parallel, oldest first, and
//! leaves an acknowledgement for each in `pg_wal/.pgbackup-push/` once it is durable in the
//! repository. The `archive_command` of a segment so acknowledged answers at once, without
//! a request to the store; one whose segment the worker is storing waits for its word.
//!
//! An acknowledgement is only taken for the file it was written for (inode, size,
//! modification time) and the repository and server it was stored in; anything the worker
//! could not store is left to the `archive_command` of that file, which stores it (or says
//! why not) itself. One worker per data directory ([`WorkerLock`]); it ends after
//! [`IDLE`] without work, or after [`DEADLINE`] (the next `archive_command` starts another).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use serde::{Deserialize, Serialize};

use super::{
    AgentError,
    worker_lock::{WorkerLock, start_worker},
};

/// The worker's directory, in `pg_wal` (whose files backups leave out).
pub const SPOOL_DIR: &str = ".pgbackup-push";

/// The worker's lock file.
const LOCK: &str = ".pushing";

/// How long the worker waits for more ready files before it ends.
const IDLE: Duration = Duration::from_secs(2);

/// The longest a worker works.
const DEADLINE: Duration = Duration::from_secs(600);

/// The longest an `archive_command` waits for the worker's word on its file before it
/// stores the file itself.
const WAIT: Duration = Duration::from_secs(60);

/// How long a worker just started may take to show up.
const START: Duration = Duration::from_secs(2);

/// How often a waiting `archive_command` looks for the worker's word.
const POLL: Duration = Duration::from_millis(2);

/// The worker's word that a file is stored.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Acknowledgement {
    /// The repository and server it was stored in.
    stored_in: String,
    inode: u64,
    size: u64,
    modified_ns: i128,
    /// What `wal-push` says about it.
    summary: String,
}

/// The spool of one data directory, for one repository and server.
pub(super) struct Spool {
    pg_wal: PathBuf,
    dir: PathBuf,
    stored_in: String,
}

impl Spool {
    pub(super) fn new(pgdata: &Path, stored_in: String) -> Self {
        let pg_wal = pgdata.join("pg_wal");
        let dir = pg_wal.join(SPOOL_DIR);
        Self {
            pg_wal,
            dir,
            stored_in,
        }
    }

    fn lock(&self) -> WorkerLock {
        WorkerLock::new(&self.dir, LOCK)
    }

    /// What the worker says about `name` (at `path`) once it has said it: the summary when
    /// it stored that very file, `None` when the caller must store it: nothing else is
    /// ready (the worker would only add a process), the worker failed on it, ended without
    /// it or did not answer in time. Starts the worker when more than `name` is ready and
    /// none runs.
    pub(super) async fn answer(&self, name: &str, path: &Path) -> Option<String> {
        if let Some(summary) = self.acknowledged(name, path) {
            return Some(summary);
        }
        let lock = self.lock();
        let asked = Instant::now();
        let mut started = None;
        if !lock.holder_alive() {
            if !self.ready().iter().any(|ready| ready != name)
                || std::fs::create_dir_all(&self.dir).is_err()
            {
                return None;
            }
            start_worker("wal-push", "--ahead-only");
            started = Some(asked);
        }
        loop {
            if let Some(summary) = self.acknowledged(name, path) {
                return Some(summary);
            }
            let failed = self.dir.join(format!("{name}.failed"));
            if failed.exists() {
                let _ = std::fs::remove_file(failed);
                return None;
            }
            let starting = started.is_some_and(|at| at.elapsed() < START);
            if (!starting && !lock.holder_alive()) || asked.elapsed() > WAIT {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The summary of the worker's acknowledgement of the file at `path`, taken (removed)
    /// when it is for that very file and repository.
    fn acknowledged(&self, name: &str, path: &Path) -> Option<String> {
        let ack_path = self.dir.join(format!("{name}.ok"));
        let ack: Acknowledgement = serde_json::from_slice(&std::fs::read(&ack_path).ok()?).ok()?;
        let _ = std::fs::remove_file(&ack_path);
        let now = self.describe(path, String::new())?;
        let same = ack.stored_in == now.stored_in
            && ack.inode == now.inode
            && ack.size == now.size
            && ack.modified_ns == now.modified_ns;
        same.then(|| format!("{} (stored ahead)", ack.summary))
    }

    /// The acknowledgement of the file at `path` as it is now.
    fn describe(&self, path: &Path, summary: String) -> Option<Acknowledgement> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Acknowledgement {
            stored_in: self.stored_in.clone(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            summary,
        })
    }

    /// The files PostgreSQL has marked ready for archiving, oldest first.
    fn ready(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.pg_wal.join("archive_status")) else {
            return Vec::new();
        };
        let mut ready: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".ready").map(str::to_string)
            })
            .collect();
        ready.sort();
        ready
    }

    /// The worker: stores the ready files, `parallel` at a time, with `push` (the same
    /// checks and store as `wal-push`), and acknowledges each once stored. Returns how
    /// many it stored; 0 at once when another worker runs.
    pub(super) async fn work<F, Fut>(&self, parallel: usize, push: F) -> usize
    where
        F: Fn(PathBuf, String) -> Fut,
        Fut: Future<Output = Result<String, AgentError>>,
    {
        let lock = self.lock();
        if std::fs::create_dir_all(&self.dir).is_err() || !lock.take() {
            return 0;
        }
        self.forget_archived();
        let began = Instant::now();
        let mut idle_since = Instant::now();
        let mut taken = HashSet::new();
        let mut running = FuturesUnordered::new();
        let mut stored = 0;
        loop {
            if running.len() < parallel && began.elapsed() < DEADLINE {
                for name in self.ready() {
                    if running.len() >= parallel {
                        break;
                    }
                    if taken.contains(&name) || self.dir.join(format!("{name}.ok")).exists() {
                        continue;
                    }
                    taken.insert(name.clone());
                    let _ = std::fs::remove_file(self.dir.join(format!("{name}.failed")));
                    let path = self.pg_wal.join(&name);
                    // Described before it is read: a file replaced meanwhile is not taken.
                    let before = self.describe(&path, String::new());
                    let pushed = push(path, name.clone());
                    running.push(async move { (name, before, pushed.await) });
                }
            }
            let Some((name, before, result)) = running.next().await else {
                if idle_since.elapsed() > IDLE || began.elapsed() > DEADLINE {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            idle_since = Instant::now();
            match (result, before) {
                (Ok(summary), Some(before)) => {
                    stored += 1;
                    self.acknowledge(&name, Acknowledgement { summary, ..before });
                }
                (Ok(_), None) => {}
                (Err(err), _) => {
                    tracing::warn!("storing {name} ahead: {err}");
                    let _ =
                        std::fs::write(self.dir.join(format!("{name}.failed")), err.to_string());
                }
            }
        }
        lock.release();
        stored
    }

    /// Writes an acknowledgement whole (temporary file, then rename) or not at all.
    fn acknowledge(&self, name: &str, ack: Acknowledgement) {
        let Ok(bytes) = serde_json::to_vec(&ack) else {
            return;
        };
        let temp = self.dir.join(format!(".{name}.ok.{}", std::process::id()));
        if std::fs::write(&temp, bytes).is_ok() {
            let _ = std::fs::rename(&temp, self.dir.join(format!("{name}.ok")));
        }
    }

    /// Removes the word on files that are gone from `pg_wal` (archived and recycled) and
    /// temporary files a killed worker left.
    fn forget_archived(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = name
                .strip_suffix(".ok")
                .or_else(|| name.strip_suffix(".failed"));
            let stale = match file {
                Some(file) if !file.starts_with('.') => !self.pg_wal.join(file).exists(),
                _ => name.starts_with('.') && name != LOCK,
            };
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
