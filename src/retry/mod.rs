//! Classified, budgeted retries for any tower HTTP client.
//!
//! [`RetryLayer`] wraps a client service. Each response or error is
//! classified (see [`classify`](crate::classify)); a failed attempt is
//! retried only when all of these hold:
//!
//! 1. the verdict is `Transient` or `Throttled` (a throttled request counts
//!    as processed `No`);
//! 2. the request is safe to repeat: the server provably did not process it
//!    (`Processed::No`), or its method is idempotent (GET, HEAD, OPTIONS,
//!    TRACE, PUT, DELETE), or it carries an idempotency key (the
//!    [`IdempotencyKey`](crate::IdempotencyKey) extension, an
//!    `Idempotency-Key` header, or the key an
//!    [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer) below this layer
//!    gave its first attempt), or it is conditional (`If-Match`,
//!    `If-None-Match: *`, `If-Unmodified-Since`: a repeat after the first took
//!    effect fails with 412); a [`Retryable`] extension forces either way;
//! 3. fewer than `max_attempts` attempts were made (default 3, counting the
//!    first);
//! 4. the body can be replayed (it fit in `replay_limit`, default 64 KiB);
//! 5. the server's `retry_after` is not over `max_retry_after` (default 60 s):
//!    a server asking for an hour gets its response handed back at once;
//! 6. the delay ends before the deadline, if one is set;
//! 7. the [`RetryBudget`](crate::RetryBudget) allows it (the budget of the
//!    request's authority, if the budget is per host); a retry after
//!    throttling costs 5/14 of one after a failure.
//!
//! The delay is the server's `retry_after` plus a jitter of up to a tenth of
//! it (at most one second), so that clients told the same instant do not all
//! come back at once; otherwise the [`Backoff`](crate::Backoff) (by default
//! exponential with full jitter, base 100 ms, cap 10 s), or after throttling
//! the [throttling backoff](RetryLayer::throttle_backoff) (base 1 s, cap
//! 10 s). A pushback header the classifier does not understand counts as
//! absent, so the backoff applies (see [`classify`](crate::classify)).
//!
//! The server's delay is honoured when it is shorter than the throttling
//! backoff would have been, as gRPC honours its pushback: the server knows
//! when its limit lifts, and the throttling backoff is a guess for when it
//! did not say. The AWS SDKs instead clamp their service's delay into
//! `[backoff, backoff + 5 s]`; with full jitter that floor is itself a random
//! draw between 0 and the base, so it would delay a client the server asked
//! back at a given instant without spreading the fleet any better than the
//! added jitter does. A server that answers `Retry-After: 0` to every request
//! is still held back by `max_attempts` and the budget.
//!
//! When it gives up, the caller gets the last response or error unchanged.
//! Every response carries an [`Attempts`] extension. Each retry and each
//! give-up is a `tracing` event (target `tower_reissue::retry`) and a call to
//! the [`on_retry`](RetryLayer::on_retry) / [`on_give_up`](RetryLayer::on_give_up)
//! hooks.

mod check;
mod decide;
mod failed;
mod future;
mod layer;
pub mod reconcile;
mod report;
mod service;
pub(crate) mod sink;
mod timer;

pub use crate::error::{AttemptTimedOut, DeadlineExceeded};
pub use crate::request::{Attempts, NotReplayable, ReplayBody, Retryable};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use service::Retry;

use std::fmt;
use std::time::Duration;

use crate::classify::RequestView;
use crate::request::Repeat;
use crate::{Processed, Verdict};

/// Why the retry layer stopped and handed a failure to the caller.
///
/// ```
/// use tower_reissue::retry::GiveUpReason;
/// assert_eq!(GiveUpReason::BudgetExhausted.to_string(), "the retry budget is exhausted");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The classifier called the failure permanent.
    Permanent,
    /// The server may have acted on the request and repeating it is not
    /// safe: a non-idempotent method without an idempotency key.
    NotSafe,
    /// A [`Retryable::No`] extension forbade retries.
    Disabled,
    /// `max_attempts` attempts were made.
    MaxAttempts,
    /// The request body cannot be sent again.
    NotReplayable(NotReplayable),
    /// The server asked to wait longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The next attempt could not start before the deadline.
    Deadline,
    /// The retry budget is exhausted.
    BudgetExhausted,
    /// The request may have taken effect and the reconciler could not tell
    /// whether it did (it answered `Unknown`, failed, or timed out).
    Unreconciled,
    /// The wrapped service failed in `poll_ready` before the next attempt
    /// (it closed, or its connection pool broke): the caller gets the last
    /// attempt's result, or that error if there was none to keep.
    ServiceNotReady,
}

