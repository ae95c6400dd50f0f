//! What follows an attempt that did not succeed, on the retry future's cold
//! paths: the decision carried out, the reconciler's answers, the next
//! attempt sent, and the give-ups on the way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tower_service::Service;

use super::check::{self, Checked, Stop};
use super::decide::{self, Next};
use super::future::{ResponseFuture, ResponseFutureProj, State, StateProj};
use super::reconcile::{self, Probe, Reconciled, Settled};
use super::report::{self, give_up};
use super::timer::{Timer, arm, attempt_ends, poll_answer, rearm};
use super::{Attempts, GiveUpReason};
use crate::BoxError;
use crate::classify::{Classifier, Outcome, RequestView};
use crate::request::with_attempts;
use crate::request::{RequestTemplate, RetryResponse};
use crate::telemetry;
use crate::{Processed, Verdict};

/// An attempt that did not succeed, kept until the next one is sent.
pub(super) struct Failed<R> {
    verdict: Verdict,
    // Its result, kept only while the body copy is still held below (a
    // timed-out attempt's connection may hand it back late): if the copy
    // never comes back, the caller gets this rather than an error of the
    // layer's own. Boxed: the future is moved whole on every call.
    held: Option<Box<Result<R, BoxError>>>,
}

/// Asking the reconciler about an attempt whose fate is unknown. Boxed in
/// its state: only a failure makes one.
pub(super) struct Reconciling<R> {
    probe: Probe,
    timer: Timer,
    verdict: Verdict,
    result: Result<R, BoxError>,
}

impl<R> Failed<R> {
    pub(super) fn take(&mut self) -> Self {
        Failed {
            verdict: self.verdict,
            held: self.held.take(),
        }
    }
}

