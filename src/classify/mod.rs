//! Deciding whether one attempt succeeded, failed for good, or may succeed if
//! tried again.
//!
//! A [`Classifier`] looks at one attempt's [`Outcome`] (the response's status
//! and headers, or the error with its `source()` chain) together with a
//! [`RequestView`] of the request, and returns a [`Verdict`]. The
//! [`DefaultClassifier`] implements the table below; every rule can be
//! overridden without rewriting the others, and any
//! `Fn(&RequestView<'_>, &Outcome<'_>) -> Verdict` closure is a classifier too.
//!
//! | result | verdict |
//! |---|---|
//! | 1xx, 2xx, 3xx | `Success` |
//! | 4xx not listed below | `Permanent` |
//! | 408 Request Timeout | `Transient`, processed `Maybe` |
//! | 409 Conflict on a request that carries an idempotency key | `Transient`, processed `No` |
//! | 409 otherwise | `Permanent` |
//! | 429 Too Many Requests | `Throttled` |
//! | 503 with a delay that parses (`Retry-After`, `retry-after-ms`, or a header registered with [`DefaultClassifier::delay_header`]) | `Throttled` |
//! | 500, 502, 503 (without such a delay), 504 | `Transient`, processed `Maybe` |
//! | other 5xx (501, 505, ...) | `Permanent` |
//! | connect error, connection refused, DNS failure | `Transient`, processed `No` |
//! | HTTP/2 `REFUSED_STREAM`, graceful `GOAWAY`, request canceled before it was sent | `Transient`, processed `No` |
//! | timeout, connection reset or closed mid-exchange | `Transient`, processed `Maybe` |
//! | [`CircuitOpen`](crate::circuit::CircuitOpen) (refused by an open breaker) | `Transient`, processed `No`, `retry_after` = time left in the break |
//! | any other error | `Permanent` |
//! | on a 4xx/5xx: `x-should-retry: false` / `Stripe-Should-Retry: false` | `Permanent` (overrides) |
//! | on a 4xx/5xx: `x-should-retry: true` / `Stripe-Should-Retry: true` | retryable (overrides): `Transient`, or `Throttled` where the status's rule says so |
//!
//! The server's requested delay (`retry_after`) is read from `retry-after-ms`,
//! then `Retry-After` (delay-seconds or HTTP-date), then any header registered
//! with [`DefaultClassifier::delay_header`].
//!
//! # Throttling is not failure
//!
//! A [`Verdict::Throttled`] says the server turned the request away to pace
//! its clients, before doing any work: processed `No`, so any method may be
//! repeated. The retry layer waits on its throttling backoff (1 s base
//! against 100 ms after a failure) and the budget charges it 5/14 of a
//! failure's retry (the AWS SDKs' figures; see
//! [`RetryLayer::throttle_backoff`](crate::RetryLayer::throttle_backoff) and
//! [`budget`](crate::budget)); the circuit breaker does not count it against
//! the host, which is up. A 503 counts as throttling only when it says when
//! to come back: a bare 503 may come from a server that failed mid-request.
//! To keep every 503 a failure, give it a rule of its own
//! (`.retry_status(StatusCode::SERVICE_UNAVAILABLE)`); to mark a vendor's
//! own rate-limit status, [`DefaultClassifier::throttle_status`].
//!
//! # Pushback the layer does not understand
//!
//! A pushback header that is present but not understood (`x-should-retry:
//! maybe`, `retry-after-ms: -5`, `Retry-After: soon`, an empty value) counts
//! as absent: the status's own rule decides, and the delay is the backoff the
//! verdict would get without the header. So it is never a reason to retry
//! sooner, nor to repeat a request the status alone would not (it cannot turn
//! a 503 into throttling, which would allow repeating a POST), nor to give
//! up. gRPC (A6) takes an unparsable pushback as "do not retry"; there one
//! library writes the header. HTTP headers pass through proxies, gateways and
//! frameworks, and RFC 9110 has a recipient ignore a field value it cannot
//! parse: treating garbage as "never retry" would let one broken hop switch
//! retries off, and treating it as "no delay" would let it start a storm.
//! The backoff and the [`RetryBudget`](crate::RetryBudget) still bound what
//! follows.

mod default;
mod errors;
mod retry_after;

pub use default::{DefaultClassifier, DelayUnit};
pub use errors::classify_error;
pub(crate) use errors::error_type;
pub use retry_after::{parse_retry_after, parse_retry_after_ms};

use http::{HeaderMap, StatusCode};
use std::error::Error as StdError;
use std::time::Duration;

pub use crate::request::RequestView;

