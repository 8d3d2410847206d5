//! One background worker per directory, started by a short-lived command and outliving it:
//! `wal-fetch`'s prefetching and `wal-push`'s storing ahead. The worker is the same command
//! run again with a flag of its own; it holds a lock file with its process id in its
//! directory, taken over when that process is gone.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The lock file `name` in a worker's directory.
pub(super) struct WorkerLock {
    path: PathBuf,
}

impl WorkerLock {
    pub(super) fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(name),
        }
    }

    /// Whether a live process holds the lock. A killed worker whose parent (the command
    /// that started it, still waiting for its word) has not reaped it is a zombie: gone.
    pub(super) fn holder_alive(&self) -> bool {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .is_some_and(|stat| running(&stat))
    }

    /// Takes the lock: creates it, or takes it over from a process that is gone.
    pub(super) fn take(&self) -> bool {
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(std::process::id().to_string().as_bytes()))
                .is_ok()
        };
        if create() {
            return true;
        }
        if self.holder_alive() {
            return false;
        }
        let _ = std::fs::remove_file(&self.path);
        create()
    }

    /// Lets go of the lock, if this process holds it.
    pub(super) fn release(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|pid| pid.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Waits up to `wait` for the holder to end.
    pub(super) fn wait_for_holder(&self, wait: std::time::Duration) {
        let until = std::time::Instant::now() + wait;
        while self.holder_alive() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// glibc's allocator setting: allocations from this size up are mapped of their own.
const MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";

/// Starts this command again as a worker: its own arguments with `flag` inserted after the
/// subcommand, detached (its own process group, no standard streams), so that it takes no
/// signal meant for the caller and holds none of its pipes. Best effort: the caller does
/// the work itself when no worker runs.
pub(super) fn start_worker(subcommand: &str, flag: &str) {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(at) = args.iter().position(|a| a == subcommand) else {
        return;
    };
    args.insert(at + 1, flag.into());
    let spawned = std::env::current_exe().and_then(|exe| {
        let mut command = Command::new(exe);
        // glibc keeps freed large buffers (a WAL segment read whole) in per-thread arenas
        // that only grow over many files; mapped instead, they go back on free, and the
        // worker holds what its files in flight need (measured: 72 instead of 198 MiB).
        if std::env::var_os(MMAP_THRESHOLD).is_none() {
            command.env(MMAP_THRESHOLD, "1048576");
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    if let Err(err) = spawned {
        tracing::debug!("cannot start the {subcommand} worker: {err}");
    }
}

/// Whether `/proc/<pid>/stat` says the process runs: its state (after the name, which may
/// hold spaces and parentheses) is not zombie or dead.
fn running(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
}

#[cfg(test)]
mod tests {
    use super::running;

    #[test]
    fn a_zombie_holds_no_lock() {
        assert!(running("4242 (pgbackup) S 1 4242 4242 0 -1"));
        assert!(running("4242 (odd) name)) R 1 4242"));
        assert!(!running("4242 (pgbackup) Z 4200 4242"));
        assert!(!running(""));
    }
}
