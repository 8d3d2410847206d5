//! The files pg_dump closes in its dump directory (inotify `IN_CLOSE_WRITE`), and pg_dump
//! paused (SIGSTOP, SIGCONT) while more than the scratch limit waits there for the
//! repository. Events are read on a thread of its own, so a pause follows a close within
//! moments even while the stream is busy storing a large file.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use rustix::{fs::inotify, process::Signal};
use tokio::sync::mpsc;

use super::dump_directory::io_error;
use crate::agent::AgentError;

/// A dump directory being watched, before pg_dump starts (so no close is missed).
pub(super) struct Watch {
    fd: OwnedFd,
    dir: PathBuf,
}

impl Watch {
    /// Watches `dir`; `None` (with a warning: the dump is then stored once pg_dump is done,
    /// and needs room for all of it) where inotify is not available.
    pub(super) fn new(dir: &Path) -> Option<Self> {
        let watched = inotify::init(inotify::CreateFlags::CLOEXEC).and_then(|fd| {
            inotify::add_watch(&fd, dir, inotify::WatchFlags::CLOSE_WRITE)?;
            Ok(fd)
        });
        match watched {
            Ok(fd) => Some(Self {
                fd,
                dir: dir.to_path_buf(),
            }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the dump directory (inotify): the dump is stored once pg_dump is done, and needs room for all of it");
                None
            }
        }
    }

    /// Reports closes from now on, pausing `leader` (pg_dump) and the workers it forked
    /// whenever the directory holds more than `limit` bytes after one.
    pub(super) fn start(self, leader: Option<u32>, limit: u64) -> Closes {
        let (sender, receiver) = mpsc::unbounded_channel();
        let paused: Arc<Mutex<Vec<u32>>> = Arc::default();
        let pauses = Arc::new(AtomicU32::new(0));
        let (thread_paused, thread_pauses) = (paused.clone(), pauses.clone());
        std::thread::spawn(move || {
            use std::os::unix::ffi::OsStrExt;
            let mut buf = vec![std::mem::MaybeUninit::uninit(); 64 * 1024];
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            while let Ok(event) = reader.next() {
                if event.events().contains(inotify::ReadFlags::IGNORED) {
                    break; // the directory is gone
                }
                if let Some(name) = event.file_name() {
                    let name = std::ffi::OsStr::from_bytes(name.to_bytes()).to_os_string();
                    if sender.send(name).is_err() {
                        break;
                    }
                }
                // Sent before pausing: the reader wakes for it and resumes pg_dump.
                if reader.is_buffer_empty() && bytes_on_disk(&self.dir) > limit {
                    let mut paused = thread_paused.lock().unwrap_or_else(|e| e.into_inner());
                    if paused.is_empty()
                        && let Some(pids) = leader.and_then(processes)
                    {
                        signal_all(&pids, Signal::STOP);
                        *paused = pids;
                        thread_pauses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Closes {
            receiver,
            paused,
            pauses,
        }
    }
}

/// The files closed in a watched directory.
pub(super) struct Closes {
    receiver: mpsc::UnboundedReceiver<OsString>,
    /// pg_dump's processes while they are paused.
    paused: Arc<Mutex<Vec<u32>>>,
    pauses: Arc<AtomicU32>,
}

impl Closes {
    /// The names of the files closed since the last call, at least one.
    pub(super) async fn next(&mut self) -> Result<Vec<OsString>, AgentError> {
        let first = self.receiver.recv().await.ok_or_else(|| {
            AgentError::Invalid("the dump directory went away while pg_dump wrote it".into())
        })?;
        let mut names = vec![first];
        while let Ok(name) = self.receiver.try_recv() {
            names.push(name);
        }
        Ok(names)
    }

    /// Every file reported so far is stored: pg_dump goes on when it was paused, unless
    /// more closes wait (their pause is lifted once they are stored).
    pub(super) fn caught_up(&mut self) {
        if self.receiver.is_empty() {
            self.resume();
        }
    }

    /// How often pg_dump was paused.
    pub(super) fn pauses(&self) -> u32 {
        self.pauses.load(Ordering::Relaxed)
    }

    fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        signal_all(&paused, Signal::CONT);
        paused.clear();
    }
}

impl Drop for Closes {
    /// pg_dump is never left paused.
    fn drop(&mut self) {
        self.resume();
    }
}

/// The files in `dir` (each not stored yet), with their sizes.
pub(super) fn on_disk(dir: &Path) -> Result<BTreeMap<OsString, u64>, AgentError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(io_error(dir)(err)),
    };
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let size = entry.metadata().map_or(0, |m| m.len());
        files.insert(entry.file_name(), size);
    }
    Ok(files)
}

fn bytes_on_disk(dir: &Path) -> u64 {
    on_disk(dir).map_or(0, |files| files.values().sum())
}

fn signal_all(pids: &[u32], signal: Signal) {
    for pid in pids {
        let pid = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // A process that has exited needs neither.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// A process and the processes it forked; `None` once it is gone.
fn processes(leader: u32) -> Option<Vec<u32>> {
    parent_of(leader)?;
    let mut pids = vec![leader];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(pid) = pid
            && parent_of(pid) == Some(leader)
        {
            pids.push(pid);
        }
    }
    Some(pids)
}

/// The parent process of `pid`, from `/proc/<pid>/stat` (the field after the command name,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processes_a_process_forked_are_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pids = processes(std::process::id()).expect("readable");
        child.kill().expect("kill");
        let _ = child.wait();
        assert_eq!(pids[0], std::process::id());
        assert!(pids.contains(&child.id()), "{pids:?}");
        assert_eq!(processes(u32::MAX), None);
    }

    #[tokio::test]
    async fn files_closed_after_writing_are_reported_and_a_writer_past_the_limit_is_paused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = Watch::new(dir.path()).expect("inotify");
        let mut writer = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let mut closes = watch.start(Some(writer.id()), 10);
        let open = std::fs::File::create(dir.path().join("held.dat")).expect("create");
        std::fs::write(dir.path().join("1.dat"), b"more than ten bytes").expect("write");
        assert_eq!(
            closes.next().await.expect("closes"),
            [OsString::from("1.dat")]
        );
        let state = || {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", writer.id())).expect("stat");
            stat[stat.rfind(')').expect(")") + 2..]
                .chars()
                .next()
                .expect("state")
        };
        // The pause follows the report of the close.
        for _ in 0..200 {
            if closes.pauses() == 1 && state() == 'T' {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(closes.pauses(), 1);
        assert_eq!(state(), 'T', "stopped past the limit");
        closes.caught_up();
        assert_ne!(state(), 'T', "going on once caught up");
        drop(open);
        assert_eq!(
            closes.next().await.expect("closes"),
            [OsString::from("held.dat")]
        );
        drop(closes);
        writer.kill().expect("kill");
        let _ = writer.wait();
    }
}
