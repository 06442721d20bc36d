//! Rate-limited log lines: a warning that would repeat per request (sample evidence accepted, a
//! connection cap reached) is written at most once per period, with the number of occurrences
//! since the last line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One rate-limited log line.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    since: AtomicU64,
}

impl Throttle {
    /// A line written at most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` when the line is due now, `n` being the occurrences it
    /// stands for (this one included).
    pub fn due(&self) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(self.since.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_is_due_then_counted_until_the_period_ends() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.due(), Some(1));
        for _ in 0..5 {
            assert_eq!(t.due(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.due(), Some(6));
        assert_eq!(t.due(), None);
    }
}
