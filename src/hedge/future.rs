use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::HedgeLayer;
use crate::circuit::BreakerState;
use crate::classify::{Classifier, Outcome};
use crate::error::BoxError;
use crate::request::{HttpTemplate, ReplayBody, RequestTemplate, RetryResponse, with_attempts};
use crate::telemetry::{self, AttemptSpan};

pin_project! {
    /// The response future of [`Hedge`](super::Hedge).
    ///
    /// It resolves to the first copy's answer when that succeeds first, to
    /// a hedge's when a hedge succeeds first, and to the first copy's when
    /// none succeeds; the copies still running are dropped (cancelled) as
    /// soon as it resolves.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Empty;
    /// use tower::{Layer, Service, ServiceExt};
    /// use tower_reissue::hedge::{HedgeLayer, ResponseFuture};
    /// use tower_reissue::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let inner = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
    ///     Ok::<_, Infallible>(Response::new(()))
    /// });
    /// let mut client = HedgeLayer::new(Duration::from_millis(50)).layer(inner);
    /// let (body, _) = ReplayBody::new(Empty::new(), 64 * 1024);
    /// let request = Request::get("http://api.example/").body(body).unwrap();
    /// let future: ResponseFuture<_, _, _> = client.ready().await.unwrap().call(request);
    /// assert!(future.await.is_ok());
    /// # }
    /// ```
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<http::Request<ReplayBody<B>>>,
    {
        #[pin]
        first: First<S::Future>,
        // `None` for a request that is not hedged: it costs no allocation.
        race: Option<Pin<Box<Race<S, B, C>>>>,
    }
}

pin_project! {
    #[project = FirstProj]
    enum First<F> {
        Running { #[pin] future: F },
        // Answered, or dropped once another copy won.
        Finished,
    }
}

pin_project! {
    /// Everything a hedged request needs beyond its first copy.
    struct Race<S, B, C>
    where
        S: Service<http::Request<ReplayBody<B>>>,
    {
        // When the next hedge is due.
        #[pin]
        timer: Sleep,
        config: Arc<HedgeLayer<C>>,
        // Cloned for each hedge: a copy drives a clone of its own.
        service: S,
        template: HttpTemplate<B>,
        first_sent: Instant,
        // Copies sent, the first included.
        sent: u32,
        // Whether another hedge may still go out: not once a copy failed
        // (a failure is the retry layer's to act on, and a 409 from a
        // hedge says the first copy is still running), nor once one was
        // refused.
        more: bool,
        // A hedge made and waiting for its service to be ready.
        readying: Option<(S, http::Request<ReplayBody<B>>)>,
        hedges: Vec<Copy<S::Future>>,
        // The first copy's failed result, handed to the caller if no hedge
        // succeeds.
        kept: Option<Result<S::Response, BoxError>>,
    }
}

/// A hedge in flight.
struct Copy<F> {
    // Boxed: hedges are few, and the future of a request that gets none
    // stays the size of its first copy.
    future: Pin<Box<F>>,
    span: AttemptSpan,
    number: u32,
    sent_at: Instant,
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>>,
{
    /// A request that is not hedged: its one copy, with `Attempts(1)`.
    #[inline]
    pub(crate) fn alone(future: S::Future) -> Self {
        ResponseFuture {
            first: First::Running { future },
            race: None,
        }
    }

    /// A request that may be hedged, its first copy sent.
    pub(crate) fn racing(
        future: S::Future,
        service: S,
        template: HttpTemplate<B>,
        config: Arc<HedgeLayer<C>>,
    ) -> Self {
        // One clock read for both: `after` would read it again.
        let first_sent = Instant::now();
        let due = first_sent
            .checked_add(config.delay())
            .unwrap_or_else(|| crate::time::after(config.delay()));
        ResponseFuture {
            first: First::Running { future },
            race: Some(Box::pin(Race {
                timer: tokio::time::sleep_until(due),
                config,
                service,
                template,
                first_sent,
                sent: 1,
                more: true,
                readying: None,
                hedges: Vec::new(),
                kept: None,
            })),
        }
    }
}

impl<S, B, C> Future for ResponseFuture<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    C: Classifier,
    B: http_body::Body,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(race) = this.race.as_mut() else {
            return match this.first.as_mut().project() {
                FirstProj::Running { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    this.first.set(First::Finished);
                    Poll::Ready(with_attempts(result, 1))
                }
                FirstProj::Finished => {
                    Poll::Ready(Err("the hedge future was polled after it finished".into()))
                }
            };
        };
        let output = race.as_mut().poll_race(this.first.as_mut(), cx);
        if output.is_ready() {
            // The copies still running are dropped now, which cancels them,
            // not whenever the caller gets round to dropping this future.
            this.first.set(First::Finished);
            *this.race = None;
        }
        output
    }
}

