use std::fmt;
use std::time::Duration;

/// The error of a call refused by an open
/// [`CircuitBreaker`](crate::circuit::CircuitBreaker): no request was sent.
///
/// It says how long until the breaker lets a probe through.
/// [`DefaultClassifier`](crate::DefaultClassifier) classifies it as
/// `Transient`, processed `No`, with that time as `retry_after`, so a
/// [`RetryLayer`](crate::RetryLayer) above the breaker waits for the probe
/// when that fits its deadline and `max_retry_after`, and gives up otherwise.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::circuit::CircuitOpen;
/// use tower_reissue::classify::classify_error;
/// use tower_reissue::{Processed, Verdict};
///
/// let open = CircuitOpen::new(Duration::from_secs(3));
/// assert_eq!(open.retry_after(), Duration::from_secs(3));
/// assert_eq!(
///     classify_error(&open),
///     Verdict::Transient { processed: Processed::No, retry_after: Some(Duration::from_secs(3)) },
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    retry_after: Duration,
}

impl CircuitOpen {
    /// A refusal whose next probe is allowed in `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        CircuitOpen { retry_after }
    }

    /// How long until the breaker lets a probe through (an estimate while a
    /// probe is already out: see [`circuit`](crate::circuit)).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open: request not sent, next probe allowed in {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for CircuitOpen {}
