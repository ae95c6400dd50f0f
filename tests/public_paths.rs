//! Every public path of the last release (commit c9debc4), plus the root
//! re-exports added since, named once: a module that moves and drops one of
//! them fails to compile here, before a user's build does.
//!
//! One module per public module of the crate, holding its `pub use`,
//! `pub mod`, and `pub struct/enum/trait/fn/type/const` items. A path only
//! compiled with a feature sits behind that feature. Methods and associated
//! items are not listed (the test below names one associated constant).
#![allow(unused_imports)]

/// `tower_reissue::*`: the root re-exports, its type alias and its modules.
mod root {
    pub use tower_reissue::{
        Attempts, Backoff, BoxError, BreakerState, CircuitBreaker, CircuitBreakerLayer,
        CircuitOpen, Classifier, DefaultClassifier, IdempotencyKey, IdempotencyKeyLayer,
        IdempotencyLayer, IdempotencyStore, MemoryStore, Once, OnceError, Processed, Ran,
        Reconcile, Reconciled, Reconciliation, ReplayBody, Retry, RetryBudget, RetryLayer, Verdict,
    };
    // Added since c9debc4: the dead-letter names.
    #[cfg(feature = "sqlite")]
    pub use tower_reissue::SqliteQueue;
    pub use tower_reissue::{DeadLetter, DeadLetterQueue, MemoryQueue, Replayer};
    #[cfg(feature = "redis")]
    pub use tower_reissue::{RedisQueue, RedisStore};
    // Added since c9debc4: hedging.
    pub use tower_reissue::{HedgeLayer, hedge};
    // Added since 76cbb6b: the transactional PostgreSQL store.
    #[cfg(feature = "postgres")]
    pub use tower_reissue::PostgresStore;

    pub use tower_reissue::{
        backoff, budget, circuit, classify, dead_letter, idempotency, idempotency_key, once,
        reconcile, request, retry, telemetry,
    };
}

mod backoff {
    pub use tower_reissue::backoff::Backoff;
}

mod budget {
    pub use tower_reissue::budget::{RetryBudget, RetryBudgetBuilder};
}

mod circuit {
    pub use tower_reissue::circuit::{
        BreakerState, CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerLayer, CircuitOpen,
        ResponseFuture, StateChange,
    };
}

mod classify {
    pub use tower_reissue::classify::{
        Classifier, DefaultClassifier, DelayUnit, Outcome, Processed, RequestView, Verdict,
        classify_error, parse_retry_after, parse_retry_after_ms,
    };
}

mod dead_letter {
    #[cfg(feature = "redis")]
    pub use tower_reissue::dead_letter::RedisQueue;
    #[cfg(feature = "sqlite")]
    pub use tower_reissue::dead_letter::SqliteQueue;
    #[cfg(feature = "admin")]
    pub use tower_reissue::dead_letter::admin::{self, router};
    pub use tower_reissue::dead_letter::{
        AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, DeadLetterState,
        DeadLetters, DrainReport, FailedRequest, KeptBody, Lease, LeaseToken, MemoryQueue, Page,
        PageQuery, QueueError, ReplayOf, ReplayRecord, Replayer, StateKind, decode_headers,
        decode_history, encode_headers, encode_history, from_millis, to_millis,
    };
}

mod hedge {
    pub use tower_reissue::hedge::{Hedge, HedgeLayer, MAX_HEDGES, ResponseFuture};
}

mod idempotency {
    pub use tower_reissue::idempotency::{
        AuthorizationPrincipal, BoxError, Idempotency, IdempotencyLayer, IdempotencyStore,
        MemoryStore, Principal, PrincipalExtractor, ResponseBody, ResponseFuture, StoreDecision,
        store,
    };