impl<S, B, C> Race<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    C: Classifier,
    B: http_body::Body,
{
    fn poll_race(
        mut self: Pin<&mut Self>,
        mut first: Pin<&mut First<S::Future>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let mut this = self.as_mut().project();
            // Whether something changed that the next round must look at
            // (a hedge made, or sent): without it, every part is pending
            // and has the waker.
            let mut progress = false;

            if let FirstProj::Running { future } = first.as_mut().project() {
                if let Poll::Ready(result) = future.poll(cx) {
                    first.set(First::Finished);
                    let result = result.map_err(Into::into);
                    let sent_at = *this.first_sent;
                    if succeeded(this.config, this.template, 1, None, &result) {
                        record_latency(this.config, sent_at);
                        return Poll::Ready(with_attempts(result, *this.sent));
                    }
                    *this.more = false;
                    *this.readying = None;
                    if this.hedges.is_empty() {
                        return Poll::Ready(with_attempts(result, *this.sent));
                    }
                    *this.kept = Some(result);
                }
            }

            let mut i = 0;
            while i < this.hedges.len() {
                let copy = &mut this.hedges[i];
                let entered = copy.span.enter();
                let polled = copy.future.as_mut().poll(cx);
                drop(entered);
                let Poll::Ready(result) = polled else {
                    i += 1;
                    continue;
                };
                let result = result.map_err(Into::into);
                let copy = this.hedges.swap_remove(i);
                if succeeded(
                    this.config,
                    this.template,
                    copy.number,
                    Some(&copy.span),
                    &result,
                ) {
                    telemetry::hedge("won");
                    record_latency(this.config, copy.sent_at);
                    return Poll::Ready(with_attempts(result, *this.sent));
                }
                // A failed hedge never wins: a 409 from a deduplicating
                // server means the first copy is still running there, and
                // its answer is the one to wait for.
                *this.more = false;
                *this.readying = None;
                if this.hedges.is_empty() {
                    if let Some(result) = this.kept.take() {
                        return Poll::Ready(with_attempts(result, *this.sent));
                    }
                }
            }

            if let Some((service, _)) = this.readying.as_mut() {
                match service.poll_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(error)) => {
                        let error: BoxError = error.into();
                        not_sent(this.template, "service_not_ready", Some(&*error));
                        *this.readying = None;
                        *this.more = false;
                    }
                    Poll::Ready(Ok(())) => {
                        if let Some((service, attempt)) = this.readying.take() {
                            let max_hedges = this.config.settings.max_hedges;
                            if send(
                                this.config,
                                this.template,
                                this.hedges,
                                this.sent,
                                service,
                                attempt,
                            ) {
                                if *this.sent <= max_hedges {
                                    let due = crate::time::after(this.config.delay());
                                    this.timer.as_mut().reset(due);
                                }
                                progress = true;
                            } else {
                                *this.more = false;
                            }
                        }
                    }
                }
            }

            let due = *this.more
                && this.readying.is_none()
                && *this.sent <= this.config.settings.max_hedges;
            if due && this.timer.as_mut().poll(cx).is_ready() {
                match make_hedge(this.config, this.template) {
                    Ok(attempt) => {
                        *this.readying = Some((this.service.clone(), attempt));
                        progress = true;
                    }
                    Err(reason) => {
                        not_sent(this.template, reason, None);
                        *this.more = false;
                    }
                }
            }

            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Whether a copy's result wins: the classifier calls it a success. Records
