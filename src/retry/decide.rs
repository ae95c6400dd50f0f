//! What follows an attempt that did not succeed: one decision, made in one
//! place, for a failed attempt and for a reconciler's "not applied" alike.

use std::time::Duration;
use tokio::time::Instant;

use super::reconcile::{self, Begun, Probe};
use super::{GiveUpReason, RetryLayer, safety};
use crate::classify::{Outcome, RequestView};
use crate::request::{NotReplayable, RequestTemplate};
use crate::{Processed, Verdict};

/// What a request has been through, across the states of its future.
#[derive(Debug)]
pub(super) struct Progress {
    /// The attempt in flight or just ended (1-based).
    pub(super) attempt: u32,
    pub(super) previous_delay: Duration,
    pub(super) deadline: Option<Instant>,
    /// An earlier attempt may have taken effect: a 412 to a conditional
    /// request then means it did.
    pub(super) ambiguous: bool,
}

impl Progress {
    #[inline(always)]
    pub(super) fn new(deadline: Option<Instant>) -> Self {
        Progress {
            attempt: 1,
            previous_delay: Duration::ZERO,
            deadline,
            ambiguous: false,
        }
    }

    /// The attempt that failed with `verdict` is followed by another after
    /// `delay`.
    pub(super) fn retried(&mut self, verdict: Verdict, delay: Duration) {
        self.attempt += 1;
        self.previous_delay = delay;
        if matches!(
            verdict,
            Verdict::Transient {
                processed: Processed::Maybe,
                ..
            }
        ) {
            self.ambiguous = true;
        }
    }
}

/// The decision after an attempt that did not succeed.
pub(super) enum Next {
    /// Send the next attempt after `delay`. `hold`: the body copy is still
    /// in use below, so keep the failed result until the copy is back.
    Retry { delay: Duration, hold: bool },
    /// Ask the reconciler whether the attempt took effect.
    Probe(Probe),
    /// Hand the failure to the caller, for this reason.
    GiveUp(GiveUpReason),
    /// The request took effect after all: hand the result to the caller,
    /// marked applied.
    Done,
}

/// Decides what follows an attempt that ended with `verdict` (never
/// `Success`): the retry rules first, and where they give up, whether
/// reconciliation settles it instead.
pub(super) fn next<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    request: &RequestView<'_>,
    outcome: &Outcome<'_>,
    verdict: Verdict,
    progress: &Progress,
) -> Next {
    let reason = match retry_rules(config, template, request, verdict, progress) {
        Ok((delay, hold)) => return Next::Retry { delay, hold },
        Err(reason) => reason,
    };
    let (ambiguous, deadline) = (progress.ambiguous, progress.deadline);
    match reconcile::begin(
        config, template, request, outcome, reason, ambiguous, deadline,
    ) {
        Begun::GiveUp(reason) => Next::GiveUp(reason),
        Begun::Applied => Next::Done,
        Begun::Probe(probe) => Next::Probe(probe),
    }
}

/// The retry rules of the module docs: `Ok((delay, hold))` to retry, or why
/// not.
fn retry_rules<C, T: RequestTemplate>(
    config: &RetryLayer<C>,
    template: &T,
    request: &RequestView<'_>,
    verdict: Verdict,
    progress: &Progress,
) -> Result<(Duration, bool), GiveUpReason> {
    let settings = &config.settings;
    let (processed, retry_after, throttled) = match verdict {
        Verdict::Transient {
            processed,
            retry_after,
        } => (processed, retry_after, false),
        // Turned away before any work: safe to repeat, on its own backoff
        // and at its own (lower) cost.
        Verdict::Throttled { retry_after } => (Processed::No, retry_after, true),
        _ => return Err(GiveUpReason::Permanent),
    };
    safety(request, processed)?;
    if progress.attempt >= settings.max_attempts {
        return Err(GiveUpReason::MaxAttempts);
    }
    let hold = match template.check_replayable() {
        Ok(()) => false,
        // A connection may hand the copy back after the attempt's future is
        // gone; the next attempt checks again.
        Err(NotReplayable::InUse) => true,
        Err(why) => return Err(GiveUpReason::NotReplayable(why)),
    };
    // The server's delay wins over the backoff, shorter or longer: it knows
    // when its limit lifts (see the module docs for why it is not clamped).
    let delay = match retry_after {
        Some(asked) if asked > settings.max_retry_after => {
            return Err(GiveUpReason::RetryAfterTooLong);
        }
        Some(asked) => asked.saturating_add(retry_after_jitter(asked)),
        None if throttled => settings
            .throttle_backoff
            .delay(progress.attempt, progress.previous_delay),
        None => settings
            .backoff
            .delay(progress.attempt, progress.previous_delay),
    };
    if let Some(deadline) = progress.deadline {
        if crate::time::after(delay) >= deadline {
            return Err(GiveUpReason::Deadline);
        }
    }
    if let Some(budget) = &settings.budget {
        let granted = if throttled {
            budget.withdraw_throttled_for(request.uri())
        } else {
            budget.withdraw_for(request.uri())
        };
        if !granted {
            return Err(GiveUpReason::BudgetExhausted);
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
