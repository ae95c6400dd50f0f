use std::time::Duration;

use redis::Value;

use crate::error::{BoxError, Corrupt};

/// The error type of a Redis-backed store or queue: its variant for a call
/// without an answer, beside the one for an answer it cannot read.
pub(crate) trait ReplyError: Corrupt {
    /// Redis did not answer, or not in time; the call's effect is unknown.
    const UNAVAILABLE: fn(BoxError) -> Self;

    /// A script answered in a shape it never returns.
    fn unexpected(value: &Value) -> Self {
        Self::CORRUPT(format!("redis script returned {value:?}"))
    }
}

/// A duration in whole milliseconds, as Redis and the scripts take one:
/// rounded up so a lease is never shorter than asked, and capped where
/// Redis's Lua numbers still add exactly to a time in ms (and far below
/// where Redis would reject an expiry as out of range).
pub(crate) fn millis(duration: Duration) -> u64 {
    const MAX: u64 = 1 << 50; // about 35 000 years
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(MAX).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_exact_script_arguments() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1_001)), 2);
        assert_eq!(millis(Duration::from_secs(60)), 60_000);
        assert_eq!(millis(Duration::MAX), 1 << 50);
    }
}
