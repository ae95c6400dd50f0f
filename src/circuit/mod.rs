//! A circuit breaker that stops sending to a host that is down, and finds
//! out by itself when it is back.
//!
//! [`CircuitBreakerLayer`] counts the calls that go through it and their
//! failures over a sliding time window. A failure is what the
//! [`Classifier`](crate::Classifier) says (the same verdicts the
//! [`RetryLayer`](crate::RetryLayer) acts on): a `Transient` verdict, or a
//! `Permanent` one on a 5xx. A 4xx never counts, whatever its verdict: it is
//! the caller's doing, and a host answering 429 is up. Nor does a
//! `Throttled` verdict (a 503 that says when to come back, by default): the
//! host answered and asked to be paced, and pacing is the retry layer's job
//! (its throttling backoff, `Retry-After` and budget). Envoy's outlier
//! detection likewise leaves 429 out; opening the breaker on a host that says
//! when to come back would only stop the traffic it is pacing. To have such
//! 503s trip the breaker, give 503 a rule of its own in the breaker's
//! classifier (`DefaultClassifier::new().retry_status(StatusCode::SERVICE_UNAVAILABLE)`).
//!
//! - **Closed**: calls go through. Once the window holds at least
//!   `min_throughput` calls and the failed share reaches `failure_ratio`,
//!   the breaker opens.
//! - **Open**: calls fail at once with [`CircuitOpen`], which says how long
//!   the break has left; nothing is sent.
//! - **Half-open**: after the break, `probes` calls go through; the others
//!   are refused, told to come back after a tenth of the break (at most 1 s),
//!   since when the probes will answer is not known. Once they all succeed the breaker closes (with an empty
//!   window); the first that fails reopens it with twice the previous break,
//!   up to `max_break_duration`. A probe dropped before its answer gives its
//!   slot back.
//!
//! While closed, a call costs a few atomic operations and no lock or
//! allocation; only state changes take a mutex (and, with `per_host`, the
//! first call to a host not seen yet, which adds its breaker).
//!
//! The breaker takes `http::Request<B>`, so it sits over a hyper-util client
//! or any tower HTTP service.
//!
//! # Defaults
//!
//! | setting | default | why |
//! |---|---|---|
//! | `failure_ratio` | 10% | Polly's standard resilience handler: far above a healthy API's error rate (0.1% in the outage demo), reached within a second of a hard outage |
//! | `min_throughput` | 100 calls | Polly's: a quiet client's few failures are noise, not an outage |
//! | `window` | 30 s | Polly's sampling duration: long enough to hold `min_throughput` calls at modest traffic |
//! | `break_duration` | 5 s | Polly's: short against a user's patience, long against a restarting server |
//! | `max_break_duration` | 30 s | a host down for minutes costs one probe per 30 s, and its return is noticed within 30 s |
//! | `probes` | 1 | one request risked per break is the least load that can tell |
//!
//! # Order of layers
//!
//! As in Polly's standard handler: **retry outside, breaker inside, attempt
//! timeout innermost**.
//!
//! ```text
//! RetryLayer -> CircuitBreakerLayer -> (timeout) -> HTTP client
//! ```
//!
//! - Breaker under [`RetryLayer`](crate::RetryLayer) (recommended): every
//!   attempt counts, and a call refused while open is classified by
//!   [`DefaultClassifier`](crate::DefaultClassifier) as `Transient`,
//!   processed `No`, `retry_after` = the time left: the retry layer waits for
//!   the half-open probe when that fits its `deadline` and
//!   `max_retry_after`, and gives up otherwise (`Deadline`,
//!   `RetryAfterTooLong`), without sending anything meanwhile.
//! - Breaker above the retry layer: it sees one outcome per logical request,
//!   after all its retries, so it opens later, and a refusal goes straight to
//!   the caller: nothing waits for the probe.
//! - The retry layer's `attempt_timeout` drops an attempt from above the
//!   breaker, which then records nothing for it (a dropped probe gives its
//!   slot back). For a hung host to count as failing, put the timeout below
//!   the breaker, as an error the classifier calls `Transient` (hyper-util's
//!   connect timeout is; another can be declared with
//!   [`DefaultClassifier::error_rule`](crate::DefaultClassifier::error_rule)).
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_reissue::RetryLayer;
//! use tower_reissue::circuit::CircuitBreakerLayer;
//!
//! let breaker = CircuitBreakerLayer::builder().per_host().build();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().max_attempts(3).deadline(Duration::from_secs(10)))
//!     .layer(breaker.clone())
//!     .service(tower::service_fn(|_req: http::Request<tower_reissue::ReplayBody<String>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! # let _ = client;
//! ```

mod breaker;
mod future;
mod layer;
mod service;

pub use crate::error::CircuitOpen;
pub use future::ResponseFuture;
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use service::CircuitBreaker;

use std::time::Duration;

/// Where a breaker stands, for health checks and the state-change hook.
///
/// ```
/// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
/// let layer = CircuitBreakerLayer::new();
/// assert_eq!(layer.state(), BreakerState::Closed);
/// assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through and are counted.
    Closed,
    /// Calls are refused with [`CircuitOpen`] until the break ends.
    Open,
    /// A few probes go through; the rest are refused.
    HalfOpen,
}

impl BreakerState {
    /// A stable snake_case label (`closed`, `open`, `half_open`).
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A breaker's change of state, as the
/// [`on_state_change`](CircuitBreakerBuilder::on_state_change) hook sees it.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
///
/// let log: Arc<Mutex<Vec<(BreakerState, BreakerState)>>> = Arc::default();
/// let sink = log.clone();
/// let layer = CircuitBreakerLayer::builder()
///     .on_state_change(move |change| sink.lock().unwrap().push((change.from, change.to)))
///     .build();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct StateChange<'a> {
    /// The host of a per-host breaker (`None` for the shared one).
    pub host: Option<&'a str>,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// When opening: how long the break lasts.
    pub break_duration: Option<Duration>,
}
