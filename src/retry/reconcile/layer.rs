//! The reconcile step of `RetryLayer`: its settings, and the glue the retry
//! future calls when an attempt's fate is unknown.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::{
    Probe, Reconcile, ReconcileEvent, ReconcileRequest, Reconciled, Reconciliation,
    SharedReconcile, is_conditional,
};
use crate::classify::{Outcome, RequestView};
use crate::request::{RequestTemplate, RetryResponse};
use crate::retry::GiveUpReason;
use crate::{BoxError, RetryLayer};

pub(crate) type ReconcileHook = Arc<dyn Fn(&ReconcileEvent<'_>) + Send + Sync>;

/// The reconcile settings of a `RetryLayer`.
#[derive(Clone, Default)]
pub(crate) struct ReconcileConfig {
    reconciler: Option<SharedReconcile>,
    pub(crate) timeout: Option<Duration>,
    on_reconcile: Option<ReconcileHook>,
}

impl ReconcileConfig {
    /// Whether a reconciler is set, so that a check before sending can be
    /// made.
    #[inline(always)]
    pub(crate) fn can_check(&self) -> bool {
        self.reconciler.is_some()
    }

    /// Asks the reconciler about `request`, if there is one.
    pub(crate) fn probe(&self, request: ReconcileRequest) -> Option<Probe> {
        self.reconciler
            .as_ref()
            .map(|reconciler| reconciler(request))
    }
}

impl<C> RetryLayer<C> {
    /// Asks `reconciler` whether an attempt took effect when its fate is
    /// unknown and repeating it blindly is not safe (a `Transient` verdict
    /// with processed `Maybe` on a non-idempotent request without an
    /// idempotency key): `NotApplied` lets the layer retry it,
    /// `Applied` ends it with a [`Reconciliation::Applied`] response, and
    /// anything else gives up with
    /// [`Unreconciled`](GiveUpReason::Unreconciled). See the
    /// [module docs](crate::reconcile).
    ///
    /// ```
    /// use tower_reissue::RetryLayer;
    /// use tower_reissue::reconcile::{ReconcileRequest, Reconciled};
    ///
    /// let layer = RetryLayer::new().max_attempts(5).reconcile(|request: ReconcileRequest| async move {
    ///     // e.g. GET /emails?reference={id} through a client of its own.
    ///     let _ = request.correlation_id();
    ///     Reconciled::Unknown
    /// });
    /// # let _ = layer;
    /// ```
    pub fn reconcile<R: Reconcile>(mut self, reconciler: R) -> Self {
        self.settings.reconcile.reconciler = Some(super::share(reconciler));
        self
    }

    /// How long a reconciler may take to answer; no answer in time counts as
    /// `Unknown`. By default only the [deadline](RetryLayer::deadline), if
    /// set, bounds it (like attempts, which have no timeout by default):
    /// bound the reconciler's own requests, or set this.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_reissue::RetryLayer::new().reconcile_timeout(Duration::from_secs(2));
    /// # let _ = layer;
    /// ```
    pub fn reconcile_timeout(mut self, timeout: Duration) -> Self {
        self.settings.reconcile.timeout = Some(timeout);
        self
    }

    /// Called with each reconciler's answer (or its error, or
    /// [`ReconcileTimedOut`](super::ReconcileTimedOut)). For metrics; it
    /// runs inline, so keep it quick.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let probes = Arc::new(AtomicU64::new(0));
    /// let counter = probes.clone();
    /// let layer = tower_reissue::RetryLayer::new().on_reconcile(move |_event| {
    ///     counter.fetch_add(1, Ordering::Relaxed);
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_reconcile<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ReconcileEvent<'_>) + Send + Sync + 'static,
    {
        self.settings.reconcile.on_reconcile = Some(Arc::new(hook));
        self
    }
}

/// What to do with an attempt the retry rules gave up on.
pub(crate) enum Begun {
    /// Ask the reconciler, within [`ReconcileConfig::timeout`] and the
    /// deadline.
    Probe(Probe),
    /// The 412 of a conditional request repeated after an ambiguous
    /// attempt: the request took effect.
    Applied,
    /// Hand the failure to the caller for this reason.
    GiveUp(GiveUpReason),
}

/// Decides whether a give-up is settled by reconciliation instead.
/// `ambiguous`: an earlier attempt of the request may have taken effect.
pub(crate) fn begin<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    request: &RequestView<'_>,
    outcome: &Outcome<'_>,
    reason: GiveUpReason,
    ambiguous: bool,
    deadline: Option<Instant>,
) -> Begun {
    match reason {
        GiveUpReason::Permanent
            if ambiguous
                && outcome.status() == Some(http::StatusCode::PRECONDITION_FAILED)
                && is_conditional(request.headers()) =>
        {
            tracing::debug!(
                target: "tower_reissue::reconcile",
                method = %request.method(),
                uri = %request.uri(),
                attempt = request.attempt(),
                "412 after an ambiguous attempt of a conditional request: applied"
            );
            Begun::Applied
        }
        GiveUpReason::NotSafe => {
            let Some(reconciler) = &config.settings.reconcile.reconciler else {
                return Begun::GiveUp(reason);
            };
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Begun::GiveUp(GiveUpReason::Deadline);
            }
            // A probe is a request to the same API: it is paid for like a
            // retry, so that probes cannot grow into a storm of their own.
            if let Some(budget) = &config.settings.budget {
                if !budget.withdraw_for(request.uri()) {
                    return Begun::GiveUp(GiveUpReason::BudgetExhausted);
                }
            }
            tracing::debug!(
                target: "tower_reissue::reconcile",
                method = %request.method(),
                uri = %request.uri(),
                attempt = request.attempt(),
                correlation_id = request.idempotency_key(),
                "reconciling"
            );
            let probe = reconciler(ReconcileRequest::from_attempt(
                request,
                template.kept_body().ok(),
                outcome,
            ));
            Begun::Probe(probe)
        }
        reason => Begun::GiveUp(reason),
    }
}

