//! The steps of one exactly-once execution over an [`IdempotencyStore`]:
//! claim the record (waiting a bounded time for a duplicate that is still
//! running), renew the lease while the work runs, then complete or release
//! with the claim's fencing token.
//!
//! [`IdempotencyLayer`](super::IdempotencyLayer) and
//! [`Once`](crate::once::Once) both run through these functions, so an HTTP
//! handler and a queue consumer get the same guarantees from a store.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, Outcome, RecordKey, StoreError,
};

/// How to claim a record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimRules {
    /// The lease of an acquired claim.
    pub(crate) lease: Duration,
    /// How long to wait for a running duplicate's result; `None` gives up at
    /// once.
    pub(crate) wait_for_result: Option<Duration>,
    /// How often to ask again while waiting.
    pub(crate) wait_poll_interval: Duration,
}

/// A claim that went the caller's way: run the work, or use the stored result.
pub(crate) enum Claimed {
    Acquired(FencingToken),
    Completed(Outcome),
}

/// Why the work must not run.
pub(crate) enum Refused {
    /// The key's record was made for a different fingerprint.
    FingerprintMismatch,
    /// Another execution holds the key, and did not finish in time.
    InFlight,
    /// The store failed; the caller fails closed (or, if it chose to, open).
    Store(StoreError),
}

/// Claims `record`, waiting up to `rules.wait_for_result` while another
/// execution holds it.
pub(crate) async fn claim<St: IdempotencyStore>(
    store: &St,
    record: &RecordKey,
    fingerprint: &Fingerprint,
    rules: ClaimRules,
) -> Result<Claimed, Refused> {
    let give_up_at = rules.wait_for_result.map(crate::time::after);
    loop {
        match store.claim(record, fingerprint, rules.lease).await {
            Ok(Claim::Acquired(token)) => return Ok(Claimed::Acquired(token)),
            Ok(
                Claim::Completed {
                    fingerprint: stored,
                    ..
                }
                | Claim::InFlight {
                    fingerprint: stored,
                },
            ) if stored != *fingerprint => return Err(Refused::FingerprintMismatch),
            Ok(Claim::Completed { outcome, .. }) => return Ok(Claimed::Completed(outcome)),
            Ok(Claim::InFlight { .. }) => {}
            Err(err) => {
                tracing::warn!(error = %err, key = record.key(), "idempotency store failed to claim");
                return Err(Refused::Store(err));
            }
        }
        match give_up_at {
            Some(deadline) if Instant::now() < deadline => {
                tokio::time::sleep_until(
                    deadline.min(crate::time::after(rules.wait_poll_interval)),
                )
                .await;
            }
            _ => return Err(Refused::InFlight),
        }
    }
}

/// How [`HeldClaim::renewing`] ended.
pub(crate) enum Renewal<T> {
    /// The work finished; here is its output.
    Finished(T),
    /// The store said the lease is no longer held (it ran out and another
    /// execution may have taken over). The work has not finished; the caller
    /// decides whether to drive it on without a lease or to abandon it.
    Lost,
}

/// A claim held from acquisition until it is completed or released.
pub(crate) struct HeldClaim<St: IdempotencyStore> {
    store: St,
    record: RecordKey,
    token: FencingToken,
    settled: bool,
}

impl<St: IdempotencyStore> HeldClaim<St> {
    pub(crate) fn new(store: St, record: RecordKey, token: FencingToken) -> Self {
        Self {
            store,
            record,
            token,
            settled: false,
        }
    }

    /// Drives `work` while renewing the lease every third of it, so slow work
    /// keeps its claim for as long as it runs.
    ///
    /// A renewal that fails for another reason than a lost lease is retried
    /// at the next tick: the lease may still be held.
    pub(crate) async fn renewing<F: Future + Unpin>(
        &self,
        lease: Duration,
        mut work: F,
    ) -> Renewal<F::Output> {
        let period = (lease / 3).max(Duration::from_millis(1));
        let renew = || self.store.renew(&self.record, self.token, lease);
        let mut tick = pin!(tokio::time::sleep(period));
        let mut renewal = pin!(none_of(&renew));
        poll_fn(move |cx: &mut Context<'_>| {
            if let Poll::Ready(output) = Pin::new(&mut work).poll(cx) {
                return Poll::Ready(Renewal::Finished(output));
            }
            loop {
                if let Some(pending) = renewal.as_mut().as_pin_mut() {
                    match ready!(pending.poll(cx)) {
                        Ok(()) => {}
                        Err(StoreError::LeaseLost) => {
                            tracing::warn!(key = self.record.key(), "idempotency lease lost while the work ran; its result will not be stored");
                            return Poll::Ready(Renewal::Lost);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, key = self.record.key(), "failed to renew idempotency lease");
                        }
                    }
                    renewal.set(None);
                    tick.as_mut().reset(crate::time::after(period));
                }
                ready!(tick.as_mut().poll(cx));
                renewal.set(Some(renew()));
            }
        })
        .await
    }

    /// Stores the work's outcome; a store that rejects the token (the lease
    /// ran out) keeps the record of whoever took over.
    pub(crate) async fn complete(mut self, outcome: Outcome, ttl: Duration) {
        self.settled = true;
        if let Err(err) = self
            .store
            .complete(&self.record, self.token, outcome, ttl)
            .await
        {
            tracing::warn!(error = %err, key = self.record.key(), "failed to store idempotent result");
        }
    }

    /// Gives the key up, so the next claim runs the work again.
    pub(crate) async fn release(mut self) {
        self.settled = true;
        if let Err(err) = self.store.release(&self.record, self.token).await {
            tracing::warn!(error = %err, key = self.record.key(), "failed to release idempotency claim");
        }
    }
}

impl<St: IdempotencyStore> Drop for HeldClaim<St> {
    fn drop(&mut self) {
        // Work that panicked did not finish: release so a retry runs. Any
        // other drop is a crash as far as the store can tell (the process or
        // runtime going away, the caller abandoning the work): the claim
        // expires with its lease.
        if self.settled || !std::thread::panicking() {
            return;
        }
        let (store, record, token) = (self.store.clone(), self.record.clone(), self.token);
        let mut release = Box::pin(async move {
            if let Err(err) = store.release(&record, token).await {
                tracing::warn!(error = %err, key = record.key(), "failed to release idempotency claim after a panic");
            }
        });
        // An in-process store releases on the first poll, before the panic
        // reaches the caller; a networked one finishes on the runtime.
        let mut cx = Context::from_waker(Waker::noop());
        if release.as_mut().poll(&mut cx).is_pending() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(release);
            }
        }
    }
}

/// `None`, typed as the option of what `make` returns, without calling it.
fn none_of<T>(_make: &impl Fn() -> T) -> Option<T> {
    None
}
