//! The transactional extension of a store: the record commits in the same
//! database transaction as the work's own writes, so that a crash between
//! the effect and the record cannot let the key run twice.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{FencingToken, RecordKey, StoreError, StoredOutcome};

/// A boxed, sendable future: the transactional path opens a transaction per
/// execution, and a trait object keeps the extension optional for stores.
///
/// ```
/// use tower_reissue::idempotency::store::BoxFuture;
///
/// let answer: BoxFuture<u8> = Box::pin(async { 42 });
/// ```
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A store whose records can commit in the same transaction as the work.
///
/// [`IdempotencyLayer`](crate::IdempotencyLayer) and [`Once`](crate::Once)
/// look for it through
/// [`IdempotencyStore::transactions`](super::IdempotencyStore::transactions):
/// a store that returns `Some` gets the transactional path, every other
/// store (third-party ones included) keeps the plain one.
///
/// The path, for one execution:
///
/// 1. the claim is its own short statement, so a concurrent duplicate is
///    refused at once;
/// 2. [`begin`](Self::begin) opens a transaction, which the work reaches
///    through the handle [`StoreTransaction::attach`] puts in the request's
///    extensions;
/// 3. when the work's result is to be stored, the lease renewer stops and
///    [`StoreTransaction::commit`] writes the result into the record inside
///    that transaction, fenced by the claim's token and in-flight state,
///    then commits; a fenced write that matches nothing rolls back;
/// 4. a result that is not stored (an error, a panic, a dropped future)
///    rolls back with [`StoreTransaction::rollback`], and only then is the
///    key released (unless the work kept the handle and holds its lock:
///    then the rollback finishes once it lets go, and the transaction can
///    no longer commit through the handle).
///
/// `PostgresStore` (feature `postgres`) implements it.
///
/// # Example
///
/// A store whose transactions are a log of what was committed, to show the
/// shape (a real one wraps a database transaction):
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tower_reissue::idempotency::store::{
///     BoxFuture, CommitError, FencingToken, RecordKey, StoreError, StoreTransaction,
///     StoredOutcome, TransactionalStore,
/// };
///
/// #[derive(Clone, Default)]
/// struct Log(Arc<Mutex<Vec<String>>>);
///
/// struct Entry {
///     log: Log,
///     key: String,
/// }
///
/// impl StoreTransaction for Entry {
///     fn attach(&self, extensions: &mut http::Extensions) {
///         // The work finds the log in its request's extensions.
///         extensions.insert(self.log.clone());
///     }
///     fn commit(self: Box<Self>, _outcome: StoredOutcome, _ttl: Duration) -> BoxFuture<Result<(), CommitError>> {
///         Box::pin(async move {
///             self.log.0.lock().unwrap().push(format!("committed {}", self.key));
///             Ok(())
///         })
///     }
///     fn rollback(self: Box<Self>) -> BoxFuture<()> {
///         Box::pin(async {})
///     }
/// }
///
/// impl TransactionalStore for Log {
///     fn begin(&self, key: &RecordKey, _token: FencingToken, _lease: Duration)
///         -> BoxFuture<Result<Box<dyn StoreTransaction>, StoreError>>
///     {
///         let entry = Entry { log: self.clone(), key: key.key().to_owned() };
///         Box::pin(async move { Ok(Box::new(entry) as Box<dyn StoreTransaction>) })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let log = Log::default();
/// let tx = log.begin(&RecordKey::new("p", "k"), FencingToken::new(1), Duration::from_secs(1)).await?;
/// tx.commit(StoredOutcome::Failed("x".into()), Duration::from_secs(1)).await.unwrap();
/// assert_eq!(log.0.lock().unwrap()[0], "committed k");
/// # Ok::<_, StoreError>(())
/// # }).unwrap();
/// ```
pub trait TransactionalStore: Send + Sync {
    /// Opens a transaction for the execution that holds `token` on `key`,
    /// whose lease is `lease`.
    fn begin(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<Result<Box<dyn StoreTransaction>, StoreError>>;
}

/// A transaction a [`TransactionalStore`] opened for one execution.
///
/// Dropping it without [`commit`](Self::commit) or
/// [`rollback`](Self::rollback) must roll it back (it is dropped when the
/// request's future is). See [`TransactionalStore`] for an example.
pub trait StoreTransaction: Send + Sync + 'static {
    /// Hands the transaction to the work: inserts its handle into
    /// `extensions` (a request's, or ones made for a [`Once`](crate::Once)
    /// closure).
    fn attach(&self, extensions: &mut http::Extensions);

    /// Writes `outcome` into the record, live for `ttl`, fenced by the
    /// claim's token and in-flight state, and commits together with the
    /// work's writes.
    fn commit(
        self: Box<Self>,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> BoxFuture<Result<(), CommitError>>;

    /// Rolls the work's writes back.
    fn rollback(self: Box<Self>) -> BoxFuture<()>;
}

/// Why [`StoreTransaction::commit`] did not commit.
///
/// ```
/// use tower_reissue::idempotency::store::CommitError;
///
/// assert!(CommitError::LeaseLost.to_string().contains("rolled back"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum CommitError {
    /// The fenced write matched no record: the lease went to another
    /// execution. Everything was rolled back.
    LeaseLost,
    /// The work kept the transaction's handle past its end (moved into a
    /// spawned task or a streaming body), so what it wrote after the commit
    /// would be outside the guarantee. Nothing commits: the transaction is
    /// rolled back as soon as whoever kept the handle lets go of it (the
    /// key may be released before that; the transaction can no longer
    /// commit through the handle).
    Escaped,
    /// A statement of the work's own failed, so the database aborted the
    /// transaction: nothing the work wrote commits, and its result is not
    /// stored. (A handler that expects a statement to fail runs it under a
    /// savepoint.)
    Aborted,
    /// The commit failed, or its answer was lost: whether it took effect is
    /// unknown (the record says: completed if it did, still in flight under
    /// the same token if it did not).
    Failed(StoreError),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::LeaseLost => f.write_str(
                "idempotency claim lost before the commit: the transaction was rolled back",
            ),
            CommitError::Escaped => f.write_str(
                "the transaction's handle was kept past the work (a spawned task or a streaming body): rolled back",
            ),
            CommitError::Aborted => f.write_str(
                "the transaction was aborted by a failed statement of the work's own: nothing it wrote commits",
            ),
            CommitError::Failed(_) => f.write_str("the transaction's commit failed or was not answered"),
        }
    }
}

impl StdError for CommitError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CommitError::Failed(err) => Some(err),
            _ => None,
        }
    }
}
