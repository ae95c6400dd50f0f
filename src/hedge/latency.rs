//! The latency percentile of recent successes, for a hedge delay that
//! follows the service: when the whole service slows down, hedges wait
//! longer instead of copying every request.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many recent successes the percentile is taken over: enough for a
/// p99 to rest on ten samples, few enough to follow a change within
/// seconds at modest traffic.
pub(crate) const WINDOW: usize = 1000;

/// Successes needed before the percentile is used at all: until then the
/// fixed delay alone decides (a p95 of a handful of samples is noise).
pub(crate) const MIN_SAMPLES: usize = 100;

/// The percentile is worked out again after this many new samples, not on
/// every one: a selection over the window costs microseconds, a hedge
/// delay that lags a few samples behind costs nothing.
const REFRESH: u32 = 32;

/// No percentile yet.
const NONE: u64 = u64::MAX;

pub(crate) struct Latencies {
    percentile: f64,
    recent: Mutex<Recent>,
    /// The percentile in nanoseconds, or [`NONE`]: read on every hedged
    /// request without taking the lock.
    current: AtomicU64,
}

struct Recent {
    /// Nanoseconds, a ring once full.
    samples: Vec<u64>,
    next: usize,
    since_refresh: u32,
    /// Reused for the selection, so that a refresh does not allocate.
    scratch: Vec<u64>,
}

impl Latencies {
    /// `percentile` is in `0.0..=1.0` (0.95 for p95).
    pub(crate) fn new(percentile: f64) -> Self {
        Latencies {
            percentile,
            recent: Mutex::new(Recent {
                samples: Vec::new(),
                next: 0,
                since_refresh: 0,
                scratch: Vec::new(),
            }),
            current: AtomicU64::new(NONE),
        }
    }

    pub(crate) fn percentile(&self) -> f64 {
        self.percentile
    }

    /// The percentile of the recent successes, once there are enough.
    pub(crate) fn current(&self) -> Option<Duration> {
        match self.current.load(Ordering::Relaxed) {
            NONE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Adds a success's latency. Under contention the sample is skipped
    /// rather than waited for: the percentile is an estimate, and a request
    /// is never held up to keep it.
    pub(crate) fn record(&self, latency: Duration) {
        let mut recent = match self.recent.try_lock() {
            Ok(recent) => recent,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(NONE - 1);
        let recent = &mut *recent;
        if recent.samples.len() < WINDOW {
            recent.samples.push(nanos);
        } else {
            recent.samples[recent.next] = nanos;
        }
        recent.next = (recent.next + 1) % WINDOW;
        recent.since_refresh += 1;
        let enough = recent.samples.len() >= MIN_SAMPLES;
        // The first refresh as soon as there are enough samples, then one
        // per `REFRESH`.
        if enough && (recent.since_refresh >= REFRESH || recent.samples.len() == MIN_SAMPLES) {
            recent.since_refresh = 0;
            recent.scratch.clear();
            recent.scratch.extend_from_slice(&recent.samples);
            let index = rank(self.percentile, recent.scratch.len());
            let (_, value, _) = recent.scratch.select_nth_unstable(index);
            self.current.store(*value, Ordering::Relaxed);
        }
    }
}

/// The index of the `percentile` in `len` sorted samples (nearest rank).
fn rank(percentile: f64, len: usize) -> usize {
    let index = (percentile * len as f64).ceil() as usize;
    index.clamp(1, len) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_until_enough_samples() {
        let latencies = Latencies::new(0.95);
        for _ in 0..MIN_SAMPLES - 1 {
            latencies.record(Duration::from_millis(5));
        }
        assert_eq!(latencies.current(), None);
        latencies.record(Duration::from_millis(5));
        assert_eq!(latencies.current(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn percentile_of_the_window() {
        let latencies = Latencies::new(0.95);
        // 1..=100 ms, in an order that is not sorted.
        for i in 0..100u64 {
            latencies.record(Duration::from_millis((i * 37) % 100 + 1));
        }
        assert_eq!(latencies.current(), Some(Duration::from_millis(95)));
        // The window forgets: after a full window of 10 ms samples, the
        // percentile is 10 ms.
        for _ in 0..WINDOW {
            latencies.record(Duration::from_millis(10));
        }
        assert_eq!(latencies.current(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn ranks() {
        assert_eq!(rank(0.95, 100), 94);
        assert_eq!(rank(1.0, 100), 99);
        assert_eq!(rank(0.0, 100), 0);
        assert_eq!(rank(0.5, 1), 0);
    }
}
