//! The steps of one exactly-once execution over an [`IdempotencyStore`]:
//! claim the record (waiting a bounded time for a duplicate that is still
//! running), renew the lease while the work runs, then complete or release
//! with the claim's fencing token.
//!
//! [`IdempotencyLayer`](super::IdempotencyLayer) and
//! [`Once`](crate::once::Once) both run through these functions, so an HTTP
//! handler and a queue consumer get the same guarantees from a store.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{
    Claim, CommitError, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError,
    StoreTransaction, StoredOutcome,
};

/// How to claim a record.
#[derive(Clone, Debug)]
pub(crate) struct ClaimRules {
    /// The lease of an acquired claim.
    pub(crate) lease: Duration,
    /// How long to wait for a running duplicate's result; `None` gives up at
    /// once.
    pub(crate) wait_for_result: Option<Duration>,
    /// How often to ask again while waiting.
    pub(crate) wait_poll_interval: Duration,
    /// Results this process could not store: its own duplicates get them.
    pub(crate) kept: KeptResults,
}

/// A claim that went the caller's way: run the work, or use the stored result.
pub(crate) enum Claimed {
    Acquired(Acquired),
    Completed(StoredOutcome),
}

/// A claim acquired: its token, and when it was sent (the lease runs from no
/// earlier than that).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acquired {
    token: FencingToken,
    sent: Instant,
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
    rules: &ClaimRules,
) -> Result<Claimed, Refused> {
    let give_up_at = rules.wait_for_result.map(crate::time::after);
    loop {
        // Checked on every round: a result kept while this waited is the
        // answer, whatever the store says once the holder's lease is gone.
        match rules.kept.get(record) {
            Some((stored, _)) if stored != *fingerprint => {
                return Err(Refused::FingerprintMismatch);
            }
            Some((_, outcome)) => return Ok(Claimed::Completed(outcome)),
            None => {}
        }
        let sent = Instant::now();
        match store.claim(record, fingerprint, rules.lease).await {
            Ok(Claim::Acquired(token)) => return Ok(Claimed::Acquired(Acquired { token, sent })),
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
    fingerprint: Fingerprint,
    token: FencingToken,
    lease: Duration,
    // No later than the store's own lease end: each is measured from before
    // the request that set it.
    lease_ends: Mutex<Instant>,
    kept: KeptResults,
    // The work's transaction, with a transactional store (see
    // `TransactionalStore`): the result commits in it. Boxed once more, to
    // a thin pointer: every keyed request's state holds this field.
    transaction: Option<Box<Box<dyn StoreTransaction>>>,
    settled: bool,
}

impl<St: IdempotencyStore> HeldClaim<St> {
    /// Holds the claim `acquired` of `record` under `rules`.
    pub(crate) fn new(
        store: St,
        record: RecordKey,
        fingerprint: Fingerprint,
        acquired: Acquired,
        rules: &ClaimRules,
    ) -> Self {
        Self {
            store,
            record,
            fingerprint,
            token: acquired.token,
            lease: rules.lease,
            lease_ends: Mutex::new(after(acquired.sent, rules.lease)),
            kept: rules.kept.clone(),
            transaction: None,
            settled: false,
        }
    }

    /// Whether the store is transactional: the work then runs in a
    /// transaction, opened with [`begin`](Self::begin).
    pub(crate) fn wants_transaction(&self) -> bool {
        self.store.transactions().is_some()
    }

    /// Opens the work's transaction when the store is transactional; with
    /// any other store this does nothing.
    pub(crate) async fn begin(&mut self) -> Result<(), StoreError> {
        if let Some(store) = self.store.transactions() {
            let begin = store.begin(&self.record, self.token, self.lease);
            self.transaction = Some(Box::new(begin.await?));
        }
        Ok(())
    }

    /// The held record's key.
    pub(crate) fn key(&self) -> &str {
        self.record.key()
    }

    /// Whether the result commits in the work's transaction.
    pub(crate) fn is_transactional(&self) -> bool {
        self.transaction.is_some()
    }

    /// Hands the work's transaction, if any, to the work.
    pub(crate) fn attach(&self, extensions: &mut http::Extensions) {
        if let Some(transaction) = &self.transaction {
            transaction.attach(extensions);
        }
    }

    /// Stores the work's outcome in the work's transaction and commits both.
    ///
    /// Never completes the record outside the transaction: a result kept
    /// after a failed commit would replay an effect that was rolled back.
    /// When the commit did not happen (or may not have), the key is released
    /// under its token and in-flight state, which changes nothing if the
    /// commit did take effect: the record is then completed.
    pub(crate) async fn commit(
        &mut self,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), CommitError> {
        self.settled = true;
        let Some(transaction) = self.transaction.take() else {
            return Err(CommitError::Failed(StoreError::unavailable(
                "no transaction to commit in",
            )));
        };
        let committed = (*transaction).commit(outcome, ttl).await;
        match &committed {
            Ok(()) | Err(CommitError::LeaseLost) => {}
            Err(err) => {
                tracing::warn!(error = %err, key = self.record.key(), "idempotent result not committed; releasing the key");
                self.release_key().await;
            }
        }
        committed
    }

    async fn release_key(&self) {
        if let Err(err) = self.store.release(&self.record, self.token).await {
            tracing::warn!(error = %err, key = self.record.key(), "failed to release idempotency claim");
        }
    }

    fn lease_ends(&self) -> Instant {
        *self.lease_ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One renewal of the lease, owning what it needs so that it can be kept
    /// beside the work it renews for; it returns the new lease end.
    fn renewal(&self, lease: Duration) -> PendingRenewal {
        let (store, record, token) = (self.store.clone(), self.record.clone(), self.token);
        Box::pin(async move {
            let sent = Instant::now();
            store.renew(&record, token, lease).await?;
            Ok(after(sent, lease))
        })
    }

    /// Renews once, moving the known lease end on success.
    async fn renew(&self, lease: Duration) -> Result<(), StoreError> {
        let ends = self.renewal(lease).await?;
        self.set_lease_ends(ends);
        Ok(())
    }

    fn set_lease_ends(&self, ends: Instant) {
        *self.lease_ends.lock().unwrap_or_else(|e| e.into_inner()) = ends;
    }

    /// Drives `work` while renewing the lease every third of it, so slow work
    /// keeps its claim for as long as it runs (see [`Renewer`]).
    pub(crate) async fn renewing<F: Future + Unpin>(
        &self,
        lease: Duration,
        mut work: F,
    ) -> Renewal<F::Output> {
        let mut renewer = pin!(Renewer::new(lease));
        poll_fn(move |cx: &mut Context<'_>| {
            if let Poll::Ready(output) = Pin::new(&mut work).poll(cx) {
                return Poll::Ready(Renewal::Finished(output));
            }
            ready!(renewer.as_mut().poll_renew(self, cx));
            Poll::Ready(Renewal::Lost)
        })
        .await
    }

    /// Stores the work's outcome; a store that rejects the token (the lease
    /// ran out) keeps the record of whoever took over.
    ///
    /// A claim left in flight by a failed completion would let a retry run
    /// the work a second time once its lease expires. So when the store
    /// fails, the outcome is kept in this process at once (its own
    /// duplicates get it from there), and the completion is tried again in
    /// the background, renewing the lease in between, for as long as the
    /// lease surely holds. The caller gets its answer without waiting for
    /// the store to come back. `again` makes the outcome anew for that: it
    /// is called only when the store failed, so a completion that succeeds
    /// copies nothing.
    ///
    /// Written as a function returning a future, not as an `async fn`: an
    /// `async fn` keeps a second copy of its arguments in its state, and
    /// this one's is part of every keyed request's.
    pub(crate) fn complete(
        &mut self,
        outcome: StoredOutcome,
        again: impl FnOnce() -> StoredOutcome,
        ttl: Duration,
    ) -> impl Future<Output = ()> {
        self.settled = true;
        async move {
            match self
                .store
                .complete(&self.record, self.token, outcome, ttl)
                .await
            {
                Ok(()) => return,
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(
                        key = self.record.key(),
                        "idempotency lease lost before the result was stored; the store keeps the record of whoever took over"
                    );
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, key = self.record.key(), "failed to store idempotent result; keeping it in this process and trying again");
                }
            }
            let outcome = again();
            self.kept
                .insert(self.record.clone(), self.fingerprint, outcome.clone(), ttl);
            // Boxed: this path is rare, and unboxed its future would make every
            // completion's future (and every keyed request's) several times
            // larger.
            let retry = Box::pin(self.hand_over().complete_again(outcome, ttl));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(retry)),
                Err(_) => retry.await,
            }
        }
    }

    /// The claim as a value of its own, for work that goes on elsewhere;
    /// this one counts as settled.
    fn hand_over(&mut self) -> Self {
        self.settled = true;
        Self {
            store: self.store.clone(),
            record: self.record.clone(),
            fingerprint: self.fingerprint,
            token: self.token,
            lease: self.lease,
            lease_ends: Mutex::new(self.lease_ends()),
            kept: self.kept.clone(),
            transaction: None,
            settled: false,
        }
    }

    async fn complete_again(self, outcome: StoredOutcome, ttl: Duration) {
        let mut pause = COMPLETION_RETRY_FIRST_PAUSE;
        loop {
            // Stop while a whole try still fits in the lease.
            let margin = (self.lease / 4).max(pause);
            if crate::time::after(pause + margin) >= self.lease_ends() {
                tracing::error!(
                    key = self.record.key(),
                    principal = self.record.principal(),
                    "idempotency store unreachable for the whole lease: the result is kept in this process only, and a duplicate reaching another instance can run again"
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(COMPLETION_RETRY_MAX_PAUSE);
            if let Err(err) = self.renew(self.lease).await {
                if !matches!(err, StoreError::LeaseLost) {
                    continue;
                }
            }
            match self
                .store
                .complete(&self.record, self.token, outcome.clone(), ttl)
                .await
            {
                // The lease still held when this try started, so a lost
                // token means an earlier try whose answer was lost did
                // complete the record.
                Ok(()) | Err(StoreError::LeaseLost) => {
                    tracing::info!(
                        key = self.record.key(),
                        "idempotent result stored after the store came back"
                    );
                    self.kept.remove(&self.record);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, key = self.record.key(), "failed to store idempotent result; trying again");
                }
            }
        }
    }

    /// Gives the key up, so the next claim runs the work again; the work's
    /// transaction, if any, is rolled back first, so that no effect is left
    /// behind for that run to repeat.
    pub(crate) fn release(&mut self) -> impl Future<Output = ()> {
        self.settled = true;
        let rollback = self
            .transaction
            .take()
            .map(|transaction| (*transaction).rollback());
        async move {
            if let Some(rollback) = rollback {
                rollback.await;
            }
            if let Err(err) = self.store.release(&self.record, self.token).await {
                tracing::warn!(error = %err, key = self.record.key(), "failed to release idempotency claim");
            }
        }
    }
}

