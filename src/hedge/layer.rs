use http::Uri;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

use super::Hedge;
use super::latency::Latencies;
use crate::budget::RetryBudget;
use crate::circuit::{BreakerState, CircuitBreakerLayer};
use crate::classify::DefaultClassifier;

/// The most hedges one request may get: each is a full extra copy on the
/// server, and a second or third hedge helps only when the first is slow
/// too, which one slow replica does not make likely.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::hedge::{HedgeLayer, MAX_HEDGES};
///
/// // Asking for more gets the most there is.
/// let layer = HedgeLayer::new(Duration::from_millis(50)).max_hedges(10);
/// assert!(format!("{layer:?}").contains(&format!("max_hedges: {MAX_HEDGES}")));
/// ```
pub const MAX_HEDGES: u32 = 3;

/// Reads the state of the breaker guarding a URI.
type BreakerStates = Arc<dyn Fn(&Uri) -> BreakerState + Send + Sync>;

/// Applies [`Hedge`] to a client service: after a delay, a request that is
/// safe to repeat gets another copy, and the first success wins.
///
/// Defaults: [`DefaultClassifier`], one hedge per request, a
/// [`RetryBudget`] of its own (20% of the requests it may hedge, 10/s
/// floor), no breaker. See the [module docs](super) for the rules and the
/// recommended stack.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower_reissue::circuit::CircuitBreakerLayer;
/// use tower_reissue::{HedgeLayer, IdempotencyKeyLayer, RetryBudget, RetryLayer};
///
/// // One budget for retries and hedges, one breaker that stops both.
/// let budget = RetryBudget::new(0.2);
/// let breaker = CircuitBreakerLayer::new();
/// let stack = ServiceBuilder::new()
///     .layer(IdempotencyKeyLayer::new())
///     .layer(RetryLayer::new().budget(budget.clone()))
///     .layer(
///         HedgeLayer::new(Duration::from_millis(50))
///             .latency_percentile(0.95)
///             .shared_budget(budget)
///             .breaker(&breaker),
///     )
///     .layer(breaker);
/// # let _ = stack;
/// ```
pub struct HedgeLayer<C = DefaultClassifier> {
    pub(crate) classifier: C,
    // Everything but the classifier, so that changing the classifier's type
    // moves the rest as one value.
    pub(crate) settings: Settings,
}

/// The settings of a [`HedgeLayer`] other than its classifier.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) delay: Duration,
    pub(crate) max_hedges: u32,
    /// Shared by every clone of the layer and every service it makes: one
    /// picture of the service's latency.
    pub(crate) latencies: Option<Arc<Latencies>>,
    pub(crate) budget: Option<Budget>,
    pub(crate) breaker: Option<BreakerStates>,
}

/// The budget hedges draw on, and whether this layer pays into it.
#[derive(Clone)]
pub(crate) struct Budget {
    pub(crate) budget: RetryBudget,
    /// Whether each request the layer may hedge deposits: yes for a budget
    /// of its own, no for the retry layer's (which pays once per logical
    /// request already).
    pub(crate) deposits: bool,
}

impl HedgeLayer {
    /// Hedges sent `delay` after the copy before them, with the defaults.
    ///
    /// Choose `delay` above the latency of most successful answers (their
    /// p95 or p99): every request slower than the delay gets a copy, so a
    /// delay under the typical latency copies most requests. The budget
    /// caps the damage, not the waste.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::HedgeLayer::new(Duration::from_millis(50));
    /// # let _ = layer;
    /// ```
    pub fn new(delay: Duration) -> Self {
        HedgeLayer {
            classifier: DefaultClassifier::new(),
            settings: Settings {
                delay,
                max_hedges: 1,
                latencies: None,
                budget: Some(Budget {
                    budget: RetryBudget::default(),
                    deposits: true,
                }),
                breaker: None,
            },
        }
    }
}

impl<C> HedgeLayer<C> {
    /// Sets the classifier that tells a success (which wins the race) from
    /// a failure (which does not, while another copy is in flight).
    ///
    /// Use the classifier of the retry layer above, so that what the hedge
    /// layer keeps back is what that layer would retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use tower_reissue::{DefaultClassifier, HedgeLayer};
    ///
    /// let layer = HedgeLayer::new(Duration::from_millis(50))
    ///     .classifier(DefaultClassifier::new().retry_status(StatusCode::CONFLICT));
    /// # let _ = layer;
    /// ```
    pub fn classifier<C2>(self, classifier: C2) -> HedgeLayer<C2> {
        HedgeLayer {
            classifier,
            settings: self.settings,
        }
    }

    /// The most hedges per request (default 1), at most [`MAX_HEDGES`]
    /// (a larger value is taken as that); 0 turns hedging off.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::HedgeLayer::new(Duration::from_millis(50)).max_hedges(2);
    /// # let _ = layer;
    /// ```
    pub fn max_hedges(mut self, max_hedges: u32) -> Self {
        self.settings.max_hedges = max_hedges.min(MAX_HEDGES);
        self
    }