/// Whether the server may have acted on a failed request.
///
/// ```
/// use tower_reissue::{Processed, Verdict};
///
/// // A 429 is answered before any work is done.
/// let verdict = Verdict::Transient { processed: Processed::No, retry_after: None };
/// assert!(verdict.is_transient());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Processed {
    /// The server provably did not act on the request (connection refused,
    /// rate limited, stream refused): repeating it is safe for any method.
    No,
    /// The server may have acted on the request (a 500 can come after the
    /// email went out): only requests that are safe to repeat are retried.
    Maybe,
}

/// What a [`Classifier`] concludes about one attempt.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::{Processed, Verdict};
///
/// let v = Verdict::transient(Processed::Maybe).with_retry_after(Some(Duration::from_secs(3)));
/// assert_eq!(v.retry_after(), Some(Duration::from_secs(3)));
/// assert!(!Verdict::Permanent.is_transient());
/// ```
///
/// The enum is `#[non_exhaustive]`: a classifier outside this crate keeps
/// compiling as variants are added (it builds the variants it knows, and a
/// `match` on a verdict ends with a `_` arm). It was made so together with
/// [`Throttled`](Verdict::Throttled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// The attempt succeeded: hand it to the caller.
    Success,
    /// A failure that retrying cannot fix: hand it to the caller.
    Permanent,
    /// A failure that may go away if the request is tried again.
    Transient {
        /// Whether the server may have acted on the request.
        processed: Processed,
        /// The delay the server asked for, if any.
        retry_after: Option<Duration>,
    },
    /// Not a failure: the server turned the request away to pace its
    /// clients (429 Too Many Requests, or a 503 that says when to come back)
    /// before doing any work. It is processed [`Processed::No`], so it may be
    /// repeated whatever the method; the retry layer waits on its throttling
    /// backoff ([`RetryLayer::throttle_backoff`](crate::RetryLayer::throttle_backoff))
    /// and charges the budget its throttled cost
    /// ([`RetryBudgetBuilder::throttled_cost`](crate::budget::RetryBudgetBuilder::throttled_cost)),
    /// and the circuit breaker does not count it against the host.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::{Processed, Verdict};
    ///
    /// let v = Verdict::throttled(Some(Duration::from_secs(2)));
    /// assert!(v.is_throttled() && v.is_transient());
    /// assert_eq!(v.processed(), Some(Processed::No));
    /// assert_eq!(v.retry_after(), Some(Duration::from_secs(2)));
    /// ```
    Throttled {
        /// The delay the server asked for, if any.
        retry_after: Option<Duration>,
    },
}

impl Verdict {
    /// A transient verdict without a server-requested delay.
    ///
    /// ```
    /// use tower_reissue::{Processed, Verdict};
    /// assert_eq!(
    ///     Verdict::transient(Processed::No),
    ///     Verdict::Transient { processed: Processed::No, retry_after: None },
    /// );
    /// ```
    pub const fn transient(processed: Processed) -> Self {
        Verdict::Transient {
            processed,
            retry_after: None,
        }
    }

    /// A throttled verdict: the server turned the request away before doing
    /// any work, asking (if `retry_after` is given) to wait that long.
    ///
    /// ```
    /// use tower_reissue::Verdict;
    /// assert_eq!(Verdict::throttled(None), Verdict::Throttled { retry_after: None });
    /// ```
    pub const fn throttled(retry_after: Option<Duration>) -> Self {
        Verdict::Throttled { retry_after }
    }

    /// Whether this verdict allows a retry at all: `Transient`, and
    /// `Throttled` too (throttling passes; it was `Transient` before it had a
    /// variant of its own, so code asking this question keeps retrying 429s).
    ///
    /// ```
    /// use tower_reissue::{Processed, Verdict};
    /// assert!(Verdict::transient(Processed::Maybe).is_transient());
    /// assert!(Verdict::throttled(None).is_transient());
    /// assert!(!Verdict::Success.is_transient());
    /// ```
    pub const fn is_transient(&self) -> bool {
        matches!(self, Verdict::Transient { .. } | Verdict::Throttled { .. })
    }

    /// Whether the server turned the request away to pace its clients.
    ///
    /// ```
    /// use tower_reissue::{Processed, Verdict};
    /// assert!(Verdict::throttled(None).is_throttled());
    /// assert!(!Verdict::transient(Processed::No).is_throttled());
    /// ```
    pub const fn is_throttled(&self) -> bool {
        matches!(self, Verdict::Throttled { .. })
    }

