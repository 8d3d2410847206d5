//! Prefetching for `wal-fetch`: the segments after the one recovery asked for, fetched in
//! parallel into the prefetch directory by a process of its own (the same command with
//! `--prefetch-only`), so that the asking `wal-fetch` exits as soon as its own file is in
//! place. One prefetching process per directory at a time: the process itself takes a
//! lock file holding its process id (taken over when that process is gone), and gives up
//! after [`DEADLINE`]. It always exits 0 (see `main.rs`).

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use futures::StreamExt;

use crate::repository::{ObjectStore, WalArchive, WalFile, WalFileKind};

/// The lock file of the prefetching process.
const LOCK: &str = ".prefetching";

/// The longest a prefetching process works (a download that hangs ends with it).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The segments after the requested one.
pub(super) struct Ahead<'a> {
    pub dir: &'a Path,
    pub timeline: u32,
    pub from: u64,
    pub count: u64,
    pub segment_size: u64,
}

impl Ahead<'_> {
    fn wanted(&self) -> impl Iterator<Item = WalFile> + '_ {
        (self.from..self.from + self.count)
            .map(|segno| WalFile::segment(self.timeline, segno))
            .filter(|f| !self.dir.join(f.name(self.segment_size)).exists())
    }

    /// Whether every segment of the range is prefetched already.
    pub fn all_here(&self) -> bool {
        self.wanted().next().is_none()
    }

    /// Downloads the complete ones among them that are archived and not yet here, in
    /// parallel, then lets go of the lock. Failures are left for the request of that
    /// segment to report.
    pub async fn fetch<S: ObjectStore>(&self, archive: &WalArchive<'_, S>) {
        if std::fs::create_dir_all(self.dir).is_err() || !take_lock(self.dir) {
            return;
        }
        let downloads = futures::stream::iter(self.wanted())
            .map(|file| async move {
                // Only complete segments: a partial copy may be superseded before use.
                let object = archive.find(&file, self.segment_size).await.ok()?;
                if object.file.kind != WalFileKind::Segment {
                    return None;
                }
                let path = self.dir.join(&object.name);
                if let Err(err) = archive.download(&object, &path).await {
                    tracing::debug!("prefetching {}: {err}", object.name);
                }
                Some(())
            })
            .buffer_unordered(self.count.max(1) as usize)
            .collect::<Vec<_>>();
        let _ = tokio::time::timeout(DEADLINE, downloads).await;
        release(self.dir);
    }
}

/// Starts the prefetching process for `dir` with this command's own arguments (and
/// `--prefetch-only` right after `wal-fetch`), unless one is running. Best effort: without
/// it, recovery fetches each segment when it asks.
pub(super) fn start(dir: &Path) {
    if std::fs::create_dir_all(dir).is_err() || holder_alive(dir) {
        return;
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(at) = args.iter().position(|a| a == "wal-fetch") else {
        return;
    };
    args.insert(at + 1, "--prefetch-only".into());
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in recovery's process group: it must not take signals meant for it.
            .process_group(0)
            .spawn()
    });
    if let Err(err) = spawned {
        tracing::debug!("cannot start prefetching: {err}");
    }
}

/// Whether a live process holds the lock of `dir`.
fn holder_alive(dir: &Path) -> bool {
    std::fs::read_to_string(lock_path(dir))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Waits up to `wait` for the prefetching process of `dir` to end (before the directory
/// is removed).
pub fn wait_for_prefetching(dir: &Path, wait: std::time::Duration) {
    let until = std::time::Instant::now() + wait;
    while holder_alive(dir) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK)
}

/// Takes the lock of `dir`: creates it, or takes it over from a process that is gone.
fn take_lock(dir: &Path) -> bool {
    let path = lock_path(dir);
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()))
            .is_ok()
    };
    if create() {
        return true;
    }
    if holder_alive(dir) {
        return false;
    }
    let _ = std::fs::remove_file(&path);
    create()
}

/// Lets go of the lock, if this process holds it.
fn release(dir: &Path) {
    let ours = std::fs::read_to_string(lock_path(dir))
        .is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(lock_path(dir));
    }
}