    /// Waits for a latency percentile of recent successes too: a hedge is
    /// sent after the larger of the fixed delay and that percentile
    /// (`0.95` for p95; clamped to `0.0..=1.0`, NaN taken as 1.0).
    ///
    /// The percentile is taken over the last 1,000 successes the layer saw
    /// (each measured from when its copy was sent), once there are 100; until
    /// then the fixed delay alone decides. When the whole service slows
    /// down, hedges wait longer rather than copy every request; the fixed
    /// delay stays the floor, so a fast, even service is not hedged at its
    /// own noise.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::HedgeLayer::new(Duration::from_millis(20))
    ///     .latency_percentile(0.95);
    /// # let _ = layer;
    /// ```
    pub fn latency_percentile(mut self, percentile: f64) -> Self {
        let percentile = if percentile.is_nan() {
            1.0
        } else {
            percentile.clamp(0.0, 1.0)
        };
        self.settings.latencies = Some(Arc::new(Latencies::new(percentile)));
        self
    }

    /// Hedges draw on `budget`, a budget of this layer's own: every request
    /// the layer may hedge pays in once, and every hedge withdraws once
    /// (from the balance of its host, for a per-host budget). A hedge the
    /// budget refuses is not sent.
    ///
    /// With [`RetryBudget::new(0.1)`](RetryBudget::new), at most about one
    /// request in ten gets a hedge, plus the budget's floor.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::{HedgeLayer, RetryBudget};
    /// let layer = HedgeLayer::new(Duration::from_millis(50)).budget(RetryBudget::new(0.1));
    /// # let _ = layer;
    /// ```
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Some(Budget {
            budget,
            deposits: true,
        });
        self
    }

    /// Hedges draw on the budget of the [`RetryLayer`](crate::RetryLayer)
    /// above (pass the same handle to both): that layer pays in once per
    /// logical request, and retries and hedges withdraw from one balance, so
    /// that together they stay within its ratio. This layer pays nothing in:
    /// it sees every retry as a request of its own, and paying for those
    /// would let retries fund themselves during an outage.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_reissue::{HedgeLayer, RetryBudget, RetryLayer};
    ///
    /// let budget = RetryBudget::new(0.2);
    /// let stack = ServiceBuilder::new()
    ///     .layer(RetryLayer::new().budget(budget.clone()))
    ///     .layer(HedgeLayer::new(Duration::from_millis(50)).shared_budget(budget));
    /// # let _ = stack;
    /// ```
    pub fn shared_budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Some(Budget {
            budget,
            deposits: false,
        });
        self
    }

    /// Hedges without a budget: only [`max_hedges`](Self::max_hedges)
    /// bounds the extra load. Not recommended: a slow API then gets a copy
    /// of every request slower than the delay, when it is slow because it
    /// is overloaded.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::HedgeLayer::new(Duration::from_millis(50)).no_budget();
    /// # let _ = layer;
    /// ```
    pub fn no_budget(mut self) -> Self {
        self.settings.budget = None;
        self
    }

    /// Sends no hedge to a host whose breaker is not closed: pass the
    /// [`CircuitBreakerLayer`] that sits below this layer (or any handle on
    /// the same breaker). While it is open the copy would be refused, and
    /// while it is half-open its probes are what tells whether the host is
    /// back, not extra copies.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::ServiceBuilder;
    /// use tower_reissue::HedgeLayer;
    /// use tower_reissue::circuit::CircuitBreakerLayer;
    ///
    /// let breaker = CircuitBreakerLayer::builder().per_host().build();
    /// let stack = ServiceBuilder::new()
    ///     .layer(HedgeLayer::new(Duration::from_millis(50)).breaker(&breaker))
    ///     .layer(breaker);
    /// # let _ = stack;
    /// ```
    pub fn breaker<B>(mut self, breaker: &CircuitBreakerLayer<B>) -> Self
    where
        B: Send + Sync + 'static,
    {
        let breaker = breaker.clone();
        self.settings.breaker = Some(Arc::new(move |uri: &Uri| breaker.state_for(uri)));
        self
    }

    /// The delay before the next hedge: the fixed one, or the percentile of
    /// recent successes when that is longer.
    #[inline]
    pub(crate) fn delay(&self) -> Duration {
        let percentile = self
            .settings
            .latencies
            .as_ref()
            .and_then(|latencies| latencies.current());
        match percentile {
            Some(percentile) => percentile.max(self.settings.delay),
            None => self.settings.delay,
        }
    }
}

impl<C: Clone> Clone for HedgeLayer<C> {
    fn clone(&self) -> Self {
        HedgeLayer {
            classifier: self.classifier.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<C> fmt::Debug for HedgeLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.settings;
        f.debug_struct("HedgeLayer")
            .field("delay", &settings.delay)
            .field("max_hedges", &settings.max_hedges)
            .field(
                "latency_percentile",
                &settings.latencies.as_ref().map(|l| l.percentile()),
            )
            .field("budget", &settings.budget.as_ref().map(|b| &b.budget))
            .field(
                "pays_into_budget",
                &settings.budget.as_ref().is_some_and(|b| b.deposits),
            )
            .field("breaker", &settings.breaker.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for HedgeLayer<C> {
    type Service = Hedge<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::from_layer(inner, Arc::new(self.clone()))
    }
}
