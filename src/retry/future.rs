use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{
    AttemptTimedOut, Attempts, DeadlineExceeded, GiveUpEvent, GiveUpReason, NotReplayable,
    RetryEvent, RetryLayer, safety, sink,
};
use crate::BoxError;
use crate::classify::{Classifier, Outcome, RequestView};
use crate::reconcile::{Begun, ReconcileTimedOut, Settled};
use crate::request::{RequestTemplate, RetryResponse};
use crate::telemetry;
use crate::{Processed, Verdict};

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, T, C>
    where
        S: Service<T::Attempt>,
        T: RequestTemplate,
    {
        #[pin]
        state: State<S::Future>,
        // The current attempt's span: entered while its future is polled.
        span: telemetry::AttemptSpan,
        // One timer, reset between uses: the attempt's timeout while calling,
        // the delay while waiting. Boxed and created on first use, so the
        // success path without timeouts neither allocates nor carries it.
        timer: Option<Pin<Box<Sleep>>>,
        // The failed attempt's result, kept through the delay only when the
        // body copy was still held below (a timed-out attempt's connection
        // may hand it back late): if the copy never comes back, the caller
        // gets this rather than an error of the layer's own. Boxed: only a
        // failure fills it, and the future is moved whole on every call.
        last: Option<Box<Result<S::Response, BoxError>>>,
        last_verdict: Verdict,
        // The reconciler's probe while reconciling: boxed once more so that
        // it costs the future one pointer.
        probe: Option<Box<crate::reconcile::Probe>>,
        // An earlier attempt may have taken effect: a 412 to a conditional
        // request then means it did.
        ambiguous: bool,
        service: S,
        template: T,
        config: Arc<RetryLayer<C>>,
        attempt: u32,
        previous_delay: Duration,
        deadline: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Waiting,
        Ready,
        // Asking the reconciler (its probe in `probe`) about the attempt
        // whose result is in `last`. The probe is kept outside the state: a
        // state that owns nothing but the attempt's future is dropped inline
        // when the attempt ends, which the success path pays every time.
        Reconciling,
    }
}

impl<S, T, C> ResponseFuture<S, T, C>
where
    S: Service<T::Attempt>,
    T: RequestTemplate,
{
    /// The first attempt's timer, if it has a timeout or a deadline.
    #[inline(always)]
    pub(crate) fn timer(
        config: &RetryLayer<C>,
        deadline: Option<Instant>,
    ) -> Option<Pin<Box<Sleep>>> {
        let mut timer = None;
        if let Some(at) = attempt_ends(config.settings.attempt_timeout, deadline) {
            set_timer(&mut timer, at);
        }
        timer
    }

    #[inline(always)]
    pub(crate) fn new(
        future: S::Future,
        span: telemetry::AttemptSpan,
        timer: Option<Pin<Box<Sleep>>>,
        service: S,
        template: T,
        config: Arc<RetryLayer<C>>,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            span,
            timer,
            last: None,
            last_verdict: Verdict::Success,
            probe: None,
            ambiguous: false,
            service,
            template,
            config,
            attempt: 1,
            previous_delay: Duration::ZERO,
            deadline,
        }
    }
}

