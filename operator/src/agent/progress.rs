//! Progress of long transfers in the log at a steady interval, and the closing summary.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use crate::repository::Progress;

/// Logs progress every `interval` until dropped.
#[derive(Debug)]
pub struct ProgressReporter {
    task: JoinHandle<()>,
}

impl ProgressReporter {
    /// Starts reporting on `progress` under `label`.
    pub fn start(label: String, progress: Arc<Progress>, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let read = progress.read.load(Ordering::Relaxed);
                let stored = progress.stored.load(Ordering::Relaxed);
                let rate = read as f64 / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    read_bytes = read,
                    stored_bytes = stored,
                    "{label}: read {}, stored {}, {}/s",
                    human_bytes(read),
                    human_bytes(stored),
                    human_bytes(rate as u64)
                );
            }
        });
        Self { task }
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
