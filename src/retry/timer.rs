//! The retry future's timers: one boxed `Sleep`, made on first use and
//! handed from state to state.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

use super::reconcile::{Probe, ReconcileTimedOut, Reconciled};
use crate::BoxError;

/// A timer, boxed and made on first use so that the success path without
/// timeouts neither allocates nor carries one; handed from state to state so
/// that a request allocates at most one.
pub(super) type Timer = Option<Pin<Box<Sleep>>>;

/// When one attempt (or probe) must end: its timeout or the deadline,
/// whichever comes first.
#[inline]
pub(super) fn attempt_ends(
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> Option<Instant> {
    let by_timeout = timeout.map(crate::time::after);
    match (by_timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `timer` (or a new one) set to fire at `at`.
pub(super) fn arm(timer: Timer, at: Instant) -> Pin<Box<Sleep>> {
    match timer {
        Some(mut sleep) => {
            sleep.as_mut().reset(at);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(at)),
    }
}

/// `timer` set to `at`, or none when nothing bounds the wait.
pub(super) fn rearm(timer: Timer, at: Option<Instant>) -> Timer {
    at.map(|at| arm(timer, at))
}

pub(super) fn expired(timer: &mut Timer, cx: &mut Context<'_>) -> bool {
    timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
}

/// A reconciler's answer, or [`ReconcileTimedOut`] once `timer` fires.
pub(super) fn poll_answer(
    probe: &mut Probe,
    timer: &mut Timer,
    cx: &mut Context<'_>,
) -> Poll<Result<Reconciled, BoxError>> {
    Poll::Ready(match probe.as_mut().poll(cx) {
        Poll::Ready(answer) => answer,
        Poll::Pending if !expired(timer, cx) => return Poll::Pending,
        Poll::Pending => Err(Box::new(ReconcileTimedOut) as BoxError),
    })
}

/// The error of an attempt its timer cut short.
pub(super) fn timed_out(deadline: Option<Instant>) -> BoxError {
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Box::new(crate::error::DeadlineExceeded),
        _ => Box::new(crate::error::AttemptTimedOut),
    }
}
