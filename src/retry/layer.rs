use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

use super::reconcile::ReconcileConfig;
use super::sink::GiveUpSink;
use super::{GiveUpEvent, Retry, RetryEvent};
use crate::{Backoff, DefaultClassifier, RetryBudget};

pub(crate) type RetryHook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;
pub(crate) type GiveUpHook = Arc<dyn Fn(&GiveUpEvent<'_>) + Send + Sync>;

/// Applies [`Retry`] to a client service.
///
/// Defaults: [`DefaultClassifier`], 3 attempts, exponential backoff with full
/// jitter (100 ms base, 10 s cap; after throttling 1 s base, 10 s cap), a
/// [`RetryBudget`] of 20% (shared by every service this layer makes),
/// `max_retry_after` 60 s, 64 KiB replay limit, no deadline, no per-attempt
/// timeout.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower::ServiceBuilder;
/// use tower_reissue::{Backoff, DefaultClassifier, RetryBudget, RetryLayer};
///
/// let layer = RetryLayer::new()
///     .max_attempts(5)
///     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10)))
///     .budget(RetryBudget::new(0.2))
///     .max_retry_after(Duration::from_secs(60))
///     .deadline(Duration::from_secs(30))
///     .attempt_timeout(Duration::from_secs(5))
///     .replay_limit(64 * 1024)
///     .classifier(DefaultClassifier::new().retry_status(StatusCode::CONFLICT));
///
/// let service = ServiceBuilder::new().layer(layer).service(tower::service_fn(
///     |_req: http::Request<tower_reissue::ReplayBody<String>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     },
/// ));
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct RetryLayer<C = DefaultClassifier> {
    pub(crate) classifier: C,
    // Everything but the classifier, so that changing the classifier's type
    // moves the rest as one value.
    pub(crate) settings: Settings,
}

/// The settings of a [`RetryLayer`] other than its classifier.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) backoff: Backoff,
    pub(crate) throttle_backoff: Backoff,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) max_attempts: u32,
    pub(crate) max_retry_after: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) replay_limit: usize,
    pub(crate) on_retry: Option<RetryHook>,
    pub(crate) on_give_up: Option<GiveUpHook>,
    pub(crate) give_up_sink: Option<Arc<dyn GiveUpSink>>,
    pub(crate) reconcile: ReconcileConfig,
}

impl RetryLayer {
    /// A layer with the defaults.
    ///
    /// ```
    /// let layer = tower_reissue::RetryLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        RetryLayer {
            classifier: DefaultClassifier::new(),
            settings: Settings {
                backoff: Backoff::default(),
                throttle_backoff: Backoff::throttling(),
                budget: Some(RetryBudget::default()),
                max_attempts: 3,
                max_retry_after: Duration::from_secs(60),
                deadline: None,
                attempt_timeout: None,
                replay_limit: 64 * 1024,
                on_retry: None,
                on_give_up: None,
                give_up_sink: None,
                reconcile: ReconcileConfig::default(),
            },
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> RetryLayer<C> {
    /// Uses another classifier: a [`DefaultClassifier`] with overrides, your
    /// own [`Classifier`](crate::Classifier), or a closure.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_reissue::{DefaultClassifier, RetryLayer};
    /// let layer = RetryLayer::new().classifier(DefaultClassifier::new().retry_status(StatusCode::CONFLICT));
    /// # let _ = layer;
    /// ```
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer {
            classifier,
            settings: self.settings,
        }
    }

