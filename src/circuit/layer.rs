use http::{HeaderMap, Uri};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

use super::breaker::{Breakers, Policy};
use super::{BreakerState, CircuitBreaker, StateChange};
use crate::DefaultClassifier;
use crate::hosts::DEFAULT_MAX_HOSTS;

/// Applies [`CircuitBreaker`] to a client service.
///
/// The layer is also the handle on the breaker's state: every service it
/// makes, and every clone of the layer, share one breaker (or one per host).
/// See the [module docs](super) for the rules and the defaults.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
///
/// let breaker = CircuitBreakerLayer::builder()
///     .failure_ratio(0.5)
///     .min_throughput(20)
///     .window(Duration::from_secs(10))
///     .break_duration(Duration::from_secs(2))
///     .per_host()
///     .build();
/// // For a health check:
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// ```
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    pub(crate) shared: Arc<Shared<C>>,
}

pub(crate) struct Shared<C> {
    pub(crate) classifier: C,
    pub(crate) breakers: Breakers,
    /// What the classifier sees of a request's headers: the request itself
    /// has gone to the service below by the time its outcome is known.
    pub(crate) no_headers: HeaderMap,
}

impl CircuitBreakerLayer {
    /// A breaker with the defaults (see the [module docs](super)).
    ///
    /// ```
    /// let layer = tower_reissue::circuit::CircuitBreakerLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts a breaker with the defaults: failure ratio 10%, minimum
    /// throughput 100 calls, window 30 s, break 5 s doubling to at most
    /// 30 s, one probe, one breaker for all hosts.
    ///
    /// ```
    /// use tower_reissue::circuit::CircuitBreakerLayer;
    /// let layer = CircuitBreakerLayer::builder().probes(2).build();
    /// # let _ = layer;
    /// ```
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            classifier: DefaultClassifier::new(),
            failure_ratio: 0.1,
            min_throughput: 100,
            window: Duration::from_secs(30),
            break_duration: Duration::from_secs(5),
            max_break_duration: Duration::from_secs(30),
            probes: 1,
            max_hosts: None,
            on_state_change: None,
        }
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// The state of the breaker (for a per-host breaker: the one of requests
    /// without an authority; see [`state_for`](Self::state_for)).
    ///
    /// ```
    /// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
    /// assert_eq!(CircuitBreakerLayer::new().state(), BreakerState::Closed);
    /// ```
    pub fn state(&self) -> BreakerState {
        self.shared.breakers.state()
    }

    /// The state of the breaker guarding requests to `uri`. Same as
    /// [`state`](Self::state) unless the breaker is per host; a host not
    /// seen yet is closed.
    ///
    /// ```
    /// use http::Uri;
    /// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
    /// let layer = CircuitBreakerLayer::builder().per_host().build();
    /// let uri = Uri::from_static("https://api.example/v1");
    /// assert_eq!(layer.state_for(&uri), BreakerState::Closed);
    /// ```
    pub fn state_for(&self, uri: &Uri) -> BreakerState {
        self.shared.breakers.state_for(uri)
    }

    /// Whether the layer keeps one breaker per URI authority.
    pub fn is_per_host(&self) -> bool {
        self.shared.breakers.is_per_host()
    }
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.shared.breakers.policy;
        f.debug_struct("CircuitBreakerLayer")
            .field("state", &self.state())
            .field("failure_ratio", &policy.failure_ratio)
            .field("min_throughput", &policy.min_throughput)
            .field("window", &policy.window)
            .field("break_duration", &policy.break_duration)
            .field("max_break_duration", &policy.max_break_duration)
            .field("probes", &policy.probes)
            .field("per_host", &self.is_per_host())
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_shared(inner, self.shared.clone())
    }
}

/// Configures a [`CircuitBreakerLayer`]; see
/// [`CircuitBreakerLayer::builder`].
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_reissue::DefaultClassifier;
/// use tower_reissue::circuit::CircuitBreakerLayer;
///
/// let layer = CircuitBreakerLayer::builder()
///     // The same notion of failure as the retry layer above it.
///     .classifier(DefaultClassifier::new().never_retry_status(StatusCode::SERVICE_UNAVAILABLE))
///     .break_duration(Duration::from_secs(1))
///     .max_break_duration(Duration::from_secs(8))
///     .on_state_change(|change| eprintln!("{:?} -> {:?}", change.from, change.to))
///     .build();
/// # let _ = layer;
/// ```
pub struct CircuitBreakerBuilder<C = DefaultClassifier> {
    classifier: C,
    failure_ratio: f64,
    min_throughput: u32,
    window: Duration,
    break_duration: Duration,
    max_break_duration: Duration,
    probes: u32,
    max_hosts: Option<usize>,
    on_state_change: Option<super::breaker::StateHook>,
}

