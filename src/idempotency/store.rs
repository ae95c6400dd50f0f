//! The storage contract behind [`IdempotencyLayer`](crate::IdempotencyLayer).
//!
//! A store keeps one *record* per [`RecordKey`] (a principal plus an
//! `Idempotency-Key`). A record is either **in flight** (claimed by one request
//! that holds a lease and a [`FencingToken`]) or **completed** (it holds the
//! [`StoredOutcome`] to replay until its time to live runs out).
//!
//! ```text
//!              claim (no live record)               complete(token)
//!   (absent) ───────────────────────▶ in flight ─────────────────────▶ completed
//!      ▲                               │   ▲  │                          │
//!      │          release(token)       │   └──┘ renew(token)             │
//!      ├───────────────────────────────┘                                 │
//!      │          lease runs out (the next claim takes over)             │
//!      ├─────────────────────────────────────────────────────────────────┘
//!                 ttl runs out
//! ```
//!
//! [`MemoryStore`] implements the trait for one process; `RedisStore` (feature
//! `redis`) shares records between many server instances. Any other shared
//! store (Postgres, DynamoDB...) follows the same contract, described on
//! [`IdempotencyStore`].

#[allow(deprecated)]
pub use crate::store::Outcome;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::store::RedisStore;
pub use crate::store::{
    BoxFuture, Claim, CommitError, FencingToken, Fingerprint, IdempotencyStore, MemoryStore,
    RecordKey, StoreError, StoreTransaction, StoredOutcome, StoredResponse, TransactionalStore,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use crate::store::{
    MissingTransaction, PgTransaction, PgTransactionGuard, PostgresError, PostgresStore,
    PostgresStoreBuilder, TransactionFinished,
};
