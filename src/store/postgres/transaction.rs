//! The handler's transaction: the handle handed to the handler, and the
//! store's side of it, which commits the record with the handler's writes.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::{DEFAULT_LEASE, PostgresStore, idle_timeout, millis, pg_millis, token_value};
use crate::store::{
    BoxFuture, CommitError, FencingToken, RecordKey, StoreError, StoreTransaction, StoredOutcome,
};

type Slot = Option<Transaction<'static, Postgres>>;

/// The transaction a keyed request's handler writes through, so that its
/// writes and the idempotency record commit together (see
/// [`PostgresStore`]).
///
/// An axum extractor, and a request extension for any other service. Its
/// connection is READ COMMITTED. The layer commits it when the handler's
/// result is stored and rolls it back otherwise: never commit or roll back
/// yourself, and do not keep the handle past the handler (a spawned task,
/// a streaming body): the layer then rolls everything back and answers 500,
/// since writes after the commit would be outside the guarantee. Writes a
/// handler makes through any other connection are outside the guarantee
/// too.
///
/// ```no_run
/// use axum::http::StatusCode;
/// use tower_reissue::idempotency::PgTransaction;
///
/// async fn pay(tx: PgTransaction) -> Result<StatusCode, StatusCode> {
///     let mut conn = tx.acquire().await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
///     sqlx::query("INSERT INTO payments (reference, amount) VALUES ($1, $2)")
///         .bind("order-17")
///         .bind(100_i64)
///         .execute(&mut *conn)
///         .await
///         .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
///     Ok(StatusCode::CREATED)
/// }
/// ```
#[derive(Clone)]
pub struct PgTransaction {
    slot: Arc<Mutex<Slot>>,
}

impl fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}

impl PgTransaction {
    fn new(transaction: Transaction<'static, Postgres>) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(transaction))),
        }
    }

    /// The transaction's connection, held until the guard is dropped;
    /// an error once the layer has committed or rolled it back.
    pub async fn acquire(&self) -> Result<PgTransactionGuard, TransactionFinished> {
        let guard = self.slot.clone().lock_owned().await;
        OwnedMutexGuard::try_map(guard, |slot| slot.as_deref_mut())
            .map(PgTransactionGuard)
            .map_err(|_| TransactionFinished)
    }

    /// Takes the transaction out, once nothing else can reach it: `None`
    /// when the handle was kept past the work, which then gets
    /// [`TransactionFinished`] from now on.
    fn take_sole(self) -> Result<Transaction<'static, Postgres>, Self> {
        if Arc::strong_count(&self.slot) > 1 {
            return Err(self);
        }
        match self.slot.try_lock().ok().and_then(|mut slot| slot.take()) {
            Some(transaction) => Ok(transaction),
            None => Err(self),
        }
    }

    async fn take(&self) -> Option<Transaction<'static, Postgres>> {
        self.slot.lock().await.take()
    }
}

/// The connection of a [`PgTransaction`], from
/// [`acquire`](PgTransaction::acquire): use `&mut *guard` as a sqlx
/// executor.
///
/// ```no_run
/// # async fn run(tx: tower_reissue::idempotency::PgTransaction) -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = tx.acquire().await?;
/// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
/// # Ok(()) }
/// ```
pub struct PgTransactionGuard(OwnedMappedMutexGuard<Slot, PgConnection>);

impl fmt::Debug for PgTransactionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransactionGuard").finish_non_exhaustive()
    }
}

impl Deref for PgTransactionGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for PgTransactionGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

/// The [`PgTransaction`] was already committed or rolled back by the
/// layer: the handle was used after the handler answered.
///
/// ```
/// use tower_reissue::idempotency::store::TransactionFinished;
///
/// assert!(TransactionFinished.to_string().contains("already"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionFinished;

impl fmt::Display for TransactionFinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the idempotency transaction already ended: use it only inside the handler")
    }
}

impl StdError for TransactionFinished {}

/// The rejection of the [`PgTransaction`] extractor: the request did not
/// come through an `IdempotencyLayer` on a transactional `PostgresStore`
/// with a key. Answers 500.
///
/// ```
/// use tower_reissue::idempotency::store::MissingTransaction;
///
/// assert!(MissingTransaction.to_string().contains("IdempotencyLayer"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingTransaction;

impl fmt::Display for MissingTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no idempotency transaction: the route is not behind an IdempotencyLayer on a \
             transactional PostgresStore, or the request carried no Idempotency-Key",
        )
    }
}

impl StdError for MissingTransaction {}