impl<C> CircuitBreakerBuilder<C> {
    /// Decides which outcomes count as failures, with the same verdicts as
    /// the retry layer: `Transient`, and `Permanent` on a 5xx; a 4xx never
    /// counts. The classifier sees the request's method and URI; its
    /// headers and extensions have gone to the service below by then.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            classifier,
            failure_ratio: self.failure_ratio,
            min_throughput: self.min_throughput,
            window: self.window,
            break_duration: self.break_duration,
            max_break_duration: self.max_break_duration,
            probes: self.probes,
            max_hosts: self.max_hosts,
            on_state_change: self.on_state_change,
        }
    }

    /// The share of failed calls within the window that opens the breaker
    /// (0.1 = 10%). Clamped to `0.0..=1.0`; NaN counts as 1 (open only
    /// when every call fails). At least one failure is always needed.
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// Calls the window must hold before the ratio is judged at all, so
    /// that a few failures of a quiet client do not open it.
    pub fn min_throughput(mut self, calls: u32) -> Self {
        self.min_throughput = calls;
        self
    }

    /// How far back calls count. Clamped to 1 s ..= 10 min.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.clamp(Duration::from_secs(1), Duration::from_secs(600));
        self
    }

    /// How long the breaker stays open after it opens; each failed probe
    /// doubles it, up to [`max_break_duration`](Self::max_break_duration).
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// The longest break after repeated failed probes (at least the
    /// [`break_duration`](Self::break_duration)).
    pub fn max_break_duration(mut self, duration: Duration) -> Self {
        self.max_break_duration = duration;
        self
    }

    /// How many calls the half-open breaker lets through; it closes once all
    /// of them succeeded, and reopens on the first that fails. At least 1.
    pub fn probes(mut self, probes: u32) -> Self {
        self.probes = probes.max(1);
        self
    }

    /// Keeps one breaker per URI authority (host and port, without regard
    /// to case), like the per-host [`RetryBudget`](crate::RetryBudget): a
    /// host that is down does not cut off the healthy ones. At most 1024
    /// hosts are tracked (see [`max_hosts`](Self::max_hosts)).
    ///
    /// ```
    /// use tower_reissue::circuit::CircuitBreakerLayer;
    /// assert!(CircuitBreakerLayer::builder().per_host().build().is_per_host());
    /// ```
    pub fn per_host(mut self) -> Self {
        if self.max_hosts.is_none() {
            self.max_hosts = Some(DEFAULT_MAX_HOSTS);
        }
        self
    }

    /// Makes the breaker per host and bounds how many hosts get their own.
    /// A new host past the bound takes the place of a closed host idle for
    /// a whole window, if there is one; otherwise it shares the breaker of
    /// requests without an authority.
    pub fn max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = Some(max_hosts);
        self
    }

    /// Called on every state change (closed -> open, open -> half-open,
    /// half-open -> closed or open), after the change, outside any lock. A
    /// `tracing` event (target `tower_reissue::circuit`) is emitted either
    /// way.
    pub fn on_state_change<F>(mut self, hook: F) -> Self
    where
        F: Fn(&StateChange<'_>) + Send + Sync + 'static,
    {
        self.on_state_change = Some(Arc::new(hook));
        self
    }

    /// Builds the layer.
    pub fn build(self) -> CircuitBreakerLayer<C> {
        let policy = Policy {
            failure_ratio: self.failure_ratio,
            min_throughput: self.min_throughput,
            window: self.window,
            break_duration: self.break_duration,
            max_break_duration: self.max_break_duration.max(self.break_duration),
            probes: self.probes,
            on_state_change: self.on_state_change,
        };
        CircuitBreakerLayer {
            shared: Arc::new(Shared {
                classifier: self.classifier,
                breakers: Breakers::new(policy, self.max_hosts),
                no_headers: HeaderMap::new(),
            }),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("failure_ratio", &self.failure_ratio)
            .field("min_throughput", &self.min_throughput)
            .field("window", &self.window)
            .field("break_duration", &self.break_duration)
            .field("max_break_duration", &self.max_break_duration)
            .field("probes", &self.probes)
            .field("max_hosts", &self.max_hosts)
            .finish_non_exhaustive()
    }
}
