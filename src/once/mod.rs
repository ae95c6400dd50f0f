//! Exactly-once work outside HTTP: queue consumers, cron jobs, webhooks.
//!
//! A message queue delivers at least once, and a scheduler re-runs a job that
//! seemed to fail: without protection the welcome email goes out once per
//! delivery. [`Once`] runs a closure at most once per (scope, key) over any
//! [`IdempotencyStore`], with the same steps and guarantees as
//! [`IdempotencyLayer`](crate::IdempotencyLayer) (they share one
//! implementation):
//!
//! 1. The record (scope, key) is claimed in the store with a lease and a
//!    fencing token. The [`Fingerprint`] of what is being done (usually the
//!    message's payload) is stored with it: the same key with another
//!    fingerprint is refused ([`OnceError::FingerprintMismatch`]).
//! 2. If nobody held the key, the closure runs while the lease is renewed.
//!    Its value is stored as JSON (with `serde`) for the `ttl` and returned as
//!    [`Ran::Executed`]. Later calls get [`Ran::Replayed`] with the stored
//!    value, and the closure does not run.
//! 3. A failing closure releases the claim so the next delivery runs it
//!    again, unless it returns [`Failure::store`]: then its failure is kept
//!    and later calls get [`OnceError::StoredFailure`].
//! 4. A concurrent duplicate waits up to
//!    [`wait_for_result`](Once::wait_for_result) for the running one's value,
//!    then gets [`OnceError::InFlight`].
//! 5. The store failing means [`OnceError::Unavailable`], and the closure
//!    does not run (fail closed).
//!
//! Crashes: a process that dies (or drops the future returned by
//! [`run`](Once::run)) mid-closure leaves its claim behind; a redelivery gets
//! `InFlight` until the lease runs out, then runs the closure. A worker that
//! was paused past its lease loses its claim to the next one: its next
//! renewal is refused by fencing, the closure is stopped
//! ([`OnceError::LeaseLost`]) and its result is never stored over the other
//! one's (a closure that finishes before that renewal has its completion
//! refused the same way; the call still returns its value, as the effect
//! took place). What no store can decide is a crash *between* the closure's effect
//! and the recording of its value (for a networked store, one round trip):
//! make the effect the closure's last step, and give it the key as a
//! reference where the receiving side can deduplicate.
//!
//! # When to use the layer, when `Once`
//!
//! [`IdempotencyLayer`](crate::IdempotencyLayer) protects an HTTP API you
//! serve, keyed by the client's `Idempotency-Key`. `Once` protects work your
//! own code starts: a consumer handling a redelivered message, a job that
//! may run twice, a webhook handler keyed by the event id.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_reissue::idempotency::store::Fingerprint;
//! use tower_reissue::once::{Failure, Ran};
//! use tower_reissue::{MemoryStore, Once};
//!
//! async fn send_welcome_email(user: &str) -> Result<String, std::io::Error> {
//!     Ok(format!("message-id-for-{user}"))
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let once = Once::new(MemoryStore::new())
//!     .ttl(Duration::from_secs(7 * 24 * 3600))
//!     .lease(Duration::from_secs(30));
//!
//! // The same message, delivered twice.
//! for _ in 0..2 {
//!     let payload = r#"{"user":"alice"}"#;
//!     let ran = once
//!         .run("welcome-email", "user/alice", Fingerprint::of(payload), || async {
//!             let id = send_welcome_email("alice").await?;
//!             Ok::<_, Failure<std::io::Error>>(id)
//!         })
//!         .await?;
//!     match ran {
//!         Ran::Executed(id) => println!("sent {id}"),
//!         Ran::Replayed(id) => println!("already sent as {id}"),
//!     }
//! }
//! # Ok::<_, tower_reissue::OnceError<std::io::Error>>(())
//! # }).unwrap();
//! ```

mod error;

pub use error::OnceError;

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::exec::{self, ClaimRules, Claimed, HeldClaim, Refused, Renewal};
use crate::store::{Fingerprint, IdempotencyStore, RecordKey, StoredOutcome};