impl GiveUpReason {
    /// A stable snake_case label, for metrics, logs and stored dead letters:
    /// `permanent`, `not_safe`, `disabled`, `max_attempts`, `not_replayable`,
    /// `retry_after_too_long`, `deadline`, `budget_exhausted`, `unreconciled`,
    /// `service_not_ready`.
    ///
    /// ```
    /// use tower_reissue::retry::{GiveUpReason, NotReplayable};
    /// assert_eq!(GiveUpReason::BudgetExhausted.as_str(), "budget_exhausted");
    /// let too_large = GiveUpReason::NotReplayable(NotReplayable::TooLarge { limit: 1 });
    /// assert_eq!(too_large.as_str(), "not_replayable");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUpReason::Permanent => "permanent",
            GiveUpReason::NotSafe => "not_safe",
            GiveUpReason::Disabled => "disabled",
            GiveUpReason::MaxAttempts => "max_attempts",
            GiveUpReason::NotReplayable(_) => "not_replayable",
            GiveUpReason::RetryAfterTooLong => "retry_after_too_long",
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::BudgetExhausted => "budget_exhausted",
            GiveUpReason::Unreconciled => "unreconciled",
            GiveUpReason::ServiceNotReady => "service_not_ready",
        }
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::Permanent => f.write_str("the failure is permanent"),
            GiveUpReason::NotSafe => f.write_str(
                "the request may have been processed and is not safe to repeat (no idempotency key)",
            ),
            GiveUpReason::Disabled => f.write_str("retries are disabled for this request"),
            GiveUpReason::MaxAttempts => f.write_str("the maximum number of attempts was reached"),
            GiveUpReason::NotReplayable(why) => write!(f, "the body cannot be replayed: {why}"),
            GiveUpReason::RetryAfterTooLong => {
                f.write_str("the server asked to wait longer than max_retry_after")
            }
            GiveUpReason::Deadline => f.write_str("the deadline leaves no time for another attempt"),
            GiveUpReason::BudgetExhausted => f.write_str("the retry budget is exhausted"),
            GiveUpReason::Unreconciled => {
                f.write_str("the reconciler could not tell whether the request took effect")
            }
            GiveUpReason::ServiceNotReady => {
                f.write_str("the service failed to become ready for the next attempt")
            }
        }
    }
}

/// A retry about to be made, as passed to [`RetryLayer::on_retry`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// The request (method, URI, headers, idempotency key).
    pub request: RequestView<'a>,
    /// The attempt that failed (1-based); the next one is `attempt + 1`.
    pub attempt: u32,
    /// The failed attempt's verdict.
    pub verdict: Verdict,
    /// How long the layer waits before the next attempt.
    pub delay: Duration,
}

/// A failure handed to the caller, as passed to [`RetryLayer::on_give_up`].
///
/// It carries enough of the request to queue the operation for a later
/// replay or a reconciliation: method, URI, headers and idempotency key.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct GiveUpEvent<'a> {
    /// The request (method, URI, headers, idempotency key).
    pub request: RequestView<'a>,
    /// How many attempts were made.
    pub attempts: u32,
    /// The last attempt's verdict.
    pub verdict: Verdict,
    /// Why no further attempt is made.
    pub reason: GiveUpReason,
}

/// Whether the request may be sent again after a transient failure.
pub(crate) fn safety(request: &RequestView<'_>, processed: Processed) -> Result<(), GiveUpReason> {
    match request.repeat() {
        Repeat::Forbidden => Err(GiveUpReason::Disabled),
        Repeat::Forced | Repeat::Safe => Ok(()),
        // What the answer told: the server never acted on it. Or a
        // precondition makes a repeat after the first took effect fail 412.
        Repeat::Unsafe
            if processed == Processed::No
                || crate::reconcile::is_conditional(request.headers()) =>
        {
            Ok(())
        }
        Repeat::Unsafe => Err(GiveUpReason::NotSafe),
    }
}
