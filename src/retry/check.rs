//! The check before the first send (see
//! [`ReconcileFirst`](super::reconcile::ReconcileFirst)): the retry future's
//! first state when a request asks for it.

use std::task::{Context, Poll, ready};

use tokio::time::Instant;

use super::GiveUpReason;
use super::RetryLayer;
use super::reconcile::{
    AlreadyApplied, NotSent, Probe, ReconcileFirst, ReconcileRequest, Reconciled, Settled,
};
use super::timer::{Timer, arm, attempt_ends, poll_answer};
use crate::BoxError;
use crate::classify::RequestView;
use crate::request::RequestTemplate;

/// The reconciler's answer in flight, and the first attempt that waits for
/// it. Boxed in the future's state: only a request that asks makes one.
pub(crate) struct Check<A> {
    // `Err`: no check could be made, for this reason.
    probe: Result<Probe, GiveUpReason>,
    timer: Timer,
    first: Option<A>,
}

/// The answer, and what a send needs.
pub(crate) struct Checked<A> {
    answer: Result<Result<Reconciled, BoxError>, GiveUpReason>,
    first: Option<A>,
    timer: Timer,
}

/// Why the first attempt is not sent.
pub(crate) enum Stop {
    /// An earlier send took effect: the caller gets [`AlreadyApplied`].
    Applied,
    /// Nobody can tell: a give-up for this reason, and a [`NotSent`] error.
    GiveUp(GiveUpReason),
}

impl<A> Check<A> {
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Checked<A>> {
        let answer = match &mut self.probe {
            Err(reason) => Err(*reason),
            Ok(probe) => Ok(ready!(poll_answer(probe, &mut self.timer, cx))),
        };
        Poll::Ready(Checked {
            answer,
            first: self.first.take(),
            timer: self.timer.take(),
        })
    }
}

/// Whether `template`'s request asks for a check before it is sent, under a
/// layer that can make one.
#[inline(always)]
pub(crate) fn wanted<C, T: RequestTemplate>(config: &RetryLayer<C>, template: &T) -> bool {
    config.settings.reconcile.can_check()
        && template
            .view()
            .extensions()
            .is_some_and(|e| e.get::<ReconcileFirst>().is_some())
}

/// Starts the check: the first attempt waits in it. A check that cannot be
/// made (no budget, the deadline passed) ends at its first poll.
#[cold]
pub(crate) fn begin<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    first: T::Attempt,
    deadline: Option<Instant>,
) -> Box<Check<T::Attempt>> {
    let probe = probe(config, template, deadline);
    let ends = attempt_ends(config.settings.reconcile.timeout, deadline);
    Box::new(Check {
        probe,
        timer: ends.map(|at| arm(None, at)),
        first: Some(first),
    })
}

fn probe<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    deadline: Option<Instant>,
) -> Result<Probe, GiveUpReason> {
    let request = template.view().with_attempt(0);
    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
        return Err(GiveUpReason::Deadline);
    }
    // Paid for like any probe: a check is a request to the same API.
    if let Some(budget) = &config.settings.budget {
        if !budget.withdraw_for(request.uri()) {
            return Err(GiveUpReason::BudgetExhausted);
        }
    }
    let asked = ReconcileRequest::before_send(&request, template.kept_body().ok());
    config
        .settings
        .reconcile
        .probe(asked)
        .ok_or(GiveUpReason::Unreconciled)
}

/// What the answer means: the first attempt to send (and the timer to reuse
/// for it), or why nothing is sent.
pub(crate) fn settle<C, A>(
    config: &RetryLayer<C>,
    request: &RequestView<'_>,
    checked: Checked<A>,
) -> Result<(A, Timer), Stop> {
    let Checked {
        answer,
        first,
        timer,
    } = checked;
    let answer = answer.map_err(Stop::GiveUp)?;
    match super::reconcile::settle(config, request, answer) {
        Settled::NotApplied => first
            .map(|first| (first, timer))
            .ok_or(Stop::GiveUp(GiveUpReason::Unreconciled)),
        Settled::Applied => Err(Stop::Applied),
        Settled::Unreconciled => Err(Stop::GiveUp(GiveUpReason::Unreconciled)),
    }
}

/// The caller's error when nothing is sent.
pub(crate) fn stopped(stop: Stop) -> BoxError {
    let why = match stop {
        Stop::Applied => return Box::new(AlreadyApplied),
        Stop::GiveUp(GiveUpReason::BudgetExhausted) => {
            "the retry budget allows no check before sending"
        }
        Stop::GiveUp(GiveUpReason::Deadline) => {
            "the deadline passed before the check could be made"
        }
        Stop::GiveUp(_) => "the reconciler could not tell whether an earlier send took effect",
    };
    Box::new(NotSent::new(why, None))
}