/// The reconciler's answer, or why there is none (it timed out).
pub(super) fn poll_probe<R>(
    reconciling: &mut Option<Box<Reconciling<R>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Reconciled, BoxError>> {
    let Some(reconciling) = reconciling else {
        return Poll::Ready(Err("the reconciled attempt's result is gone".into()));
    };
    poll_answer(&mut reconciling.probe, &mut reconciling.timer, cx)
}

/// Sends the next attempt once the service is ready: `Some` when it gives
/// up instead.
pub(super) fn send_next<S, T, C>(
    mut future: Pin<&mut ResponseFuture<S, T, C>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<S::Response, BoxError>>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    T: RequestTemplate,
{
    let mut this = future.as_mut().project();
    let StateProj::Ready { failed, timer } = this.state.as_mut().project() else {
        return Poll::Ready(None);
    };
    if let Err(error) = ready!(this.service.poll_ready(cx)) {
        let failed = failed.take();
        let reason = GiveUpReason::ServiceNotReady;
        return Poll::Ready(Some(give_up_before_send(
            future,
            failed,
            reason,
            error.into(),
        )));
    }
    let request = match this.template.replay() {
        Ok(request) => request,
        Err(why) => {
            let (failed, reason) = (failed.take(), GiveUpReason::NotReplayable(why));
            return Poll::Ready(Some(give_up_before_send(
                future,
                failed,
                reason,
                why.into(),
            )));
        }
    };
    let timer = timer.take();
    let attempt = this.progress.attempt;
    *this.span = telemetry::AttemptSpan::open(&this.template.view(), attempt);
    let entered = this.span.enter();
    let sent = this.template.send(this.service, request);
    drop(entered);
    let ends = attempt_ends(this.config.settings.attempt_timeout, this.progress.deadline);
    let timer = rearm(timer, ends);
    this.state.set(State::Calling {
        future: sent,
        timer,
    });
    Poll::Ready(None)
}

/// Acts on a failed attempt (any verdict but `Success`): the caller's
/// result, or `None` once a reconciler's probe or the next attempt is set
/// up. Kept out of `poll` so that the success path carries none of it.
#[cold]
#[inline(never)]
pub(super) fn after_failure<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    result: Result<S::Response, BoxError>,
    verdict: Verdict,
    timer: Timer,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
    C: Classifier,
{
    let mut this = future.project();
    let request = this.template.view().with_attempt(this.progress.attempt);
    let outcome = Outcome::of(&result);
    let error_type = this.span.ended(&request, &outcome, verdict);
    // The decision's events belong to this attempt's span.
    let entered = this.span.enter();
    let next = decide_next(&this, &request, &outcome, verdict);
    drop(entered);
    act(&mut this, next, result, verdict, error_type.as_ref(), timer)
}

/// Acts on the reconciler's answer about the attempt it holds: the
/// caller's result, or `None` once the next attempt is set up. Kept out of
/// `poll` (and cold) so that the attempt's path stays as lean as without
/// reconciliation.
#[cold]
#[inline(never)]
pub(super) fn after_probe<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    answer: Result<Reconciled, BoxError>,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
    C: Classifier,
{
    let mut this = future.project();
    let reconciling = match this.state.as_mut().project() {
        StateProj::Reconciling { reconciling } => reconciling.take(),
        _ => None,
    };
    this.state.set(State::Done);
    let Some(reconciling) = reconciling else {
        return Some(Err("the reconciled attempt's result is gone".into()));
    };
    let Reconciling {
        timer,
        verdict,
        result,
        ..
    } = *reconciling;
    let request = this.template.view().with_attempt(this.progress.attempt);
    // The probe's answer and what follows belong to the probed attempt.
    let entered = this.span.enter();
    let next = match reconcile::settle(this.config, &request, answer) {
        Settled::Applied => Next::Done,
        Settled::Unreconciled => Next::GiveUp(GiveUpReason::Unreconciled),
        Settled::NotApplied => {
            let verdict = Verdict::Transient {
                processed: Processed::No,
                retry_after: verdict.retry_after(),
            };
            let outcome = Outcome::of(&result);
            let next = decide_next(&this, &request, &outcome, verdict);
            drop(entered);
            let error_type = telemetry::ErrorType::of(&outcome);
            return act(&mut this, next, result, verdict, Some(&error_type), timer);
        }
    };
    drop(entered);
    act(&mut this, next, result, verdict, None, timer)
}

/// Acts on the answer of the check before the first send.
#[cold]
#[inline(never)]
pub(super) fn after_check<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    checked: Checked<T::Attempt>,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
    C: Classifier,
{
    let mut this = future.project();
    let request = this.template.view().with_attempt(0);
    let (first, timer) = match check::settle(this.config, &request, checked) {
        Ok(send) => send,
        Err(stop) => {
            this.state.set(State::Done);
            if let Stop::GiveUp(reason) = stop {
                // An earlier send's fate is what is unknown.
                let verdict = Verdict::transient(Processed::Maybe);
                let none = None::<&Result<S::Response, BoxError>>;
                give_up(
                    this.config,
                    &*this.template,
                    request,
                    0,
                    verdict,
                    reason,
                    none,
                );
            }
            return Some(Err(check::stopped(stop)));
        }
    };
    let entered = this.span.enter();
    let future = this.template.send(this.service, first);
    drop(entered);
    let ends = attempt_ends(this.config.settings.attempt_timeout, this.progress.deadline);
    this.state.set(State::Calling {
        future,
        timer: rearm(timer, ends),
    });
    None
}

/// The decision about the attempt that ended with `verdict`.
fn decide_next<S, T, C>(
    this: &ResponseFutureProj<'_, S, T, C>,
    request: &RequestView<'_>,
    outcome: &Outcome<'_>,
    verdict: Verdict,
) -> Next
where
    S: Service<T::Attempt>,
    T: RequestTemplate,
{
    decide::next(
        this.config,
        &*this.template,
        request,
        outcome,
        verdict,
        this.progress,
    )
}

/// Carries out the decision about a failed attempt.
fn act<S, T, C>(
    this: &mut ResponseFutureProj<'_, S, T, C>,
    next: Next,
    result: Result<S::Response, BoxError>,
    verdict: Verdict,
    error_type: Option<&telemetry::ErrorType>,
    timer: Timer,
) -> Option<Result<S::Response, BoxError>>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
{
    let attempt = this.progress.attempt;
    match next {
        Next::Retry { delay, hold } => {
            schedule_retry(this, result, verdict, error_type, delay, hold, timer);
            None
        }
        Next::Probe(probe) => {
            let ends = attempt_ends(
                this.config.settings.reconcile.timeout,
                this.progress.deadline,
            );
            let reconciling = Box::new(Reconciling {
                probe,
                timer: rearm(timer, ends),
                verdict,
                result,
            });
            this.state.set(State::Reconciling {
                reconciling: Some(reconciling),
            });
            None
        }
        Next::Done => {
            let _entered = this.span.enter();
            telemetry::succeeded(attempt);
            Some(with_attempts(reconcile::applied(result), attempt))
        }
        Next::GiveUp(reason) => {
            let _entered = this.span.enter();
            let request = this.template.view().with_attempt(attempt);
            give_up(
                this.config,
                &*this.template,
                request,
                attempt,
                verdict,
                reason,
                Some(&result),
            );
            Some(with_attempts(result, attempt))
        }
    }
}

/// Gives up before the next attempt could be sent: the caller gets the
/// failed attempt's result if it was kept, else `error`.
#[cold]
fn give_up_before_send<S, T, C>(
    future: Pin<&mut ResponseFuture<S, T, C>>,
    failed: Failed<S::Response>,
    reason: GiveUpReason,
    error: BoxError,
) -> Result<S::Response, BoxError>
where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
{
    let this = future.project();
    let _entered = this.span.enter();
    let attempts = this.progress.attempt - 1;
    let request = this.template.view().with_attempt(attempts);
    let held = failed.held.as_deref();
    give_up(
        this.config,
        &*this.template,
        request,
        attempts,
        failed.verdict,
        reason,
        held,
    );
    failed.held.map_or(Err(error), |held| *held)
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
    timer: Timer,
) where
    S: Service<T::Attempt>,
    S::Response: RetryResponse,
    T: RequestTemplate,
{
    let attempt = this.progress.attempt;
    let entered = this.span.enter();
    let request = this.template.view().with_attempt(attempt);
    report::retrying(this.config, request, attempt, verdict, error_type, delay);
    // The failed response is dropped here (the caller only ever sees the
    // attempt that ends the request), unless it may still be needed as the
    // answer.
    let held = hold.then(|| {
        if let Ok(response) = &mut result {
            response.extensions_mut().insert(Attempts(attempt));
        }
        Box::new(result)
    });
    drop(entered);
    // The attempt's span ends with it, not after the delay, unless a
    // give-up may follow when the held copy never comes back.
    if !hold {
        this.span.close();
    }
    this.progress.retried(verdict, delay);
    let failed = Failed { verdict, held };
    if delay.is_zero() {
        this.state.set(State::Ready { failed, timer });
    } else {
        let timer = Some(arm(timer, crate::time::after(delay)));
        this.state.set(State::Waiting { failed, timer });
    }
}