/// Runs closures at most once per (scope, key), over an [`IdempotencyStore`].
///
/// See the [module documentation](self) for the rules. Defaults: values are
/// kept 24 h, a claim's lease is 60 s (renewed every third of it while the
/// closure runs), and a concurrent duplicate gets
/// [`OnceError::InFlight`] at once. Clones share the store.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::{MemoryStore, Once};
///
/// let once = Once::new(MemoryStore::new())
///     .ttl(Duration::from_secs(3600))
///     .lease(Duration::from_secs(10))
///     .wait_for_result(Duration::from_secs(2));
/// ```
#[derive(Clone, Debug)]
pub struct Once<St> {
    store: St,
    ttl: Duration,
    rules: ClaimRules,
}

impl<St: IdempotencyStore> Once<St> {
    /// Runs closures once per key in `store`.
    pub fn new(store: St) -> Self {
        Self {
            store,
            ttl: Duration::from_secs(24 * 60 * 60),
            rules: ClaimRules {
                lease: Duration::from_secs(60),
                wait_for_result: None,
                wait_poll_interval: Duration::from_millis(50),
                kept: Default::default(),
            },
        }
    }

    /// How long a value is kept, and so how long duplicates are recognised
    /// (default 24 h). Make it longer than the longest redelivery delay.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{MemoryStore, Once};
    /// let once = Once::new(MemoryStore::new()).ttl(Duration::from_secs(14 * 24 * 3600));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The claim's lease (default 60 s): how long after a crash the key can
    /// run again. It is renewed every third of it while the closure runs, so
    /// a slow closure keeps its claim.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{MemoryStore, Once};
    /// let once = Once::new(MemoryStore::new()).lease(Duration::from_secs(15));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.rules.lease = lease;
        self
    }

    /// Lets a duplicate wait up to `max` for the running execution's value
    /// (asking the store every 50 ms) before it gets
    /// [`OnceError::InFlight`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{MemoryStore, Once};
    /// let once = Once::new(MemoryStore::new()).wait_for_result(Duration::from_secs(5));
    /// ```
    pub fn wait_for_result(mut self, max: Duration) -> Self {
        self.rules.wait_for_result = Some(max);
        self
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// Runs `work` unless this (scope, key) already ran, and returns its value.
    ///
    /// `scope` separates independent uses of one store (`"welcome-email"`,
    /// a tenant id...); `key` names the unit of work inside it (a message or
    /// event id). `fingerprint` describes what the work is, so that a key
    /// reused for something else is refused rather than answered with the
    /// wrong value: [`Fingerprint::of`] the payload is the usual choice.
    ///
    /// The closure returns `Ok(value)` to store `value`, or a [`Failure`]
    /// (`?` turns any error into one that releases the claim).
    ///
    /// ```
    /// use tower_reissue::idempotency::store::Fingerprint;
    /// use tower_reissue::once::{Failure, Ran};
    /// use tower_reissue::{MemoryStore, Once};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let once = Once::new(MemoryStore::new());
    /// let job = || async { Ok::<_, Failure<std::io::Error>>(vec![1, 2, 3]) };
    /// let first = once.run("nightly-report", "2026-12-01", Fingerprint::of("v1"), job).await?;
    /// let again = once.run("nightly-report", "2026-12-01", Fingerprint::of("v1"), job).await?;
    /// assert_eq!(first, Ran::Executed(vec![1, 2, 3]));
    /// assert_eq!(again, Ran::Replayed(vec![1, 2, 3]));
    /// # Ok::<_, tower_reissue::OnceError<std::io::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn run<T, E, F, Fut>(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        fingerprint: Fingerprint,
        work: F,
    ) -> Result<Ran<T>, OnceError<E>>
    where
        T: Serialize + DeserializeOwned,
        E: fmt::Display,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Failure<E>>>,
    {
        let held = match self.claim(scope, key, fingerprint).await? {
            Ok(held) => held,
            Err(replayed) => return Ok(replayed),
        };
        self.finish(held, work()).await
    }

    /// Like [`run`](Self::run), with the closure's writes and its stored
    /// value committed in one transaction of a transactional store (the
    /// inbox pattern): a worker that dies before the commit leaves neither,
    /// and the redelivery runs the closure once more; one that dies after it
    /// leaves both, and the redelivery replays.
    ///
    /// The closure gets the store's transaction handle, `Tx` (with
    /// `PostgresStore`, feature `postgres`: `PgTransaction`). A failure the
    /// closure does not [store](Failure::store) rolls its writes back before
    /// the key is released. The commit's failure is
    /// [`OnceError::NotCommitted`]; a store without transactions, or a `Tx`
    /// that is not its handle, is [`OnceError::NotTransactional`] (and the
    /// closure does not run).
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")]
    /// # mod example {
    /// use tower_reissue::idempotency::PgTransaction;
    /// use tower_reissue::idempotency::store::{Fingerprint, PostgresStore};
    /// use tower_reissue::once::Failure;
    /// use tower_reissue::Once;
    ///
    /// # async fn run(store: PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let once = Once::new(store);
    /// let payload = r#"{"order":17}"#;
    /// once.run_in_transaction("orders", "message-17", Fingerprint::of(payload), |tx: PgTransaction| async move {
    ///     let mut conn = tx.acquire().await.map_err(|e| Failure::release(std::io::Error::other(e)))?;
    ///     sqlx::query("INSERT INTO shipments (order_id) VALUES (17)")
    ///         .execute(&mut *conn)
    ///         .await
    ///         .map_err(|e| Failure::release(std::io::Error::other(e)))?;
    ///     Ok::<_, Failure<std::io::Error>>(())
    /// })
    /// .await?;
    /// # Ok(()) }
    /// # }
    /// ```
    pub async fn run_in_transaction<Tx, T, E, F, Fut>(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        fingerprint: Fingerprint,
        work: F,
    ) -> Result<Ran<T>, OnceError<E>>
    where
        Tx: Clone + Send + Sync + 'static,
        T: Serialize + DeserializeOwned,
        E: fmt::Display,
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<T, Failure<E>>>,
    {
        let mut held = match self.claim(scope, key, fingerprint).await? {
            Ok(held) => held,
            Err(replayed) => return Ok(replayed),
        };
        if let Err(error) = held.begin().await {
            held.release().await;
            return Err(OnceError::Unavailable(error));
        }
        let mut extensions = http::Extensions::new();
        held.attach(&mut extensions);
        let Some(transaction) = extensions.remove::<Tx>() else {
            held.release().await;
            return Err(OnceError::NotTransactional);
        };
        self.finish(held, work(transaction)).await
    }

    /// Claims the record: the held claim, or the replayed value.
    async fn claim<T: DeserializeOwned, E>(
        &self,
        scope: impl Into<String>,
        key: impl Into<String>,
        fingerprint: Fingerprint,
    ) -> Result<Result<HeldClaim<St>, Ran<T>>, OnceError<E>> {
        let record = RecordKey::new(scope, key);
        let token = match exec::claim(&self.store, &record, &fingerprint, &self.rules).await {
            Ok(Claimed::Acquired(token)) => token,
            Ok(Claimed::Completed(outcome)) => return replay(outcome).map(Err),
            Err(Refused::FingerprintMismatch) => return Err(OnceError::FingerprintMismatch),
            Err(Refused::InFlight) => return Err(OnceError::InFlight),
            Err(Refused::Store(error)) => return Err(OnceError::Unavailable(error)),
        };
        Ok(Ok(HeldClaim::new(
            self.store.clone(),
            record,
            fingerprint,
            token,
            &self.rules,
        )))
    }

    /// Runs the work while renewing the claim, then stores its value (in
    /// the work's transaction, if it has one) or releases the claim.
    async fn finish<T, E, Fut>(
        &self,
        mut held: HeldClaim<St>,
        work: Fut,
    ) -> Result<Ran<T>, OnceError<E>>
    where
        T: Serialize,
        E: fmt::Display,
        Fut: Future<Output = Result<T, Failure<E>>>,
    {
        let mut work = pin!(work);
        let result = match held.renewing(self.rules.lease, work.as_mut()).await {
            Renewal::Finished(result) => result,
            // Someone else may be running it now: finishing would repeat the
            // effect, for a result the store would refuse anyway.
            Renewal::Lost => return Err(OnceError::LeaseLost),
        };
        let (outcome, answer) = match result {
            Ok(value) => match serde_json::to_vec(&value) {
                Ok(json) => (
                    StoredOutcome::Value(Bytes::from(json)),
                    Ok(Ran::Executed(value)),
                ),
                Err(error) => (
                    StoredOutcome::Failed(format!("its value could not be encoded: {error}")),
                    Err(OnceError::Encode(error)),
                ),
            },
            Err(Failure { error, store: true }) => (
                StoredOutcome::Failed(error.to_string()),
                Err(OnceError::Failed(error)),
            ),
            Err(Failure {
                error,
                store: false,
            }) => {
                held.release().await;
                return Err(OnceError::Failed(error));
            }
        };
        if held.is_transactional() {
            held.commit(outcome, self.ttl)
                .await
                .map_err(OnceError::NotCommitted)?;
        } else {
            let again = outcome.clone();
            held.complete(outcome, move || again, self.ttl).await;
        }
        answer
    }
}