/// the end of the copy's span, if it has one (hedges do; the first copy runs
/// in the caller's span).
fn succeeded<C: Classifier, B: http_body::Body, R: RetryResponse>(
    config: &HedgeLayer<C>,
    template: &HttpTemplate<B>,
    number: u32,
    span: Option<&AttemptSpan>,
    result: &Result<R, BoxError>,
) -> bool {
    let request = template.view().with_attempt(number);
    let outcome = Outcome::of(result);
    let verdict = config.classifier.classify(&request, &outcome);
    if let Some(span) = span {
        let _ = span.ended(&request, &outcome, verdict);
    }
    verdict == crate::classify::Verdict::Success
}

/// Counts a success's latency into the percentile, if the layer keeps one.
fn record_latency<C>(config: &HedgeLayer<C>, sent_at: Instant) {
    if let Some(latencies) = &config.settings.latencies {
        latencies.record(sent_at.elapsed());
    }
}

/// The next hedge's request, or why there is none: the breaker is not
/// closed, or the body cannot be copied now.
fn make_hedge<C, B: http_body::Body>(
    config: &HedgeLayer<C>,
    template: &mut HttpTemplate<B>,
) -> Result<http::Request<ReplayBody<B>>, &'static str> {
    if let Some(state_for) = &config.settings.breaker {
        if state_for(template.view().uri()) != BreakerState::Closed {
            return Err("breaker_open");
        }
    }
    // `InUse` when the first copy is still streaming a body that was not
    // whole when wrapped: two copies cannot read one stream.
    template.replay().map_err(|_| "not_replayable")
}

/// Pays for and sends a hedge whose service is ready; `false` when the
/// budget refuses it.
fn send<S, B, C>(
    config: &HedgeLayer<C>,
    template: &HttpTemplate<B>,
    hedges: &mut Vec<Copy<S::Future>>,
    sent: &mut u32,
    mut service: S,
    attempt: http::Request<ReplayBody<B>>,
) -> bool
where
    S: Service<http::Request<ReplayBody<B>>>,
    B: http_body::Body,
{
    let request = template.view();
    // Withdrawn only now that the hedge can go: a hedge dropped while its
    // service was getting ready costs nothing.
    if let Some(budget) = &config.settings.budget {
        if !budget.budget.withdraw_for(request.uri()) {
            not_sent(template, "budget_exhausted", None);
            return false;
        }
    }
    let number = *sent + 1;
    tracing::debug!(
        target: "tower_reissue::hedge",
        method = %request.method(),
        uri = %request.uri(),
        copy = number,
        "hedging"
    );
    telemetry::hedge("sent");
    let span = AttemptSpan::open(&request, number);
    let entered = span.enter();
    let future = service.call(attempt);
    drop(entered);
    *sent = number;
    hedges.push(Copy {
        future: Box::pin(future),
        span,
        number,
        sent_at: Instant::now(),
    });
    true
}

/// The one place a hedge that was due and not sent is reported.
fn not_sent<B: http_body::Body>(
    template: &HttpTemplate<B>,
    reason: &'static str,
    error: Option<&(dyn std::error::Error + 'static)>,
) {
    let request = template.view();
    tracing::debug!(
        target: "tower_reissue::hedge",
        method = %request.method(),
        uri = %request.uri(),
        reason,
        error = error.map(tracing::field::display),
        "hedge not sent"
    );
    telemetry::hedge(reason);
}