impl<St: IdempotencyStore> Drop for HeldClaim<St> {
    fn drop(&mut self) {
        // Work that panicked did not finish: release so a retry runs. Any
        // other drop is a crash as far as the store can tell (the process or
        // runtime going away, the caller abandoning the work): the claim
        // expires with its lease. Work in a transaction is the exception:
        // its writes roll back, so its key is released whatever the cause.
        if self.settled || (self.transaction.is_none() && !std::thread::panicking()) {
            return;
        }
        let (store, record, token) = (self.store.clone(), self.record.clone(), self.token);
        let transaction = self.transaction.take();
        let has_transaction = transaction.is_some();
        let mut release = Box::pin(async move {
            if let Some(transaction) = transaction {
                (*transaction).rollback().await;
            }
            if let Err(err) = store.release(&record, token).await {
                tracing::warn!(error = %err, key = record.key(), "failed to release idempotency claim of unfinished work");
            }
        });
        // An in-process store releases on the first poll, before the panic
        // reaches the caller; a networked one (and a rollback) finishes on
        // the runtime.
        let mut cx = Context::from_waker(Waker::noop());
        if has_transaction || release.as_mut().poll(&mut cx).is_pending() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(release);
            }
        }
    }
}

/// The first pause before a completion is tried again; it doubles up to
/// [`COMPLETION_RETRY_MAX_PAUSE`].
const COMPLETION_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(50);
const COMPLETION_RETRY_MAX_PAUSE: Duration = Duration::from_secs(1);

