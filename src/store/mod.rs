//! The exactly-once core: the store contract, record keys, fingerprints,
//! the stored outcome and its codec, errors, and the one
//! claim/renew/complete/release path ([`exec`]) that
//! [`IdempotencyLayer`](crate::IdempotencyLayer) and [`Once`](crate::Once)
//! both run through. Public as [`idempotency::store`](crate::idempotency::store).

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{
    MissingTransaction, PgTransaction, PgTransactionGuard, PostgresError, PostgresStore,
    PostgresStoreBuilder, TransactionFinished,
};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
#[cfg(all(fuzzing, feature = "redis"))]
pub(crate) use self::redis::parse_claim as parse_redis_claim;
pub use memory::MemoryStore;
mod error;
pub(crate) mod exec;
mod fingerprint;
mod outcome;
mod record;
mod transaction;

pub use error::StoreError;
pub use fingerprint::Fingerprint;
pub use outcome::{StoredOutcome, StoredResponse};
pub use record::RecordKey;
pub use transaction::{BoxFuture, CommitError, StoreTransaction, TransactionalStore};

/// The former name of [`StoredOutcome`], which is also the name of
/// [`classify::Outcome`](crate::classify::Outcome).
#[deprecated(since = "0.2.0", note = "renamed to `StoredOutcome`")]
pub type Outcome = StoredOutcome;

use std::future::Future;
use std::time::Duration;