fn replay<T: DeserializeOwned, E>(outcome: StoredOutcome) -> Result<Ran<T>, OnceError<E>> {
    match outcome {
        StoredOutcome::Value(json) => serde_json::from_slice(&json)
            .map(Ran::Replayed)
            .map_err(OnceError::Decode),
        StoredOutcome::Failed(message) => Err(OnceError::StoredFailure(message)),
        // A record of an HTTP request under the same scope and key.
        StoredOutcome::Response(_) | StoredOutcome::NotStored { .. } => {
            Err(OnceError::FingerprintMismatch)
        }
    }
}

/// What a [`Once::run`] call did to produce its value.
///
/// ```
/// use tower_reissue::once::Ran;
///
/// let ran = Ran::Replayed("message-id-17");
/// assert!(!ran.executed());
/// assert_eq!(*ran.get(), "message-id-17");
/// assert_eq!(ran.into_inner(), "message-id-17");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran<T> {
    /// The closure ran on this call and returned the value.
    Executed(T),
    /// An earlier call ran it; the value was read back from the store.
    Replayed(T),
}

impl<T> Ran<T> {
    /// Whether the closure ran on this call.
    pub fn executed(&self) -> bool {
        matches!(self, Ran::Executed(_))
    }

    /// The value.
    pub fn get(&self) -> &T {
        match self {
            Ran::Executed(value) | Ran::Replayed(value) => value,
        }
    }