fn after(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| crate::time::after(duration))
}

/// A renewal under way: boxed, since it is rare (a third of a lease into
/// the work) and a store's future type cannot be named.
type PendingRenewal = Pin<Box<dyn Future<Output = Result<Instant, StoreError>> + Send>>;

pin_project! {
    /// Renews a held claim's lease every third of it while its work runs.
    ///
    /// Polled beside the work, after the work returned `Pending`: it is not a
    /// future of its own, so that the work, the claim and the renewer can
    /// sit side by side in one state machine without borrowing each other.
    /// A renewal that fails for another reason than a lost lease is retried
    /// at the next tick: the lease may still be held.
    pub(crate) struct Renewer {
        lease: Duration,
        period: Duration,
        // Set on the work's first pending poll: work that finishes at once
        // (most of it) never touches the timer.
        #[pin]
        tick: Option<tokio::time::Sleep>,
        renewal: Option<PendingRenewal>,
    }
}

impl Renewer {
    /// A renewer of a lease of `lease`.
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            lease,
            period: (lease / 3).max(Duration::from_millis(1)),
            tick: None,
            renewal: None,
        }
    }

    /// Renews `held` when due. `Ready` only once the store said the lease is
    /// lost: the work has no claim any more.
    pub(crate) fn poll_renew<St: IdempotencyStore>(
        self: Pin<&mut Self>,
        held: &HeldClaim<St>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut this = self.project();
        if this.tick.is_none() {
            this.tick.set(Some(tokio::time::sleep(*this.period)));
        }
        loop {
            if let Some(pending) = this.renewal.as_mut() {
                match ready!(pending.as_mut().poll(cx)) {
                    Ok(ends) => held.set_lease_ends(ends),
                    Err(StoreError::LeaseLost) => {
                        tracing::warn!(
                            key = held.record.key(),
                            "idempotency lease lost while the work ran; its result will not be stored"
                        );
                        *this.renewal = None;
                        return Poll::Ready(());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, key = held.record.key(), "failed to renew idempotency lease");
                    }
                }
                *this.renewal = None;
                if let Some(tick) = this.tick.as_mut().as_pin_mut() {
                    tick.reset(crate::time::after(*this.period));
                }
            }
            if let Some(tick) = this.tick.as_mut().as_pin_mut() {
                ready!(tick.poll(cx));
            }
            *this.renewal = Some(held.renewal(*this.lease));
        }
    }
}