/// When one attempt (or probe) must end: its timeout or the deadline,
/// whichever comes first.
#[inline]
fn attempt_ends(timeout: Option<Duration>, deadline: Option<Instant>) -> Option<Instant> {
    let by_timeout = timeout.map(crate::time::after);
    match (by_timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn expired(timer: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> bool {
    timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
}

fn set_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(sleep) => sleep.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

impl<S, T, C> Future for ResponseFuture<S, T, C>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    T: RequestTemplate,
    C: Classifier,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            // Projected afresh each time round, and the failure paths given
            // the future rather than this projection: a projection passed by
            // reference would be written out to the stack on every poll.
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let entered = this.span.enter();
                    let polled = future.poll(cx);
                    drop(entered);
                    let result = match polled {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => {
                            if !expired(this.timer, cx) {
                                return Poll::Pending;
                            }
                            Err(timed_out(*this.deadline))
                        }
                    };
                    // Drop the finished attempt first: it may still hold the
                    // body copy the next attempt needs.
                    this.state.set(State::Ready);
                    this.template.attempt_done();
                    let request = this.template.view().with_attempt(*this.attempt);
                    let outcome = outcome_of(&result);
                    let verdict = this.config.classifier.classify(&request, &outcome);
                    if verdict == Verdict::Success {
                        // The common case, decided here: nothing below it
                        // (reconciling, retrying, giving up) is paid for.
                        let _ = this.span.ended(&request, &outcome, verdict);
                        telemetry::succeeded(*this.attempt);
                        return Poll::Ready(with_attempts(result, *this.attempt));
                    }
                    if let Some(result) = after_failure(self.as_mut(), result, verdict) {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Reconciling => {
                    let polled = match this.probe.as_mut() {
                        Some(probe) => probe.as_mut().as_mut().poll(cx),
                        // Never: the probe is set with the state.
                        None => Poll::Ready(Err("the reconciler's probe is gone".into())),
                    };
                    let answer = match polled {
                        Poll::Ready(answer) => answer,
                        Poll::Pending => {
                            if !expired(this.timer, cx) {
                                return Poll::Pending;
                            }
                            Err(Box::new(ReconcileTimedOut) as BoxError)
                        }
                    };
                    if let Some(result) = after_probe(self.as_mut(), answer) {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Waiting => {
                    if let Some(timer) = this.timer.as_mut() {
                        ready!(timer.as_mut().poll(cx));
                    }
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        let _attempt = this.span.enter();
                        let attempts = *this.attempt - 1;
                        let request = this.template.view().with_attempt(attempts);
                        let reason = GiveUpReason::ServiceNotReady;
                        let parked = (&*this.template, this.last.as_deref());
                        let verdict = *this.last_verdict;
                        give_up(this.config, request, attempts, verdict, reason, parked);
                        return Poll::Ready(
                            this.last
                                .take()
                                .map_or_else(|| Err(error.into()), |last| *last),
                        );
                    }
                    let request = match this.template.replay() {
                        Ok(request) => request,
                        Err(why) => {
                            let attempts = *this.attempt - 1;
                            let request = this.template.view().with_attempt(attempts);
                            let reason = GiveUpReason::NotReplayable(why);
                            let _attempt = this.span.enter();
                            let parked = (&*this.template, this.last.as_deref());
                            let verdict = *this.last_verdict;
                            give_up(this.config, request, attempts, verdict, reason, parked);
                            return Poll::Ready(
                                this.last
                                    .take()
                                    .map_or_else(|| Err(why.into()), |last| *last),
                            );
                        }
                    };
                    *this.last = None;
                    *this.span = telemetry::AttemptSpan::open(&this.template.view(), *this.attempt);
                    let entered = this.span.enter();
                    let future = this.template.send(this.service, request);
                    drop(entered);
                    match attempt_ends(this.config.settings.attempt_timeout, *this.deadline) {
                        Some(at) => set_timer(this.timer, at),
                        // No bound on this attempt: the delay's timer must
                        // not fire as a timeout.
                        None => *this.timer = None,
                    }
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// Acts on a failed attempt (any verdict but `Success`): the caller's
/// result, or `None` once a reconciler's probe or the next attempt is set
/// up. Kept out of `poll` so that the success path carries none of it.
#[cold]
#[inline(never)]
fn after_failure<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    result: Result<S::Response, BoxError>,
    verdict: Verdict,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
    C: Classifier,
{
    let this = &mut future.project();
    let request = this.template.view().with_attempt(*this.attempt);
    let outcome = outcome_of(&result);
    let error_type = this.span.ended(&request, &outcome, verdict);
    let decision = decide(
        this.config,
        this.template,
        &request,
        verdict,
        *this.attempt,
        *this.previous_delay,
        *this.deadline,
    );
    let (delay, hold) = match decision {
        Ok(decided) => decided,
        Err(mut reason) => {
            // The decision's events belong to this attempt's span.
            let _entered = this.span.enter();
            if let Some(failed) = reason {
                match crate::reconcile::begin(
                    this.config,
                    this.template,
                    &request,
                    &outcome,
                    failed,
                    *this.ambiguous,
                    *this.deadline,
                ) {
                    Begun::GiveUp(failed) => reason = Some(failed),
                    Begun::Applied => {
                        telemetry::succeeded(*this.attempt);
                        let result = crate::reconcile::applied(result);
                        return Some(with_attempts(result, *this.attempt));
                    }
                    Begun::Probe(probe) => {
                        let timeout = this.config.settings.reconcile.timeout;
                        match attempt_ends(timeout, *this.deadline) {
                            Some(at) => set_timer(this.timer, at),
                            None => *this.timer = None,
                        }
                        *this.last = Some(Box::new(result));
                        *this.last_verdict = verdict;
                        *this.probe = Some(Box::new(probe));
                        this.state.set(State::Reconciling);
                        return None;
                    }
                }
            }
            if let Some(reason) = reason {
                let parked = (&*this.template, Some(&result));
                give_up(this.config, request, *this.attempt, verdict, reason, parked);
            } else {
                telemetry::succeeded(*this.attempt);
            }
            return Some(with_attempts(result, *this.attempt));
        }
    };
    let error_type = error_type.as_ref();
    schedule_retry(this, result, verdict, error_type, delay, hold);
    None
}

/// Acts on the reconciler's answer about the attempt held in `last`: the
/// caller's result, or `None` once the next attempt is set up. Kept out of
/// `poll` (and cold) so that the attempt's path stays as lean as without
/// reconciliation.
#[cold]
#[inline(never)]
fn after_probe<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    answer: Result<crate::reconcile::Reconciled, BoxError>,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
{
    let this = &mut future.project();
    this.state.set(State::Ready);
    *this.probe = None;
    // The probe's answer and what follows belong to the probed attempt.
    let entered = this.span.enter();
    let result = this.last.take().map_or_else(
        || Err("the reconciled attempt's result is gone".into()),
        |last| *last,
    );
    let request = this.template.view().with_attempt(*this.attempt);
    let verdict = match crate::reconcile::settle(this.config, &request, answer) {
        Settled::Applied => {
            telemetry::succeeded(*this.attempt);
            let result = crate::reconcile::applied(result);
            return Some(with_attempts(result, *this.attempt));
        }
        Settled::Unreconciled => {
            let (verdict, reason) = (*this.last_verdict, GiveUpReason::Unreconciled);
            let parked = (&*this.template, Some(&result));
            give_up(this.config, request, *this.attempt, verdict, reason, parked);
            return Some(with_attempts(result, *this.attempt));
        }
        Settled::NotApplied => Verdict::Transient {
            processed: Processed::No,
            retry_after: this.last_verdict.retry_after(),
        },
    };
    let decision = decide(
        this.config,
        this.template,
        &request,
        verdict,
        *this.attempt,
        *this.previous_delay,
        *this.deadline,
    );
    match decision {
        Ok((delay, hold)) => {
            let error_type = telemetry::ErrorType::of(&outcome_of(&result));
            drop(entered);
            schedule_retry(this, result, verdict, Some(&error_type), delay, hold)
        }
        Err(reason) => {
            if let Some(reason) = reason {
                let parked = (&*this.template, Some(&result));
                give_up(this.config, request, *this.attempt, verdict, reason, parked);
            }
            return Some(with_attempts(result, *this.attempt));
        }
    }
    None
}

/// Sets up the next attempt after `delay`; `result` is the failed one.
#[inline(never)]
fn schedule_retry<S, T, C>(
    this: &mut ResponseFutureProj<'_, S, T, C>,
    mut result: Result<S::Response, BoxError>,
    verdict: Verdict,
    error_type: Option<&telemetry::ErrorType>,
    delay: Duration,
    hold: bool,
) where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
{
    let entered = this.span.enter();
    let request = this.template.view().with_attempt(*this.attempt);
    tracing::debug!(
        target: "tower_reissue::retry",
        method = %request.method(),
        uri = %request.uri(),
        attempt = *this.attempt,
        ?verdict,
        delay_ms = delay.as_millis() as u64,
        "retrying"
    );
    telemetry::retrying(error_type, delay);
    if let Some(hook) = &this.config.settings.on_retry {
        hook(&RetryEvent {
            request,
            attempt: *this.attempt,
            verdict,
            delay,
        });
    }
    // The failed response is dropped here (the caller only
    // ever sees the attempt that ends the request), unless it
    // may still be needed as the answer.
    if hold {
        if let Ok(response) = &mut result {
            response.extensions_mut().insert(Attempts(*this.attempt));
        }
        *this.last = Some(Box::new(result));
    } else {
        drop(result);
    }
    drop(entered);
    // The attempt's span ends with it, not after the delay, unless a
    // give-up may follow when the held copy never comes back.
    if !hold {
        this.span.close();
    }
    *this.last_verdict = verdict;
    *this.attempt += 1;
    *this.previous_delay = delay;
    if delay.is_zero() {
        this.state.set(State::Ready);
    } else {
        set_timer(this.timer, crate::time::after(delay));
        this.state.set(State::Waiting);
    }
    if matches!(
        verdict,
        Verdict::Transient {
            processed: Processed::Maybe,
            ..
        }
    ) {
        *this.ambiguous = true;
    }
}

/// An attempt's result as the classifier sees it.
#[inline(always)]
fn outcome_of<R: RetryResponse>(result: &Result<R, BoxError>) -> Outcome<'_> {
    match result {
        Ok(response) => Outcome::Response {
            status: response.status(),
            headers: response.headers(),
        },
        Err(error) => Outcome::Error(&**error),
    }
}

fn with_attempts<R: RetryResponse>(
    mut result: Result<R, BoxError>,
    attempts: u32,
) -> Result<R, BoxError> {
    if let Ok(response) = &mut result {
        response.extensions_mut().insert(Attempts(attempts));
    }
    result
}

fn timed_out(deadline: Option<Instant>) -> BoxError {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Box::new(DeadlineExceeded),
        _ => Box::new(AttemptTimedOut),
    }
}

/// `Ok((delay, hold))` to retry after `delay` (`hold`: the body copy is
/// still in use below, so keep the failed result until the copy is back);
/// `Err(None)` on success; `Err(Some(reason))` to hand a failure to the
/// caller.
// Inlined into both callers: the attempt's path must not pay a call for the
// reconcile path's second use of it.
#[inline(always)]
fn decide<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    request: &RequestView<'_>,
    verdict: Verdict,
    attempt: u32,
    previous_delay: Duration,
    deadline: Option<Instant>,
) -> Result<(Duration, bool), Option<GiveUpReason>> {
    let (processed, retry_after) = match verdict {
        Verdict::Success => return Err(None),
        Verdict::Permanent => return Err(Some(GiveUpReason::Permanent)),
        Verdict::Transient {
            processed,
            retry_after,
        } => (processed, retry_after),
    };
    safety(request, processed).map_err(Some)?;
    if attempt >= config.settings.max_attempts {
        return Err(Some(GiveUpReason::MaxAttempts));
    }
    let hold = match template.check_replayable() {
        Ok(()) => false,
        // A connection may hand the copy back after the attempt's future is
        // gone; the next attempt checks again.
        Err(NotReplayable::InUse) => true,
        Err(why) => return Err(Some(GiveUpReason::NotReplayable(why))),
    };
    let delay = match retry_after {
        Some(asked) if asked > config.settings.max_retry_after => {
            return Err(Some(GiveUpReason::RetryAfterTooLong));
        }
        Some(asked) => asked.saturating_add(retry_after_jitter(asked)),
        None => config.settings.backoff.delay(attempt, previous_delay),
    };
    if let Some(deadline) = deadline {
        if crate::time::after(delay) >= deadline {
            return Err(Some(GiveUpReason::Deadline));
        }
    }
    if let Some(budget) = &config.settings.budget {
        if !budget.withdraw_for(request.uri()) {
            return Err(Some(GiveUpReason::BudgetExhausted));
        }
    }
    Ok((delay, hold))
}

/// Up to a tenth of the server's delay, at most one second: enough to spread
/// clients told the same instant, never enough to matter to the server.
fn retry_after_jitter(asked: Duration) -> Duration {
    let bound = (asked / 10).min(Duration::from_secs(1));
    if bound.is_zero() {
        return Duration::ZERO;
    }
    crate::Backoff::exponential(bound, bound).delay(1, Duration::ZERO)
}

/// `parked`: the request's template and last result, for the give-up sink.
fn give_up<C, T: RequestTemplate, R: RetryResponse>(
    config: &RetryLayer<C>,
    request: RequestView<'_>,
    attempts: u32,
    verdict: Verdict,
    reason: GiveUpReason,
    parked: (&T, Option<&Result<R, BoxError>>),
) {
    tracing::debug!(
        target: "tower_reissue::retry",
        method = %request.method(),
        uri = %request.uri(),
        attempts,
        ?verdict,
        %reason,
        "giving up"
    );
    telemetry::gave_up(reason.as_str(), attempts);
    if let Some(hook) = &config.settings.on_give_up {
        hook(&GiveUpEvent {
            request,
            attempts,
            verdict,
            reason,
        });
    }
    if let Some(sink) = &config.settings.give_up_sink {
        let (template, last) = parked;
        let gave_up = sink::GaveUp {
            request,
            attempts,
            reason,
            last: last.map(outcome_of),
            body: &|| template.kept_body(),
        };
        if let Some(parking) = sink.park(&gave_up) {
            sink::spawn(parking, &request);
        }
    }
}
