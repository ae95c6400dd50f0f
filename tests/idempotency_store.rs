//! `MemoryStore`: the shared store-conformance suite on tokio's paused clock,
//! plus what is particular to it (its size bound) and the outcome encoding
//! every store relies on.

use std::time::Duration;

use http::StatusCode;

use tower_reissue::MemoryStore;
use tower_reissue::conformance::store::{
    self as store_conformance, Timing, acquire as acquire_for, outcome,
};
use tower_reissue::idempotency::store::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

async fn acquire(store: &MemoryStore, key: &RecordKey, fp: &Fingerprint) -> FencingToken {
    acquire_for(store, key, fp, LEASE).await
}

#[tokio::test(start_paused = true)]
async fn memory_store_meets_the_contract() {
    store_conformance::check_contract(&MemoryStore::new(), Timing::PAUSED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_acquire_once() {
    store_conformance::check_concurrent_claims(&MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn clones_share_records_and_a_late_holder_is_fenced_out() {
    let store = MemoryStore::new();
    store_conformance::check_takeover(&store, &store.clone(), Timing::PAUSED).await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_stays_within_its_bound() {
    let store = MemoryStore::with_max_records(3);
    let fp = Fingerprint::from_bytes([4; 32]);
    let key = |i: usize| RecordKey::new("p", format!("k{i}"));

    // Three live in-flight records fill the store; a fourth claim is refused
    // rather than dropping a running claim.
    let tokens: Vec<_> = acquire_all(&store, &fp, 0..3).await;
    assert!(matches!(
        store.claim(&key(3), &fp, LEASE).await,
        Err(StoreError::Full)
    ));
    assert_eq!(store.len(), 3);

    // Completed records are evicted oldest first.
    for (i, token) in tokens.iter().enumerate() {
        store
            .complete(&key(i), *token, outcome("r"), TTL)
            .await
            .unwrap();
    }
    acquire(&store, &key(3), &fp).await;
    assert_eq!(store.len(), 3);
    assert!(
        matches!(
            store.claim(&key(0), &fp, LEASE).await,
            Ok(Claim::Acquired(_))
        ),
        "oldest completed record was evicted"
    );
    assert!(
        matches!(
            store.claim(&key(2), &fp, LEASE).await,
            Ok(Claim::Completed { .. })
        ),
        "newer completed record kept"
    );
    assert_eq!(store.len(), 3);

    // Expired records go before any live one.
    tokio::time::advance(LEASE + Duration::from_secs(1)).await; // in-flight k0 and k3 expire
    for i in 10..12 {
        acquire(&store, &key(i), &fp).await;
        assert!(store.len() <= 3);
    }
    assert!(
        matches!(
            store.claim(&key(2), &fp, LEASE).await,
            Ok(Claim::Completed { .. })
        ),
        "live completed record kept while expired ones existed"
    );

    for i in 100..200 {
        let _ = store.claim(&key(i), &fp, LEASE).await;
        assert!(store.len() <= 3);
    }
}

async fn acquire_all(
    store: &MemoryStore,
    fp: &Fingerprint,
    range: std::ops::Range<usize>,
) -> Vec<FencingToken> {
    let mut tokens = Vec::new();
    for i in range {
        tokens.push(acquire(store, &RecordKey::new("p", format!("k{i}")), fp).await);
    }
    tokens
}

#[test]
fn corrupt_encodings_are_errors() {
    let good = outcome("body").to_bytes();
    for len in 0..good.len() - 4 {
        // Every truncation inside the header section is rejected, never a panic.
        let _ = StoredOutcome::from_bytes(&good[..len]);
    }
    assert!(matches!(
        StoredOutcome::from_bytes(&[9, 0, 0, 200]),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        StoredOutcome::from_bytes(&[1, 0, 0, 1]),
        Err(StoreError::Corrupt(_))
    ));
    let not_stored = StoredOutcome::NotStored {
        status: StatusCode::OK,
    };
    assert_eq!(
        StoredOutcome::from_bytes(&not_stored.to_bytes()).unwrap(),
        not_stored
    );
}
