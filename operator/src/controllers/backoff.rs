//! Per-object exponential backoff for failed reconciles (kube's Controller retries at the
//! delay the error policy names, and keeps no count of its own).

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// First retry delay.
const FIRST: Duration = Duration::from_secs(5);
/// Longest retry delay.
const CAP: Duration = Duration::from_secs(300);

/// Failure counts by object key.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Counts a failure of `key`; the delay before its next attempt (5 s, 10 s, 20 s, … 5 min).
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_string()).or_insert(0);
        let delay = FIRST.saturating_mul(1u32 << (*count).min(16)).min(CAP);
        *count += 1;
        delay
    }

    /// `key` succeeded: its next failure starts again at the first delay.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_cap_and_reset_on_success() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.next("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(
            backoff.next("b").as_secs(),
            5,
            "objects back off independently"
        );
        backoff.reset("a");
        assert_eq!(backoff.next("a").as_secs(), 5);
    }
}
