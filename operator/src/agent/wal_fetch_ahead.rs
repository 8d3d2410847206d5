//! Prefetching for `wal-fetch`: the segments after the one recovery asked for, fetched in
//! parallel into the prefetch directory by a process of its own (the same command with
//! `--prefetch-only`), so that the asking `wal-fetch` exits as soon as its own file is in
//! place. One prefetching process per directory at a time ([`WorkerLock`]); it gives up
//! after [`DEADLINE`]. It always exits 0 (see `main.rs`).

use std::path::Path;

use futures::StreamExt;

use super::worker_lock::{WorkerLock, start_worker};
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
        let lock = lock(self.dir);
        if std::fs::create_dir_all(self.dir).is_err() || !lock.take() {
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
        lock.release();
    }
}

/// Starts the prefetching process for `dir` with this command's own arguments (and
/// `--prefetch-only` right after `wal-fetch`), unless one is running. Best effort: without
/// it, recovery fetches each segment when it asks.
pub(super) fn start(dir: &Path) {
    if std::fs::create_dir_all(dir).is_err() || lock(dir).holder_alive() {
        return;
    }
    start_worker("wal-fetch", "--prefetch-only");
}

/// Waits up to `wait` for the prefetching process of `dir` to end (before the directory
/// is removed).
pub fn wait_for_prefetching(dir: &Path, wait: std::time::Duration) {
    lock(dir).wait_for_holder(wait);
}

fn lock(dir: &Path) -> WorkerLock {
    WorkerLock::new(dir, LOCK)
}
