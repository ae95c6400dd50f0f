use std::error::Error as StdError;
use std::fmt;

use crate::store::{CommitError, StoreError};

/// Why [`Once::run`](super::Once::run) did not return a value.
///
/// Only [`Failed`](Self::Failed) and [`LeaseLost`](Self::LeaseLost) mean the
/// closure ran on this call; every other variant means it did not.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::once::{Failure, OnceError};
/// use tower_reissue::idempotency::store::Fingerprint;
/// use tower_reissue::{MemoryStore, Once};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let once = Once::new(MemoryStore::new()).lease(Duration::from_secs(30));
/// let result = once
///     .run("emails", "welcome/42", Fingerprint::of("42"), || async {
///         Err::<(), _>(Failure::release("mail server said 451"))
///     })
///     .await;
/// let Err(OnceError::Failed(error)) = result else { panic!("the closure failed") };
/// assert_eq!(error, "mail server said 451");
/// # });
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum OnceError<E> {
    /// The store could not be asked (unreachable, timed out, full): the
    /// closure did not run. Try again later; running it unprotected could
    /// repeat its effect.
    Unavailable(StoreError),
    /// Another execution holds the key and did not finish within
    /// [`wait_for_result`](super::Once::wait_for_result): the closure did not
    /// run. Its result will be available once it finishes; if it crashed, the
    /// key can run again once its lease runs out.
    InFlight,
    /// The key was first used with a different fingerprint (another payload,
    /// or an HTTP request): the closure did not run.
    FingerprintMismatch,
    /// The key's stored value could not be decoded as the requested type: the
    /// closure did not run.
    Decode(serde_json::Error),
    /// The closure ran but its value could not be encoded as JSON. The key is
    /// marked as done, so it does not run again; duplicates get
    /// [`StoredFailure`](Self::StoredFailure).
    Encode(serde_json::Error),
    /// The closure ran on this call and failed. Unless it returned
    /// [`Failure::store`](super::Failure::store), the claim was released and
    /// the next call runs it again.
    Failed(E),
    /// An earlier run failed after taking effect and stored its failure: the
    /// closure did not run. The error's message, as it was stored.
    StoredFailure(String),
    /// The store no longer held this call's claim when it renewed the lease
    /// (the lease ran out, for example while the process was paused, and
    /// another execution may have taken over): the closure was stopped and
    /// its result is not stored.
    LeaseLost,
    /// The closure of [`run_in_transaction`](super::Once::run_in_transaction)
    /// ran, and its transaction did not commit: its writes were rolled back
    /// (or, when the commit's answer was lost, may have been committed
    /// together with its value), and the claim was released if they were
    /// not. The next call replays or runs it again, never both.
    NotCommitted(CommitError),
    /// [`run_in_transaction`](super::Once::run_in_transaction) on a store
    /// without transactions, or with a handle type that is not the store's:
    /// the closure did not run.
    NotTransactional,
}

impl<E: fmt::Display> fmt::Display for OnceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnceError::Unavailable(_) => f.write_str("idempotency store unavailable; not run"),
            OnceError::InFlight => f.write_str("another execution holds this key; not run"),
            OnceError::FingerprintMismatch => {
                f.write_str("key already used with a different fingerprint; not run")
            }
            OnceError::Decode(_) => f.write_str("stored value could not be decoded; not run"),
            OnceError::Encode(_) => f.write_str("value could not be encoded for storing"),
            OnceError::Failed(error) => write!(f, "run failed: {error}"),
            OnceError::StoredFailure(message) => {
                write!(f, "an earlier run failed after taking effect: {message}")
            }
            OnceError::LeaseLost => {
                f.write_str("claim lost while running: lease expired or taken over")
            }
            OnceError::NotCommitted(error) => write!(f, "ran, but not committed: {error}"),
            OnceError::NotTransactional => {
                f.write_str("the store has no transactions of this handle type; not run")
            }
        }
    }
}

impl<E: StdError + 'static> StdError for OnceError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            OnceError::Unavailable(error) => Some(error),
            OnceError::Decode(error) | OnceError::Encode(error) => Some(error),
            OnceError::Failed(error) => Some(error),
            OnceError::NotCommitted(error) => Some(error),
            _ => None,
        }
    }
}
