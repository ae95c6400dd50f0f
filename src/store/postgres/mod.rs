//! [`PostgresStore`]: records in a PostgreSQL table, committed in the same
//! transaction as the handler's writes.

mod error;
mod sql;
mod transaction;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use crate::error::Corrupt;

pub use self::error::PostgresError;
use self::sql::{MIGRATIONS, Statements, check_table};
pub use self::transaction::{
    MissingTransaction, PgTransaction, PgTransactionGuard, TransactionFinished,
};
use super::{
    BoxFuture, Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError,
    StoreTransaction, StoredOutcome, TransactionalStore,
};

/// An [`IdempotencyStore`] in PostgreSQL whose records commit in the same
/// transaction as the handler's writes.
///
/// With any store kept apart from the work, an instance that dies after
/// the handler's effect and before its result is stored lets the key run
/// again. Here the layer opens a transaction after the claim and hands it
/// to the handler ([`PgTransaction`], an axum extractor and a request
/// extension); the handler writes through it, and the result is written
/// into the record in that same transaction, fenced by the claim's token,
/// and committed before the response leaves. A crash before the commit
/// rolls the effect back with the record; after it, both are there and a
/// retry replays. See [the crash table](crate::idempotency#crashes).
///
/// # Connections
///
/// Two pools:
///
/// * **claims** (claims, renewals, releases; default 8 connections): short
///   autocommitted statements under a `lock_timeout` (default 2 s; a wait
///   past it answers 409), kept apart so that requests holding transactions
///   can never starve the renewals of their own leases;
/// * **work** (default 64): each in-flight keyed request holds one for its
///   handler's whole life. Size it for the keyed requests you run at once
///   (sqlx's default of 10 is too small for most servers); a request that
///   finds none free within the acquire timeout (default 2 s) is answered
///   503 with `Retry-After`, and its key is released.
///
/// The work transaction is READ COMMITTED, and sets
/// `idle_in_transaction_session_timeout` to twice the lease (see
/// [`idle_timeout`](PostgresStoreBuilder::idle_timeout)), so a stopped or
/// cut-off instance's transaction cannot hold rows for hours.
///
/// # Clock and schema
///
/// Leases and times to live are kept on the database's
/// `clock_timestamp()`, so server clocks need not agree. Fencing tokens
/// come from a sequence. [`migrate`](Self::migrate) creates the versioned
/// schema; it is also shipped as plain SQL under `migrations/postgres/store/`
/// for teams that run their own migrations. Expired records behave as
/// absent; [`purge_expired`](Self::purge_expired) deletes them.
///
/// # Example
///
/// ```no_run
/// use axum::{Router, routing::post};
/// use tower_reissue::IdempotencyLayer;
/// use tower_reissue::idempotency::PgTransaction;
/// use tower_reissue::idempotency::store::PostgresStore;
///
/// async fn pay(tx: PgTransaction) -> Result<&'static str, axum::http::StatusCode> {
///     let mut conn = tx.acquire().await.map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
///     sqlx::query("INSERT INTO payments (amount) VALUES (100)")
///         .execute(&mut *conn)
///         .await
///         .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
///     Ok("paid")
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let app: Router = Router::new()
///     .route("/payments", post(pay))
///     .layer(IdempotencyLayer::new(store));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    claims: PgPool,
    work: PgPool,
    sql: Statements,
    transactional: bool,
    idle_timeout: Option<Duration>,
}

/// Builds a [`PostgresStore`]; from [`PostgresStore::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_reissue::idempotency::store::PostgresStore;
///
/// # async fn run() -> Result<(), tower_reissue::idempotency::store::PostgresError> {
/// let store = PostgresStore::builder("postgres://app@localhost/app")
///     .table("payment_keys")
///     .work_connections(200)
///     .lock_timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresStoreBuilder {
    url: String,
    table: String,
    claim_connections: u32,
    work_connections: u32,
    lock_timeout: Duration,
    acquire_timeout: Duration,
    transactional: bool,
    idle_timeout: Option<Duration>,
}

impl PostgresStoreBuilder {
    /// The records' table (default `tower_reissue_records`); its sequence
    /// and schema table take its name as a prefix.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The connections for claims, renewals and releases (default 8).
    pub fn claim_connections(mut self, connections: u32) -> Self {
        self.claim_connections = connections.max(1);
        self
    }

    /// The connections for handlers' transactions (default 64): one per
    /// keyed request in flight.
    pub fn work_connections(mut self, connections: u32) -> Self {
        self.work_connections = connections.max(1);
        self
    }