    mod store_paths {
        // Renamed to `StoredOutcome` since c9debc4; the old name stays, deprecated.
        #[allow(deprecated)]
        pub use tower_reissue::idempotency::store::Outcome;
        #[cfg(feature = "redis")]
        pub use tower_reissue::idempotency::store::RedisStore;
        pub use tower_reissue::idempotency::store::{
            Claim, FencingToken, Fingerprint, IdempotencyStore, MemoryStore, RecordKey, StoreError,
            StoredOutcome, StoredResponse,
        };
        // Added since 76cbb6b: the transactional extension and its store.
        pub use tower_reissue::idempotency::store::{
            BoxFuture, CommitError, StoreTransaction, TransactionalStore,
        };
        #[cfg(feature = "postgres")]
        pub use tower_reissue::idempotency::store::{
            MissingTransaction, PgTransaction, PgTransactionGuard, PostgresError, PostgresStore,
            PostgresStoreBuilder, TransactionFinished,
        };
    }
    #[cfg(feature = "postgres")]
    pub use tower_reissue::idempotency::PgTransaction;
}

mod idempotency_key {
    pub use tower_reissue::idempotency_key::{
        IDEMPOTENCY_KEY, IdempotencyKey, IdempotencyKeyLayer, InvalidIdempotencyKey,
        ResponseFuture, SetIdempotencyKey,
    };
}

mod once {
    pub use tower_reissue::once::{Failure, Once, OnceError, Ran};
}

/// Inside `retry` since c9debc4, and still re-exported at the root.
mod reconcile {
    pub use tower_reissue::reconcile::{
        AppliedResponseLost, IntoReconciled, Reconcile, ReconcileEvent, ReconcileRequest,
        ReconcileTimedOut, Reconciled, Reconciliation, is_conditional,
    };
}

mod request {
    #[cfg(feature = "reqwest")]
    pub use tower_reissue::request::ReqwestTemplate;
    pub use tower_reissue::request::{
        HttpTemplate, KeyableRequest, RequestTemplate, RetryRequest, RetryResponse,
    };
    // Moved here from `retry` (still re-exported there), for `hedge`.
    pub use tower_reissue::request::{Attempts, Retryable};
}

mod retry {
    pub use tower_reissue::retry::{
        AttemptTimedOut, Attempts, DeadlineExceeded, GiveUpEvent, GiveUpReason, NotReplayable,
        ReplayBody, ResponseFuture, Retry, RetryEvent, RetryLayer, Retryable,
    };
}

mod telemetry {
    pub use tower_reissue::telemetry::metrics::{
        self, ATTEMPTS, BREAKER_TRANSITIONS, BREAKERS, BUDGET_REFUSALS, DEAD_LETTERS, GIVE_UPS,
        LABEL_ANSWER, LABEL_EVENT, LABEL_FROM, LABEL_OUTCOME, LABEL_REASON, LABEL_STATE, LABEL_TO,
        RECONCILE_ANSWERS, RETRIES, RETRY_DELAY, SERVER_REQUESTS,
    };
    // Added since c9debc4.
    pub use tower_reissue::telemetry::metrics::HEDGES;
}

#[test]
fn every_public_path_still_resolves() {
    // The root's names and the modules' are the same items.
    let _: root::Attempts = retry::Attempts(1);
    let _: request::Attempts = root::Attempts(1);
    let _: root::HedgeLayer = hedge::HedgeLayer::new(std::time::Duration::ZERO);
    let _: fn(&str) -> Result<idempotency_key::IdempotencyKey, _> = root::IdempotencyKey::new;
    assert_eq!(idempotency_key::IDEMPOTENCY_KEY, "idempotency-key");
    assert_eq!(telemetry::RETRIES, "tower_reissue_retries_total");
    assert_eq!(dead_letter::StateKind::ALL.len(), 5);
    assert_eq!(
        dead_letter::from_millis(dead_letter::to_millis(std::time::UNIX_EPOCH)),
        std::time::UNIX_EPOCH
    );
    let _ = root::reconcile::Reconciled::Applied;
    let _ = budget::RetryBudgetBuilder::ratio;
    let _ = backoff::Backoff::none();
}