/// What a reconciler's answer means for the request.
pub(crate) enum Settled {
    /// Retry under the usual rules, as if processed `No`.
    NotApplied,
    /// Hand the last result to the caller as applied.
    Applied,
    /// Give up with `Unreconciled`.
    Unreconciled,
}

/// Reports a reconciler's answer (tracing, hook) and says what it means.
pub(crate) fn settle<C>(
    config: &RetryLayer<C>,
    request: &RequestView<'_>,
    answer: Result<Reconciled, BoxError>,
) -> Settled {
    match &answer {
        Ok(answer) => tracing::debug!(
            target: "tower_reissue::reconcile",
            method = %request.method(),
            uri = %request.uri(),
            attempt = request.attempt(),
            %answer,
            "reconciled"
        ),
        Err(error) => tracing::debug!(
            target: "tower_reissue::reconcile",
            method = %request.method(),
            uri = %request.uri(),
            attempt = request.attempt(),
            %error,
            "reconciler failed"
        ),
    }
    crate::telemetry::reconciled(match &answer {
        Ok(Reconciled::Applied) => "applied",
        Ok(Reconciled::NotApplied) => "not_applied",
        Ok(Reconciled::Unknown) => "unknown",
        Err(error) if error.is::<super::ReconcileTimedOut>() => "timeout",
        Err(_) => "error",
    });
    if let Some(hook) = &config.settings.reconcile.on_reconcile {
        hook(&ReconcileEvent {
            request: *request,
            attempt: request.attempt(),
            answer: answer.as_ref().map(|a| *a).map_err(|e| &**e),
        });
    }
    match answer {
        Ok(Reconciled::NotApplied) => Settled::NotApplied,
        Ok(Reconciled::Applied) => Settled::Applied,
        Ok(Reconciled::Unknown) | Err(_) => Settled::Unreconciled,
    }
}

/// The caller's answer for a request that took effect: the last response
/// marked applied, or, if the attempt got no response, an
/// [`AppliedResponseLost`](super::AppliedResponseLost) error.
pub(crate) fn applied<R: RetryResponse>(result: Result<R, BoxError>) -> Result<R, BoxError> {
    match result {
        Ok(mut response) => {
            response.extensions_mut().insert(Reconciliation::Applied);
            Ok(response)
        }
        Err(error) => Err(Box::new(super::AppliedResponseLost::new(error))),
    }
}
