use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::time::Instant;
use tower_service::Service;

use super::RetryLayer;
use super::check::Check;
use super::decide::Progress;
use super::failed::{self, Failed, Reconciling};
use super::timer::{Timer, arm, attempt_ends, expired, timed_out};
use crate::BoxError;
use crate::Verdict;
use crate::classify::{Classifier, Outcome};
use crate::request::with_attempts;
use crate::request::{RequestTemplate, RetryResponse};
use crate::telemetry;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, T, C>
    where
        S: Service<T::Attempt>,
        T: RequestTemplate,
    {
        #[pin]
        pub(super) state: State<S::Future, S::Response, T::Attempt>,
        // The current attempt's span: entered while its future is polled.
        pub(super) span: telemetry::AttemptSpan,
        pub(super) service: S,
        pub(super) template: T,
        pub(super) config: Arc<RetryLayer<C>>,
        pub(super) progress: Progress,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<F, R, A> {
        // Asking the reconciler whether an earlier send of the request took
        // effect, before sending it at all.
        Checking { check: Box<Check<A>> },
        // An attempt in flight, bounded by its timeout or the deadline.
        Calling { #[pin] future: F, timer: Timer },
        // Asking the reconciler about the attempt that just failed.
        Reconciling { reconciling: Option<Box<Reconciling<R>>> },
        // The delay before the next attempt.
        Waiting { failed: Failed<R>, timer: Timer },
        // The next attempt goes out once the service is ready.
        Ready { failed: Failed<R>, timer: Timer },
        // The caller has its answer.
        Done,
    }
}

impl<S, T, C> ResponseFuture<S, T, C>
where
    S: Service<T::Attempt>,
    T: RequestTemplate,
{
    /// The first attempt's timer, if it has a timeout or a deadline.
    #[inline(always)]
    pub(crate) fn timer(config: &RetryLayer<C>, deadline: Option<Instant>) -> Timer {
        let at = attempt_ends(config.settings.attempt_timeout, deadline)?;
        Some(arm(None, at))
    }

    #[inline(always)]
    pub(crate) fn new(
        future: S::Future,
        span: telemetry::AttemptSpan,
        timer: Timer,
        service: S,
        template: T,
        config: Arc<RetryLayer<C>>,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future, timer },
            span,
            service,
            template,
            config,
            progress: Progress::new(deadline),
        }
    }

    /// A future that asks the reconciler before the first send.
    #[cold]
    pub(crate) fn checking(
        check: Box<Check<T::Attempt>>,
        span: telemetry::AttemptSpan,
        service: S,
        template: T,
        config: Arc<RetryLayer<C>>,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Checking { check },
            span,
            service,
            template,
            config,
            progress: Progress::new(deadline),
        }
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
                StateProj::Calling { future, timer } => {
                    let entered = this.span.enter();
                    let polled = future.poll(cx);
                    drop(entered);
                    let result = match polled {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending if !expired(timer, cx) => return Poll::Pending,
                        Poll::Pending => Err(timed_out(this.progress.deadline)),
                    };
                    let timer = timer.take();
                    // Drop the finished attempt first: it may still hold the
                    // body copy the next attempt needs.
                    this.state.set(State::Done);
                    this.template.attempt_done();
                    let attempt = this.progress.attempt;
                    let request = this.template.view().with_attempt(attempt);
                    let outcome = Outcome::of(&result);
                    let verdict = this.config.classifier.classify(&request, &outcome);
                    if verdict == Verdict::Success {
                        // The common case, decided here: nothing below it
                        // (reconciling, retrying, giving up) is paid for.
                        let _ = this.span.ended(&request, &outcome, verdict);
                        telemetry::succeeded(attempt);
                        return Poll::Ready(with_attempts(result, attempt));
                    }
                    if let Some(result) =
                        failed::after_failure(self.as_mut(), result, verdict, timer)
                    {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Reconciling { reconciling } => {
                    let answer = ready!(failed::poll_probe(reconciling, cx));
                    if let Some(result) = failed::after_probe(self.as_mut(), answer) {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Waiting { failed, timer } => {
                    if let Some(sleep) = timer.as_mut() {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    let (failed, timer) = (failed.take(), timer.take());
                    this.state.set(State::Ready { failed, timer });
                }
                StateProj::Ready { .. } => {
                    if let Some(result) = ready!(failed::send_next(self.as_mut(), cx)) {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Checking { check } => {
                    let entered = this.span.enter();
                    let checked = ready!(check.poll(cx));
                    drop(entered);
                    if let Some(result) = failed::after_check(self.as_mut(), checked) {
                        return Poll::Ready(result);
                    }
                }
                StateProj::Done => {
                    return Poll::Ready(
                        Err("the retry future was polled after it finished".into()),
                    );
                }
            }
        }
    }
}