/// Outcomes this process could not store, by record: consulted before the
/// store, so that a completion lost to a store outage still answers this
/// process's duplicates. Shared by every clone of a layer or `Once`.
///
/// Bounded: past [`KeptResults::MAX`] entries, the one that would expire
/// first makes room (a store outage that long is an incident, and memory
/// must not grow without bound meanwhile).
#[derive(Clone, Debug, Default)]
pub(crate) struct KeptResults(Arc<KeptInner>);

#[derive(Debug, Default)]
struct KeptInner {
    results: Mutex<HashMap<RecordKey, Kept>>,
    // How many `results` holds, as of its last change: nearly always none,
    // and every keyed request asks, so that answer costs no lock shared by
    // every request of the process.
    len: AtomicUsize,
}

#[derive(Debug)]
struct Kept {
    fingerprint: Fingerprint,
    outcome: StoredOutcome,
    expires_at: Instant,
}

impl KeptResults {
    const MAX: usize = 10_000;

    /// Runs `change` on the results under their lock.
    fn change<R>(&self, change: impl FnOnce(&mut HashMap<RecordKey, Kept>) -> R) -> R {
        let mut results = self.0.results.lock().unwrap_or_else(|e| e.into_inner());
        let output = change(&mut results);
        self.0.len.store(results.len(), Ordering::Release);
        output
    }

    /// The live kept result of `record`, if any.
    fn get(&self, record: &RecordKey) -> Option<(Fingerprint, StoredOutcome)> {
        if self.0.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.change(|kept| match kept.get(record) {
            Some(entry) if entry.expires_at > Instant::now() => {
                Some((entry.fingerprint, entry.outcome.clone()))
            }
            Some(_) => {
                kept.remove(record);
                None
            }
            None => None,
        })
    }

    fn remove(&self, record: &RecordKey) {
        self.change(|kept| kept.remove(record));
    }

    fn insert(
        &self,
        record: RecordKey,
        fingerprint: Fingerprint,
        outcome: StoredOutcome,
        ttl: Duration,
    ) {
        let now = Instant::now();
        self.change(|kept| {
            kept.retain(|_, entry| entry.expires_at > now);
            if kept.len() >= Self::MAX {
                let first = kept
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires_at)
                    .map(|(key, _)| key.clone());
                if let Some(first) = first {
                    kept.remove(&first);
                }
            }
            let expires_at = after(now, ttl);
            kept.insert(
                record,
                Kept {
                    fingerprint,
                    outcome,
                    expires_at,
                },
            );
        });
    }
}