    /// How long a claim waits on a record's row lock (default 2 s): a
    /// duplicate arriving while the first request's result is being
    /// committed waits for the commit and replays it; past this wait it
    /// gets 409.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// How long a request waits for a free connection (default 2 s) before
    /// the store counts as unavailable.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a handler may sit idle inside its transaction before the
    /// database ends it (`idle_in_transaction_session_timeout`; default
    /// twice the lease, and never less than the lease). It bounds how long a
    /// stopped or cut-off instance's transaction holds its rows.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Whether handlers get the transaction the record commits in (default
    /// `true`). With `false` the store keeps records apart from the work,
    /// like any other store.
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// The idle timeout of a transaction under the default lease.
    fn session_idle_timeout(&self) -> Duration {
        idle_timeout(self.idle_timeout, DEFAULT_LEASE)
    }

    /// Connects (the claims pool at once, the work pool on first use).
    pub async fn connect(self) -> Result<PostgresStore, PostgresError> {
        check_table(&self.table)?;
        let options = PgConnectOptions::from_str(&self.url).map_err(PostgresError::InvalidUrl)?;
        let claims = PgPoolOptions::new()
            .max_connections(self.claim_connections)
            .acquire_timeout(self.acquire_timeout)
            // A ping before each use would be one more round trip per
            // statement; a broken connection fails its statement instead.
            .test_before_acquire(false)
            .connect_with(options.clone().options([
                (
                    "lock_timeout",
                    format!("{}ms", pg_millis(self.lock_timeout).max(1)),
                ),
                // Whatever the server's default: under a stricter level a
                // claim racing another would fail instead of waiting.
                (
                    "default_transaction_isolation",
                    r"read\ committed".to_owned(),
                ),
            ]))
            .await?;
        let work = PgPoolOptions::new()
            .max_connections(self.work_connections)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false)
            // The timeout of the default lease's transactions as the
            // session's own: their `BEGIN` need not set it.
            .connect_lazy_with(options.options([
                (
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", pg_millis(self.session_idle_timeout())),
                ),
                // As the session's default, not with `BEGIN ISOLATION
                // LEVEL`: a level set per transaction makes PostgreSQL
                // reset every setting at its end, measurably slower.
                // sqlx writes `-c name=value` unescaped: the space is escaped here.
                (
                    "default_transaction_isolation",
                    r"read\ committed".to_owned(),
                ),
            ]));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                claims,
                work,
                sql: Statements::new(&self.table),
                transactional: self.transactional,
                idle_timeout: self.idle_timeout,
            }),
        })
    }
}

/// `IdempotencyLayer`'s and `Once`'s default lease.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How long a transaction under `lease` may sit idle: `configured`, or
/// twice the lease; never less than the lease.
fn idle_timeout(configured: Option<Duration>, lease: Duration) -> Duration {
    configured
        .unwrap_or(lease.saturating_mul(2))
        .max(lease)
        .max(Duration::from_millis(1))
}

/// Milliseconds for a PostgreSQL timeout setting, whose largest value is
/// `i32::MAX` (about 24.8 days).
pub(super) fn pg_millis(duration: Duration) -> i64 {
    millis(duration).min(i64::from(i32::MAX))
}

/// Rows deleted per statement by [`PostgresStore::purge_expired`].
const PURGE_BATCH: i64 = 10_000;

/// How often a claim is tried again when it found the key neither free nor
/// held (the holder's row appeared after the statement's snapshot), or in
/// flight once (see `claim`).
const CLAIM_TRIES: usize = 5;

