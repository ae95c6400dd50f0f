//! The `IdempotencyStore` contract, checked against `MemoryStore` on tokio's
//! paused clock. `check_contract` is generic so every store can run it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tower_reissue::MemoryStore;
use tower_reissue::idempotency::store::{
    Claim, Fingerprint, IdempotencyStore, Outcome, RecordKey, StoreError, StoredResponse,
};

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3600);

fn outcome(body: &'static str) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert("x-test", "yes".parse().unwrap());
    Outcome::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(body.as_bytes()),
    })
}

async fn acquire<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    fp: &Fingerprint,
) -> tower_reissue::idempotency::store::FencingToken {
    match store.claim(key, fp, LEASE).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn check_contract<S: IdempotencyStore>(store: S) {
    let fp = Fingerprint::from_bytes([1; 32]);
    let other_fp = Fingerprint::from_bytes([2; 32]);
    let key = RecordKey::new("alice", "k1");

    // Claim, then a duplicate sees the holder's fingerprint.
    let token = acquire(&store, &key, &fp).await;
    match store.claim(&key, &other_fp, LEASE).await.unwrap() {
        Claim::InFlight { fingerprint } => assert_eq!(fingerprint, fp),
        other => panic!("expected InFlight, got {other:?}"),
    }
    // Keys are scoped by principal.
    let bob = RecordKey::new("bob", "k1");
    let bob_token = acquire(&store, &bob, &fp).await;
    assert_ne!(bob_token, token);

    // Complete stores the outcome byte for byte.
    store
        .complete(&key, token, outcome("one"), TTL)
        .await
        .unwrap();
    match store.claim(&key, &fp, LEASE).await.unwrap() {
        Claim::Completed {
            fingerprint,
            outcome: stored,
        } => {
            assert_eq!(fingerprint, fp);
            assert_eq!(stored, outcome("one"));
        }
        other => panic!("expected Completed, got {other:?}"),
    }
    // A completed record cannot be completed, renewed or released again.
    assert!(matches!(
        store.complete(&key, token, outcome("two"), TTL).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.renew(&key, token, LEASE).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.release(&key, token).await,
        Err(StoreError::LeaseLost)
    ));

    // Release makes the key claimable at once, with a fresh token.
    store.release(&bob, bob_token).await.unwrap();
    let bob_again = acquire(&store, &bob, &fp).await;
    assert_ne!(bob_again, bob_token);
    assert!(matches!(
        store.release(&bob, bob_token).await,
        Err(StoreError::LeaseLost)
    ));

    // Renewal keeps a lease alive past its first end.
    let key2 = RecordKey::new("alice", "k2");
    let t2 = acquire(&store, &key2, &fp).await;
    tokio::time::advance(LEASE - Duration::from_secs(1)).await;
    store.renew(&key2, t2, LEASE).await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(matches!(
        store.claim(&key2, &fp, LEASE).await.unwrap(),
        Claim::InFlight { .. }
    ));

    // Without renewal the lease runs out: the next claim takes over, and the
    // old holder is fenced out of every operation.
    tokio::time::advance(LEASE).await;
    let t3 = acquire(&store, &key2, &fp).await;
    assert!(t3 > t2);
    assert!(matches!(
        store.renew(&key2, t2, LEASE).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.complete(&key2, t2, outcome("late"), TTL).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.release(&key2, t2).await,
        Err(StoreError::LeaseLost)
    ));
    store
        .complete(&key2, t3, outcome("new"), TTL)
        .await
        .unwrap();
    match store.claim(&key2, &fp, LEASE).await.unwrap() {
        Claim::Completed {
            outcome: stored, ..
        } => assert_eq!(stored, outcome("new")),
        other => panic!("expected Completed, got {other:?}"),
    }

    // An expired lease cannot be completed even if nobody took it over.
    let key3 = RecordKey::new("alice", "k3");
    let t4 = acquire(&store, &key3, &fp).await;
    tokio::time::advance(LEASE + Duration::from_millis(1)).await;
    assert!(matches!(
        store.complete(&key3, t4, outcome("x"), TTL).await,
        Err(StoreError::LeaseLost)
    ));

    // After the ttl a completed key can be claimed again.
    tokio::time::advance(TTL).await;
    acquire(&store, &key, &fp).await;
}

#[tokio::test(start_paused = true)]
async fn memory_store_meets_the_contract() {
    check_contract(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_acquire_once() {
    let store = MemoryStore::new();
    let key = RecordKey::new("p", "same");
    let fp = Fingerprint::from_bytes([3; 32]);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, &fp, LEASE).await.unwrap() })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Claim::Acquired(_)) {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
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
) -> Vec<tower_reissue::idempotency::store::FencingToken> {
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
        let _ = Outcome::from_bytes(&good[..len]);
    }
    assert!(matches!(
        Outcome::from_bytes(&[9, 0, 0, 200]),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        Outcome::from_bytes(&[1, 0, 0, 1]),
        Err(StoreError::Corrupt(_))
    ));
    let not_stored = Outcome::NotStored {
        status: StatusCode::OK,
    };
    assert_eq!(
        Outcome::from_bytes(&not_stored.to_bytes()).unwrap(),
        not_stored
    );
}