    /// The value, however it was obtained.
    pub fn into_inner(self) -> T {
        match self {
            Ran::Executed(value) | Ran::Replayed(value) => value,
        }
    }
}

/// A failed [`Once::run`] closure, and whether the failure is final.
///
/// By default (and through `?`, which converts any error) the claim is
/// released and the next call runs the closure again: right when the failure
/// means the work did not take effect. When it did take effect and a repeat
/// would do harm (the email went out, the receipt could not be saved),
/// [`store`](Self::store) keeps the failure so the closure never runs again.
///
/// ```
/// use tower_reissue::once::Failure;
///
/// fn classify(error: std::io::Error, email_sent: bool) -> Failure<std::io::Error> {
///     if email_sent { Failure::store(error) } else { Failure::release(error) }
/// }
/// let failure: Failure<&str> = "connection refused".into();
/// assert_eq!(failure.into_inner(), "connection refused");
/// ```
#[derive(Debug)]
pub struct Failure<E> {
    error: E,
    store: bool,
}

impl<E> Failure<E> {
    /// A failure that did not take effect: release the claim, run again next
    /// time.
    pub fn release(error: E) -> Self {
        Self {
            error,
            store: false,
        }
    }

    /// A failure after the effect: store it (its `Display` text) so the
    /// closure does not run again.
    pub fn store(error: E) -> Self {
        Self { error, store: true }
    }

    /// The error.
    pub fn into_inner(self) -> E {
        self.error
    }
}

impl<E> From<E> for Failure<E> {
    fn from(error: E) -> Self {
        Self::release(error)
    }
}