    /// Whether the server may have acted on the request, for a verdict that
    /// allows a retry: a throttled request was not processed.
    ///
    /// ```
    /// use tower_reissue::{Processed, Verdict};
    /// assert_eq!(Verdict::transient(Processed::Maybe).processed(), Some(Processed::Maybe));
    /// assert_eq!(Verdict::throttled(None).processed(), Some(Processed::No));
    /// assert_eq!(Verdict::Permanent.processed(), None);
    /// ```
    pub const fn processed(&self) -> Option<Processed> {
        match self {
            Verdict::Transient { processed, .. } => Some(*processed),
            Verdict::Throttled { .. } => Some(Processed::No),
            _ => None,
        }
    }

    /// The server-requested delay of a transient or throttled verdict.
    ///
    /// ```
    /// use tower_reissue::Verdict;
    /// assert_eq!(Verdict::Permanent.retry_after(), None);
    /// ```
    pub const fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Verdict::Transient { retry_after, .. } | Verdict::Throttled { retry_after } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Sets the server-requested delay of a transient or throttled verdict;
    /// other verdicts are returned unchanged.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::{Processed, Verdict};
    ///
    /// let d = Some(Duration::from_millis(1500));
    /// assert_eq!(Verdict::transient(Processed::No).with_retry_after(d).retry_after(), d);
    /// assert_eq!(Verdict::throttled(None).with_retry_after(d), Verdict::throttled(d));
    /// assert_eq!(Verdict::Success.with_retry_after(d), Verdict::Success);
    /// ```
    pub const fn with_retry_after(self, delay: Option<Duration>) -> Self {
        match self {
            Verdict::Transient { processed, .. } => Verdict::Transient {
                processed,
                retry_after: delay,
            },
            Verdict::Throttled { .. } => Verdict::Throttled { retry_after: delay },
            other => other,
        }
    }
}

/// The result of one attempt, as a classifier sees it.
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_reissue::classify::Outcome;
///
/// let headers = HeaderMap::new();
/// let outcome = Outcome::Response { status: StatusCode::OK, headers: &headers };
/// assert_eq!(outcome.status(), Some(StatusCode::OK));
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The server answered.
    Response {
        /// The response status.
        status: StatusCode,
        /// The response headers.
        headers: &'a HeaderMap,
    },
    /// The attempt failed without a response. Walk
    /// [`source()`](std::error::Error::source) to find the cause.
    Error(&'a (dyn StdError + 'static)),
}

impl<'a> Outcome<'a> {
    /// The outcome of an attempt's result, as a layer sees it.
    pub(crate) fn of<R: crate::request::RetryResponse>(
        result: &'a Result<R, crate::error::BoxError>,
    ) -> Self {
        match result {
            Ok(response) => Outcome::Response {
                status: response.status(),
                headers: response.headers(),
            },
            Err(error) => Outcome::Error(&**error),
        }
    }

    /// The response status, if the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Response { status, .. } => Some(*status),
            Outcome::Error(_) => None,
        }
    }

    /// The response headers, if the server answered.
    pub fn headers(&self) -> Option<&'a HeaderMap> {
        match self {
            Outcome::Response { headers, .. } => Some(headers),
            Outcome::Error(_) => None,
        }
    }

    /// The error, if the attempt failed without a response.
    pub fn error(&self) -> Option<&'a (dyn StdError + 'static)> {
        match self {
            Outcome::Error(e) => Some(*e),
            Outcome::Response { .. } => None,
        }
    }
}

/// Decides what one attempt's outcome means for retrying.
///
/// Implement it for full control, or start from [`DefaultClassifier`] and
/// override single rules. Closures work too:
///
/// ```
/// use http::StatusCode;
/// use tower_reissue::classify::{Outcome, RequestView};
/// use tower_reissue::{Classifier, Processed, RetryLayer, Verdict};
///
/// // Retry only 503s, nothing else.
/// let only_503 = |_req: &RequestView<'_>, outcome: &Outcome<'_>| match outcome.status() {
///     Some(s) if s == StatusCode::SERVICE_UNAVAILABLE => Verdict::transient(Processed::Maybe),
///     Some(s) if s.is_success() => Verdict::Success,
///     _ => Verdict::Permanent,
/// };
/// let layer = RetryLayer::new().classifier(only_503);
/// # let _ = layer;
/// ```
pub trait Classifier {
    /// Classifies the outcome of one attempt of `request`.
    fn classify(&self, request: &RequestView<'_>, outcome: &Outcome<'_>) -> Verdict;
}

impl<F> Classifier for F
where
    F: Fn(&RequestView<'_>, &Outcome<'_>) -> Verdict,
{
    fn classify(&self, request: &RequestView<'_>, outcome: &Outcome<'_>) -> Verdict {
        self(request, outcome)
    }
}

impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn classify(&self, request: &RequestView<'_>, outcome: &Outcome<'_>) -> Verdict {
        (**self).classify(request, outcome)
    }
}