impl axum_core::response::IntoResponse for MissingTransaction {
    fn into_response(self) -> axum_core::response::Response {
        (http::StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for PgTransaction {
    type Rejection = MissingTransaction;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<PgTransaction>()
            .cloned()
            .ok_or(MissingTransaction)
    }
}

/// How long a rollback waits for a handle kept past the handler to let go
/// of the transaction before it finishes on a task of its own.
const ESCAPED_WAIT: Duration = Duration::from_secs(1);

/// Whether PostgreSQL refused a statement because the transaction was
/// already aborted (`25P02`, `in_failed_sql_transaction`).
fn is_aborted(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("25P02"))
}

/// The store's side of one execution's transaction.
pub(super) struct Work {
    store: PostgresStore,
    key: RecordKey,
    token: FencingToken,
    handle: PgTransaction,
}

impl Work {
    pub(super) async fn begin(
        store: PostgresStore,
        key: RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<Self, StoreError> {
        // By default twice the lease: past it, a stopped or cut-off
        // instance's transaction is ended by the database, whose rows it
        // held; a handler idle inside it for that long loses it.
        let idle = idle_timeout(store.inner.idle_timeout, lease);
        // One round trip: sqlx sends a custom `BEGIN` as one simple query.
        // The work pool's sessions are READ COMMITTED and already have the
        // default lease's timeout.
        let begin = if idle == idle_timeout(store.inner.idle_timeout, DEFAULT_LEASE) {
            Cow::Borrowed("BEGIN")
        } else {
            Cow::Owned(format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}",
                pg_millis(idle)
            ))
        };
        let transaction = store
            .inner
            .work
            .begin_with(begin)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            store,
            key,
            token,
            handle: PgTransaction::new(transaction),
        })
    }

    async fn commit_sole(self, outcome: StoredOutcome, ttl: Duration) -> Result<(), CommitError> {
        let mut transaction = match self.handle.take_sole() {
            Ok(transaction) => transaction,
            Err(escaped) => {
                // Whoever kept the handle may hold its lock: roll back once
                // they let go, without holding up the answer.
                tokio::spawn(async move {
                    if let Some(transaction) = escaped.take().await {
                        let _ = transaction.rollback().await;
                    }
                });
                return Err(CommitError::Escaped);
            }
        };
        let bytes = outcome.to_bytes();
        let updated = sqlx::query(&self.store.inner.sql.commit)
            .bind(self.key.principal())
            .bind(self.key.key())
            .bind(token_value(self.token))
            .bind(&bytes[..])
            .bind(millis(ttl))
            .execute(&mut *transaction)
            .await;
        let updated = match updated {
            Ok(updated) => updated,
            // A statement of the handler's own failed and it answered
            // anyway: PostgreSQL has aborted the transaction, and nothing
            // it wrote can commit.
            Err(err) if is_aborted(&err) => {
                tracing::warn!(
                    key = self.key.key(),
                    "the handler's transaction was aborted by a failed statement; its writes are rolled back and its answer is not stored"
                );
                let _ = transaction.rollback().await;
                return Err(CommitError::Aborted);
            }
            Err(err) => return Err(CommitError::Failed(StoreError::unavailable(err))),
        };
        if updated.rows_affected() == 0 {
            tracing::warn!(
                key = self.key.key(),
                "idempotency claim taken over before the commit; rolling the handler's writes back"
            );
            let _ = transaction.rollback().await;
            return Err(CommitError::LeaseLost);
        }
        transaction
            .commit()
            .await
            .map_err(|err| CommitError::Failed(StoreError::unavailable(err)))
    }
}

impl StoreTransaction for Work {
    fn attach(&self, extensions: &mut http::Extensions) {
        extensions.insert(self.handle.clone());
    }

    fn commit(
        self: Box<Self>,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> BoxFuture<Result<(), CommitError>> {
        Box::pin(self.commit_sole(outcome, ttl))
    }

    fn rollback(self: Box<Self>) -> BoxFuture<()> {
        Box::pin(async move {
            // A handle kept past the handler may hold the lock: wait for it
            // a little, then let a task of its own finish the rollback,
            // rather than hold up the answer and the key's release.
            let handle = self.handle.clone();
            let taken = match tokio::time::timeout(ESCAPED_WAIT, handle.take()).await {
                Ok(taken) => taken,
                Err(_) => {
                    tokio::spawn(async move {
                        if let Some(transaction) = handle.take().await {
                            let _ = transaction.rollback().await;
                        }
                    });
                    return;
                }
            };
            if let Some(transaction) = taken {
                if let Err(err) = transaction.rollback().await {
                    tracing::warn!(error = %err, key = self.key.key(), "failed to roll back the idempotent request's transaction");
                }
            }
        })
    }
}