/// The storage behind [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// # Contract
///
/// Every implementation must provide these guarantees; the layer's
/// exactly-once behaviour rests on them. "Now" is the store's own clock.
///
/// * A record is **live** while it is in flight and `now < lease end`, or
///   completed and `now < completion time + ttl`. A record that is not live
///   behaves exactly as if it were absent (it may be deleted lazily or
///   eagerly; the difference must not be observable).
/// * [`claim`](Self::claim) is **atomic** with respect to every other
///   operation on the same key: of any number of concurrent claims of a key
///   without a live record, exactly one returns [`Claim::Acquired`]; the
///   others see [`Claim::InFlight`] (or [`Claim::Completed`] if the winner has
///   already completed). The acquired record's lease ends `lease` after the
///   claim, and it stores `fingerprint`, which later claims get back so the
///   caller can tell a reused key from a genuine duplicate. A claim never
///   changes a live record.
/// * **Fencing.** Every successful claim returns a [`FencingToken`] that has
///   never been returned before for that key (a store-wide counter that only
///   grows is the usual choice; a store without one can make it from its
///   own clock, which the claims of one key follow, and random bits, as
///   `RedisStore` does). [`complete`](Self::complete),
///   [`renew`](Self::renew) and [`release`](Self::release) succeed only when
///   the key's record is in flight, **live**, and was acquired with exactly
///   that token; otherwise they change nothing and return
///   [`StoreError::LeaseLost`]. So a worker whose lease ran out (paused by GC,
///   cut off by a partition, or simply slow) can never overwrite, extend or
///   delete the record of the request that took over after it, and its late
///   result is never stored.
/// * [`complete`](Self::complete) atomically turns the record into a
///   completed one holding `outcome`, live for `ttl` from now, and keeps the
///   fingerprint given at claim time. Later claims return it, byte for byte.
/// * [`renew`](Self::renew) moves the lease end to `now + lease`.
/// * [`release`](Self::release) removes the record, so the next claim is
///   acquired at once.
/// * Errors other than [`StoreError::LeaseLost`] mean the operation's effect
///   is unknown (for example a timeout); the layer then treats the store as
///   unavailable. A store never panics on any input.
/// * A store may bound its size. When it cannot take a new record it fails
///   the claim with [`StoreError::Full`]; it must never drop a live in-flight
///   record to make room (that would allow a second execution), but it may
///   drop completed records early, and it should drop records that are no
///   longer live first. It may bound what one principal holds, failing that
///   principal's claims with [`StoreError::QuotaExceeded`] rather than
///   dropping anyone else's records.
///
/// The futures must be `Send` so the layer can be used on a multi-threaded
/// runtime; writing the methods as `async fn` in the `impl` works.
///
/// # Implementing a store
///
/// A shared store maps each operation to one atomic step: for Redis a Lua
/// script (`RedisStore`, feature `redis`: a token from Redis's clock and
/// random bits and `PEXPIRE` for `claim`, token-checking scripts for the
/// others); for SQL an `INSERT ... ON CONFLICT` plus
/// `UPDATE ... WHERE token = $1 AND lease_end > now()`. [`StoredOutcome::to_bytes`]
/// and [`StoredOutcome::from_bytes`] give a compact encoding of a stored result, and
/// [`Fingerprint::as_bytes`] / [`Fingerprint::from_bytes`] one for the
/// fingerprint.
///
/// Each keyed request keeps the store's futures in its own state, which is
/// allocated once per request; a small future keeps that allocation cheap.
/// An `async fn` keeps a second copy of its arguments in its future, an
/// `async` block returned by a plain function keeps one (`MemoryStore`
/// does this; `async fn`, as below, is fine for a networked store).
///
/// # Example
///
/// A store that forwards to another store and counts claims:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::idempotency::store::{
///     Claim, FencingToken, Fingerprint, IdempotencyStore, StoredOutcome, RecordKey, StoreError,
/// };
///
/// #[derive(Clone, Default)]
/// struct Counting {
///     inner: MemoryStore,
///     claims: Arc<AtomicUsize>,
/// }
///
/// impl IdempotencyStore for Counting {
///     async fn claim(
///         &self,
///         key: &RecordKey,
///         fingerprint: &Fingerprint,
///         lease: Duration,
///     ) -> Result<Claim, StoreError> {
///         self.claims.fetch_add(1, Ordering::Relaxed);
///         self.inner.claim(key, fingerprint, lease).await
///     }
///     async fn complete(
///         &self,
///         key: &RecordKey,
///         token: FencingToken,
///         outcome: StoredOutcome,
///         ttl: Duration,
///     ) -> Result<(), StoreError> {
///         self.inner.complete(key, token, outcome, ttl).await
///     }
///     async fn renew(
///         &self,
///         key: &RecordKey,
///         token: FencingToken,
///         lease: Duration,
///     ) -> Result<(), StoreError> {
///         self.inner.renew(key, token, lease).await
///     }
///     async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
///         self.inner.release(key, token).await
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = Counting::default();
/// let key = RecordKey::new("principal", "key-1");
/// let fingerprint = Fingerprint::from_bytes([7; 32]);
/// let Claim::Acquired(token) = store.claim(&key, &fingerprint, Duration::from_secs(60)).await? else {
///     panic!("a fresh key is acquired");
/// };
/// assert!(matches!(
///     store.claim(&key, &fingerprint, Duration::from_secs(60)).await?,
///     Claim::InFlight { .. }
/// ));
/// store.release(&key, token).await?;
/// assert_eq!(store.claims.load(Ordering::Relaxed), 2);
/// # Ok::<_, StoreError>(())
/// # }).unwrap();
/// ```
pub trait IdempotencyStore: Clone + Send + Sync + 'static {
    /// Claims `key` for one execution, or reports the live record that holds it.
    ///
    /// See the [trait documentation](IdempotencyStore#contract) for atomicity
    /// and fencing.
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Stores the result of the execution that holds `token`, live for `ttl`.
    fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease held with `token` to `lease` from now.
    fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives up the claim held with `token`, so the key can execute again.
    fn release(
        &self,
        key: &RecordKey,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// This store's [transactional extension](TransactionalStore), if it has
    /// one: then the record commits in the same transaction as the work's
    /// writes. The default, `None`, keeps records apart from the work, as
    /// [`MemoryStore`] and `RedisStore` do.
    ///
    /// ```
    /// use tower_reissue::MemoryStore;
    /// use tower_reissue::idempotency::store::IdempotencyStore;
    ///
    /// assert!(MemoryStore::new().transactions().is_none());
    /// ```
    fn transactions(&self) -> Option<&dyn TransactionalStore> {
        None
    }
}

/// Proof of holding a claim; see [fencing](IdempotencyStore#contract).
///
/// ```
/// use tower_reissue::idempotency::store::FencingToken;
///
/// assert_eq!(FencingToken::new(42).get(), 42);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with this value.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Clone, Debug)]
pub enum Claim {
    /// There was no live record: the caller now holds the key and must run the
    /// request, then [`complete`](IdempotencyStore::complete) or
    /// [`release`](IdempotencyStore::release) it with this token.
    Acquired(FencingToken),
    /// Another request holds the key and has not finished.
    InFlight {
        /// The fingerprint of the request holding the key.
        fingerprint: Fingerprint,
    },
    /// The key's request has finished and its outcome is stored.
    Completed {
        /// The fingerprint of the request that produced `outcome`.
        fingerprint: Fingerprint,
        /// The stored outcome.
        outcome: StoredOutcome,
    },
}