    /// The most attempts per logical request, counting the first (default 3).
    /// 0 is taken as 1: the request is always sent once.
    ///
    /// ```
    /// let layer = tower_reissue::RetryLayer::new().max_attempts(5);
    /// # let _ = layer;
    /// ```
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.settings.max_attempts = max_attempts.max(1);
        self
    }

    /// The delay strategy when the server gives none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::{Backoff, RetryLayer};
    /// let layer = RetryLayer::new().backoff(Backoff::fixed(Duration::from_millis(200)));
    /// # let _ = layer;
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// The delay strategy after throttling (a
    /// [`Throttled`](crate::Verdict::Throttled) verdict: 429, or a 503 that
    /// says when to come back) when the server gives no usable delay. The
    /// default, [`Backoff::throttling`], is exponential with full jitter,
    /// base 1 s, cap 10 s: the AWS SDKs wait 1 s before a retry after
    /// throttling against 50 ms after a transient error, as a rate limit
    /// rarely lifts within the transient base of 100 ms. The server's own
    /// `Retry-After` still wins, shorter or longer (see the
    /// [module docs](super)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::{Backoff, RetryLayer};
    /// let layer = RetryLayer::new()
    ///     .backoff(Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)))
    ///     .throttle_backoff(Backoff::exponential(Duration::from_secs(2), Duration::from_secs(30)));
    /// # let _ = layer;
    /// ```
    pub fn throttle_backoff(mut self, backoff: Backoff) -> Self {
        self.settings.throttle_backoff = backoff;
        self
    }

    /// The retry budget. Pass the same handle to several layers to make them
    /// share it. Each logical request deposits once and each retry withdraws
    /// once, from the balance of the request's authority if the budget was
    /// built [`per_host`](crate::budget::RetryBudgetBuilder::per_host).
    ///
    /// ```
    /// use tower_reissue::{RetryBudget, RetryLayer};
    /// let shared = RetryBudget::new(0.1);
    /// let a = RetryLayer::new().budget(shared.clone());
    /// let b = RetryLayer::new().budget(shared);
    /// # let _ = (a, b);
    /// ```
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Some(budget);
        self
    }

    /// Retries without a budget: only `max_attempts` bounds the load. Not
    /// recommended for a fleet of clients talking to one API.
    ///
    /// ```
    /// let layer = tower_reissue::RetryLayer::new().no_budget();
    /// # let _ = layer;
    /// ```
    pub fn no_budget(mut self) -> Self {
        self.settings.budget = None;
        self
    }

    /// The longest server-requested delay the layer waits for (default
    /// 60 s). A longer `Retry-After` returns the response at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::RetryLayer::new().max_retry_after(Duration::from_secs(10));
    /// # let _ = layer;
    /// ```
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.settings.max_retry_after = max;
        self
    }

    /// An overall deadline per logical request, from the call: no delay
    /// crosses it, and an attempt still in flight when it passes fails with
    /// [`DeadlineExceeded`](super::DeadlineExceeded).
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::RetryLayer::new().deadline(Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = Some(deadline);
        self
    }

    /// A timeout for each attempt. An attempt that times out fails with
    /// [`AttemptTimedOut`](super::AttemptTimedOut), a transient error the
    /// server may have acted on.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::RetryLayer::new().attempt_timeout(Duration::from_secs(5));
    /// # let _ = layer;
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = Some(timeout);
        self
    }

    /// How many body bytes are kept for replays (default 64 KiB). A larger
    /// body is sent once and not retried.
    ///
    /// ```
    /// let layer = tower_reissue::RetryLayer::new().replay_limit(1024 * 1024);
    /// # let _ = layer;
    /// ```
    pub fn replay_limit(mut self, limit: usize) -> Self {
        self.settings.replay_limit = limit;
        self
    }

    /// Called before each retry, with the failed attempt and the delay. For
    /// metrics; it runs inline, so keep it quick.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let retries = Arc::new(AtomicU64::new(0));
    /// let counter = retries.clone();
    /// let layer = tower_reissue::RetryLayer::new().on_retry(move |_event| {
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_retry<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RetryEvent<'_>) + Send + Sync + 'static,
    {
        self.settings.on_retry = Some(Arc::new(hook));
        self
    }

    /// Called when a failure is handed to the caller, with the reason and
    /// enough of the request (method, URI, headers, idempotency key) to queue
    /// it for a later replay or a reconciliation.
    ///
    /// ```
    /// use tower_reissue::retry::GiveUpReason;
    /// let layer = tower_reissue::RetryLayer::new().on_give_up(|event| {
    ///     if event.reason == GiveUpReason::NotSafe {
    ///         // e.g. enqueue (method, uri, key) for reconciliation
    ///         let _ = (event.request.method(), event.request.uri());
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_give_up<F>(mut self, hook: F) -> Self
    where
        F: Fn(&GiveUpEvent<'_>) + Send + Sync + 'static,
    {
        self.settings.on_give_up = Some(Arc::new(hook));
        self
    }
}

impl<C> RetryLayer<C> {
    /// Hands what the layer gives up on to `sink` (see
    /// [`dead_letters`](Self::dead_letters), the sink this crate provides).
    pub(crate) fn give_up_sink(mut self, sink: Arc<dyn GiveUpSink>) -> Self {
        self.settings.give_up_sink = Some(sink);
        self
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("classifier", &self.classifier)
            .field("backoff", &self.settings.backoff)
            .field("throttle_backoff", &self.settings.throttle_backoff)
            .field("budget", &self.settings.budget)
            .field("max_attempts", &self.settings.max_attempts)
            .field("max_retry_after", &self.settings.max_retry_after)
            .field("deadline", &self.settings.deadline)
            .field("attempt_timeout", &self.settings.attempt_timeout)
            .field("replay_limit", &self.settings.replay_limit)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_layer(inner, Arc::new(self.clone()))
    }
}