impl PostgresStore {
    /// A builder for a store at `url` (`postgres://user@host/db`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            table: sql::SHIPPED_TABLE.to_owned(),
            claim_connections: 8,
            work_connections: 64,
            lock_timeout: Duration::from_secs(2),
            acquire_timeout: Duration::from_secs(2),
            transactional: true,
            idle_timeout: None,
        }
    }

    /// A store at `url` with the defaults.
    pub async fn connect(url: &str) -> Result<Self, PostgresError> {
        Self::builder(url).connect().await
    }

    /// Creates or upgrades the schema, in one transaction under an advisory
    /// lock, so instances starting together migrate once. Refuses a schema
    /// newer than this release knows.
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.claims.begin().await?;
        // The lock is the table name's hash: one migration per table at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("tower-reissue store {}", sql.table))
            .execute(&mut *tx)
            .await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{}_schema", sql.table))
            .fetch_one(&mut *tx)
            .await?;
        let current: i32 = if exists {
            sqlx::query_scalar::<_, Option<i32>>(&sql.version)
                .fetch_one(&mut *tx)
                .await?
                .unwrap_or(0)
        } else {
            0
        };
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if current > known {
            return Err(PostgresError::SchemaTooNew {
                found: current,
                known,
            });
        }
        for (version, migration) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            sqlx::raw_sql(&sql.migration(migration))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!(
                "INSERT INTO {}_schema (version) VALUES ($1)",
                sql.table
            ))
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every record that is no longer live, in batches; returns how
    /// many. Run it now and then (expired records already behave as absent).
    /// It scans the table: `expires_at` has no index, so that a completion,
    /// which changes it, stays a cheap in-page (HOT) update.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let deleted = sqlx::query(&self.inner.sql.purge)
                .bind(PURGE_BATCH)
                .execute(&self.inner.claims)
                .await
                .map_err(StoreError::unavailable)?
                .rows_affected();
            purged += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    /// The pool of the handlers' transactions, for other work on the same
    /// database. A handler should write through its `PgTransaction`, not
    /// take a second connection from here: with as many keyed requests in
    /// flight as the pool has connections, each would wait for one it
    /// holds itself.
    pub fn pool(&self) -> &PgPool {
        &self.inner.work
    }

    async fn fenced<'q>(
        &self,
        statement: &'q str,
        key: &'q RecordKey,
        token: FencingToken,
        rest: impl FnOnce(PgQuery<'q>) -> PgQuery<'q>,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(statement)
            .bind(key.principal())
            .bind(key.key())
            .bind(token_value(token));
        let done = rest(query)
            .execute(&self.inner.claims)
            .await
            .map_err(StoreError::unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn token_value(token: FencingToken) -> i64 {
    // Tokens come from a PostgreSQL sequence: positive `bigint`s.
    token.get() as i64
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn is_lock_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

fn fingerprint_of(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt(format_args!("a fingerprint of {} bytes", bytes.len())))?;
    Ok(Fingerprint::from_bytes(bytes))
}

fn claim_of(row: &PgRow) -> Result<Claim, StoreError> {
    let corrupt = |err: sqlx::Error| StoreError::corrupt(err);
    let acquired: bool = row.try_get(0).map_err(corrupt)?;
    let token: i64 = row.try_get(1).map_err(corrupt)?;
    if acquired {
        return Ok(Claim::Acquired(FencingToken::new(token as u64)));
    }
    let fingerprint = fingerprint_of(row.try_get::<&[u8], _>(2).map_err(corrupt)?)?;
    let completed: bool = row.try_get(3).map_err(corrupt)?;
    if !completed {
        return Ok(Claim::InFlight { fingerprint });
    }
    let outcome: Option<&[u8]> = row.try_get(4).map_err(corrupt)?;
    let outcome =
        outcome.ok_or_else(|| StoreError::corrupt("a completed record without an outcome"))?;
    Ok(Claim::Completed {
        fingerprint,
        outcome: StoredOutcome::from_bytes(outcome)?,
    })
}

impl IdempotencyStore for PostgresStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let sql = &self.inner.sql;
        let mut asked_again = false;
        for _ in 0..CLAIM_TRIES {
            let row = sqlx::query(&sql.claim)
                .bind(key.principal())
                .bind(key.key())
                .bind(&fingerprint.as_bytes()[..])
                .bind(millis(lease))
                .fetch_optional(&self.inner.claims)
                .await;
            match row {
                Ok(Some(row)) => match claim_of(&row)? {
                    // The statement's read sees the record as it was when
                    // the statement began: one that waited for a
                    // completion's commit on the row's lock still reads it
                    // in flight. Asked again, it reads the commit.
                    Claim::InFlight { .. } if !asked_again => asked_again = true,
                    claim => return Ok(claim),
                },
                Ok(None) => continue,
                // A completion is being committed and holds the row: the
                // record is in flight until it commits.
                Err(err) if is_lock_timeout(&err) => {
                    let stored: Option<Vec<u8>> = sqlx::query_scalar(&sql.fingerprint)
                        .bind(key.principal())
                        .bind(key.key())
                        .fetch_optional(&self.inner.claims)
                        .await
                        .map_err(StoreError::unavailable)?;
                    let fingerprint = match stored {
                        Some(bytes) => fingerprint_of(&bytes)?,
                        None => *fingerprint,
                    };
                    return Ok(Claim::InFlight { fingerprint });
                }
                Err(err) => return Err(StoreError::unavailable(err)),
            }
        }
        Err(StoreError::unavailable(
            "the record changed under every claim: neither free nor held",
        ))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let bytes = outcome.to_bytes();
        self.fenced(&self.inner.sql.complete, key, token, |query| {
            query.bind(&bytes[..]).bind(millis(ttl))
        })
        .await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(&self.inner.sql.renew, key, token, |query| {
            query.bind(millis(lease))
        })
        .await
    }

    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        self.fenced(&self.inner.sql.release, key, token, |query| query)
            .await
    }

    fn transactions(&self) -> Option<&dyn TransactionalStore> {
        self.inner
            .transactional
            .then_some(self as &dyn TransactionalStore)
    }
}

impl TransactionalStore for PostgresStore {
    fn begin(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<Result<Box<dyn StoreTransaction>, StoreError>> {
        let store = self.clone();
        let key = key.clone();
        Box::pin(async move {
            let work = transaction::Work::begin(store, key, token, lease).await?;
            Ok(Box::new(work) as Box<dyn StoreTransaction>)
        })
    }
}
