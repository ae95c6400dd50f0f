//! The [`IdempotencyStore`] contract as one generic suite, run against every
//! store: `MemoryStore` on tokio's paused clock, `RedisStore` on Redis's real
//! clock, and yours.
//!
//! [`check_contract`] checks every rule on one store, and
//! [`check_concurrent_claims`] that concurrent claims of one key acquire it
//! once. The helpers ([`acquire`], [`assert_completed`], [`assert_fenced`]...)
//! are public too, for tests of what is particular to a store.
//!
//! Waiting is always `tokio::time::sleep`, which the paused clock skips
//! through at once. Every check is placed so real-time jitter cannot flip
//! it: "expired" checks wait `lease + margin` after the operation that set
//! the lease returned, and "still live" checks either come right after that
//! operation or rely on a lease many times longer than the whole suite.
use std::collections::HashSet;
use std::time::Duration;

use crate::idempotency::store::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
    StoredResponse,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

/// The durations the suite runs with: [`Timing::PAUSED`] for a store on
/// tokio's clock (run the test with the clock paused), [`Timing::REAL`] for a
/// store on a clock of its own (a database's).
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::conformance::store::Timing;
///
/// // A store whose clock has a coarse resolution needs a wider margin.
/// let coarse = Timing { margin: Duration::from_secs(1), ..Timing::REAL };
/// assert!(coarse.long > coarse.short + coarse.margin);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// A lease or ttl the suite waits out.
    pub short: Duration,
    /// How far past `short` the suite waits before expecting expiry.
    pub margin: Duration,
    /// A lease or ttl that never runs out during the suite.
    pub long: Duration,
}

impl Timing {
    /// For stores on tokio's paused clock: waiting costs no real time.
    pub const PAUSED: Timing = Timing {
        short: Duration::from_secs(60),
        margin: Duration::from_secs(1),
        long: Duration::from_secs(3600),
    };

    /// For stores on a real clock: about half a second of real waiting in
    /// all, since the timed rules run concurrently.
    pub const REAL: Timing = Timing {
        short: Duration::from_millis(400),
        margin: Duration::from_millis(150),
        long: Duration::from_secs(60),
    };

    async fn wait_out_short(&self) {
        tokio::time::sleep(self.short + self.margin).await;
    }
}

/// The fingerprint whose 32 bytes are all `n`: distinct `n`, distinct
/// fingerprints.
///
/// ```
/// use tower_reissue::conformance::store::fingerprint;
///
/// assert_eq!(fingerprint(1), fingerprint(1));
/// assert_ne!(fingerprint(1), fingerprint(2));
/// ```
pub fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

/// A response with repeated headers and a body of every byte value, so that
/// "byte for byte" is tested on awkward data. `tag` goes into the `x-tag`
/// header and the start of the body, so that outcomes of distinct tags differ.
///
/// ```
/// use tower_reissue::conformance::store::outcome;
/// use tower_reissue::idempotency::store::StoredOutcome;
///
/// let StoredOutcome::Response(response) = outcome("one") else { unreachable!() };
/// assert_eq!(response.headers["x-tag"], "one");
/// assert_eq!(response.headers.get_all("set-cookie").iter().count(), 2);
/// assert_ne!(outcome("one"), outcome("two"));
/// ```
pub fn outcome(tag: &str) -> StoredOutcome {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.append("set-cookie", HeaderValue::from_static("a=1"));
    headers.append("set-cookie", HeaderValue::from_static("b=2"));
    headers.insert("x-tag", HeaderValue::from_str(tag).unwrap());
    let mut body = tag.as_bytes().to_vec();
    body.extend(0..=255u8);
    StoredOutcome::Response(StoredResponse {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from(body),
    })
}

/// Claims `key` with the fingerprint `fp` for `lease` and returns the
/// fencing token; panics unless the claim is
/// [`Acquired`](Claim::Acquired).
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{acquire, fingerprint};
/// use tower_reissue::idempotency::store::RecordKey;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let (a, b) = (RecordKey::new("alice", "k1"), RecordKey::new("alice", "k2"));
/// let first = acquire(&store, &a, &fingerprint(1), Duration::from_secs(60)).await;
/// let second = acquire(&store, &b, &fingerprint(1), Duration::from_secs(60)).await;
/// assert_ne!(first, second);
/// # }
/// ```
pub async fn acquire<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    fp: &Fingerprint,
    lease: Duration,
) -> FencingToken {
    match store.claim(key, fp, lease).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("{key:?}: expected Acquired, got {other:?}"),
    }
}

/// Claims `key` again (with another fingerprint, for `lease`) and panics
/// unless it is [`InFlight`](Claim::InFlight), held by the fingerprint
/// `holder`.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{acquire, assert_in_flight, fingerprint};
/// use tower_reissue::idempotency::store::RecordKey;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (store, key, lease) = (MemoryStore::new(), RecordKey::new("alice", "k"), Duration::from_secs(60));
/// acquire(&store, &key, &fingerprint(1), lease).await;
/// assert_in_flight(&store, &key, &fingerprint(1), lease).await;
/// # }
/// ```
pub async fn assert_in_flight<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    holder: &Fingerprint,
    lease: Duration,
) {
    match store.claim(key, &fingerprint(0xee), lease).await {
        Ok(Claim::InFlight { fingerprint }) => assert_eq!(&fingerprint, holder, "{key:?}"),
        other => panic!("{key:?}: expected InFlight, got {other:?}"),
    }
}

/// Claims `key` again (with another fingerprint) and panics unless it is
/// [`Completed`](Claim::Completed) with the fingerprint `fp` and the outcome
/// `expected`.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{acquire, assert_completed, fingerprint, outcome};
/// use tower_reissue::idempotency::store::{IdempotencyStore, RecordKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (store, key, lease) = (MemoryStore::new(), RecordKey::new("alice", "k"), Duration::from_secs(60));
/// let token = acquire(&store, &key, &fingerprint(1), lease).await;
/// store.complete(&key, token, outcome("done"), lease).await.unwrap();
/// assert_completed(&store, &key, &fingerprint(1), &outcome("done")).await;
/// # }
/// ```
pub async fn assert_completed<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    fp: &Fingerprint,
    expected: &StoredOutcome,
) {
    match store
        .claim(key, &fingerprint(0xee), Duration::from_secs(60))
        .await
    {
        Ok(Claim::Completed {
            fingerprint,
            outcome,
        }) => {
            assert_eq!(&fingerprint, fp, "{key:?}");
            assert_eq!(&outcome, expected, "{key:?}");
        }
        other => panic!("{key:?}: expected Completed, got {other:?}"),
    }
}

/// complete, renew and release with `token` all fail with
/// [`LeaseLost`](StoreError::LeaseLost).
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{acquire, assert_fenced, fingerprint};
/// use tower_reissue::idempotency::store::{IdempotencyStore, RecordKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (store, key, lease) = (MemoryStore::new(), RecordKey::new("alice", "k"), Duration::from_secs(60));
/// let old = acquire(&store, &key, &fingerprint(1), lease).await;
/// store.release(&key, old).await.unwrap();
/// acquire(&store, &key, &fingerprint(1), lease).await;
/// // The released claim's token settles nothing of the new claim.
/// assert_fenced(&store, &key, old, lease).await;
/// # }
/// ```
pub async fn assert_fenced<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    token: FencingToken,
    lease: Duration,
) {
    let lost = |result: Result<(), StoreError>, op: &str| {
        assert!(
            matches!(result, Err(StoreError::LeaseLost)),
            "{key:?}: {op} with {token:?} gave {result:?}, expected LeaseLost"
        );
    };
    lost(
        store.complete(key, token, outcome("late"), lease).await,
        "complete",
    );
    lost(store.renew(key, token, lease).await, "renew");
    lost(store.release(key, token).await, "release");
}

/// Every rule of the contract, on `store` with the durations of `timing`:
/// claims and duplicates, keys scoped by principal, completion kept byte for
/// byte, fencing of stale and foreign tokens, release, renewal (later and
/// earlier), takeover of an expired lease, and the time to live of a
/// completed record. No fencing token may be issued twice.
///
/// It uses keys under the principals `alice`, `bob`, `carol`, `renew`,
/// `fence`, `expired` and `ttl`: give it a store with none of them (a fresh
/// key prefix on a shared database). The timed rules run concurrently, so the
/// suite waits about `timing.short + timing.margin` in all.
///
/// ```
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{Timing, check_contract};
///
/// #[tokio::main(flavor = "current_thread", start_paused = true)]
/// async fn main() {
///     check_contract(&MemoryStore::new(), Timing::PAUSED).await;
/// }
/// ```
pub async fn check_contract<S: IdempotencyStore>(store: &S, timing: Timing) {
    let mut tokens = claims_and_completions(store, timing).await;
    let timed = tokio::join!(
        renewal_moves_the_lease_end_later(store, timing),
        renewal_moves_the_lease_end_earlier(store, timing),
        expired_lease_is_taken_over_and_fenced(store, timing),
        expired_lease_cannot_be_settled(store, timing),
        ttl_ends_a_completed_record(store, timing),
    );
    for batch in [timed.0, timed.1, timed.2, timed.3, timed.4] {
        tokens.extend(batch);
    }
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "a fencing token was issued twice"
    );
}

async fn claims_and_completions<S: IdempotencyStore>(store: &S, t: Timing) -> Vec<FencingToken> {
    let fp = fingerprint(1);
    let alice = RecordKey::new("alice", "k1");
    let bob = RecordKey::new("bob", "k1");

    // Nothing to settle on a key without a record.
    assert_fenced(
        store,
        &RecordKey::new("alice", "never"),
        FencingToken::new(1),
        t.long,
    )
    .await;

    // Claim; duplicates see the holder's fingerprint, and a duplicate with
    // another fingerprint does not replace it.
    let token = acquire(store, &alice, &fp, t.long).await;
    assert_in_flight(store, &alice, &fp, t.long).await;
    assert_in_flight(store, &alice, &fp, t.long).await;

    // Keys are scoped by principal.
    let bob_token = acquire(store, &bob, &fp, t.long).await;
    assert_ne!(bob_token, token);

    // Another claim's token cannot settle this one, and trying changes nothing.
    assert_fenced(store, &alice, bob_token, t.long).await;
    assert_in_flight(store, &alice, &fp, t.long).await;

    // Complete keeps the outcome byte for byte with the claim's fingerprint.
    let first = outcome("one");
    store
        .complete(&alice, token, first.clone(), t.long)
        .await
        .unwrap();
    assert_completed(store, &alice, &fp, &first).await;

    // A completed record cannot be completed, renewed or released again,
    // and the attempts leave it as it was.
    assert_fenced(store, &alice, token, t.long).await;
    assert_completed(store, &alice, &fp, &first).await;

    // A marker outcome is kept too.
    let marked = RecordKey::new("alice", "too-big");
    let marked_token = acquire(store, &marked, &fp, t.long).await;
    let not_stored = StoredOutcome::NotStored {
        status: StatusCode::OK,
    };
    store
        .complete(&marked, marked_token, not_stored.clone(), t.long)
        .await
        .unwrap();
    assert_completed(store, &marked, &fp, &not_stored).await;

    // Release makes the key claimable at once, with a fresh token; the old
    // token is fenced out of the new claim.
    store.release(&bob, bob_token).await.unwrap();
    let bob_again = acquire(store, &bob, &fp, t.long).await;
    assert_ne!(bob_again, bob_token);
    assert_fenced(store, &bob, bob_token, t.long).await;
    assert_in_flight(store, &bob, &fp, t.long).await;

    // Tokens keep changing over many claims of one key.
    let churn = RecordKey::new("carol", "churn");
    let mut tokens = vec![token, bob_token, bob_again, marked_token];
    for _ in 0..20 {
        let token = acquire(store, &churn, &fp, t.long).await;
        store.release(&churn, token).await.unwrap();
        tokens.push(token);
    }
    tokens
}

async fn renewal_moves_the_lease_end_later<S: IdempotencyStore>(
    store: &S,
    t: Timing,
) -> Vec<FencingToken> {
    let key = RecordKey::new("renew", "later");
    let fp = fingerprint(2);
    let token = acquire(store, &key, &fp, t.short).await;
    store.renew(&key, token, t.long).await.unwrap();
    t.wait_out_short().await;
    assert_in_flight(store, &key, &fp, t.long).await;
    store
        .complete(&key, token, outcome("renewed"), t.long)
        .await
        .unwrap();
    assert_completed(store, &key, &fp, &outcome("renewed")).await;
    vec![token]
}

async fn renewal_moves_the_lease_end_earlier<S: IdempotencyStore>(
    store: &S,
    t: Timing,
) -> Vec<FencingToken> {
    // Renewal sets the end to now + lease; it does not add to the old end.
    let key = RecordKey::new("renew", "earlier");
    let fp = fingerprint(3);
    let token = acquire(store, &key, &fp, t.long).await;
    store.renew(&key, token, t.short).await.unwrap();
    t.wait_out_short().await;
    let next = acquire(store, &key, &fp, t.long).await;
    assert_fenced(store, &key, token, t.long).await;
    vec![token, next]
}

async fn expired_lease_is_taken_over_and_fenced<S: IdempotencyStore>(
    store: &S,
    t: Timing,
) -> Vec<FencingToken> {
    let key = RecordKey::new("fence", "k");
    let (fp_a, fp_b) = (fingerprint(4), fingerprint(5));
    let a = acquire(store, &key, &fp_a, t.short).await;
    // A duplicate asking for a long lease must not extend A's.
    assert_in_flight(store, &key, &fp_a, t.long).await;
    t.wait_out_short().await;

    // A's lease ran out: B takes over with a newer token.
    let b = acquire(store, &key, &fp_b, t.long).await;
    assert!(b > a, "tokens grow: {b:?} after {a:?}");

    // A, late, can neither store its result, extend, nor delete B's claim.
    assert_fenced(store, &key, a, t.long).await;
    assert_in_flight(store, &key, &fp_b, t.long).await;

    // B's result stands.
    store.complete(&key, b, outcome("B"), t.long).await.unwrap();
    assert_fenced(store, &key, a, t.long).await;
    assert_completed(store, &key, &fp_b, &outcome("B")).await;
    vec![a, b]
}

async fn expired_lease_cannot_be_settled<S: IdempotencyStore>(
    store: &S,
    t: Timing,
) -> Vec<FencingToken> {
    // Nobody took over, yet the expired holder is fenced all the same, and
    // its attempts do not bring the record back.
    let key = RecordKey::new("expired", "k");
    let fp = fingerprint(6);
    let token = acquire(store, &key, &fp, t.short).await;
    t.wait_out_short().await;
    assert_fenced(store, &key, token, t.long).await;
    let next = acquire(store, &key, &fp, t.long).await;
    vec![token, next]
}

async fn ttl_ends_a_completed_record<S: IdempotencyStore>(
    store: &S,
    t: Timing,
) -> Vec<FencingToken> {
    let key = RecordKey::new("ttl", "k");
    let fp = fingerprint(7);
    // A short lease: completion replaces it with the ttl.
    let token = acquire(store, &key, &fp, t.short).await;
    store
        .complete(&key, token, outcome("ttl"), t.long)
        .await
        .unwrap();
    t.wait_out_short().await;
    assert_completed(store, &key, &fp, &outcome("ttl")).await;

    let short_lived = RecordKey::new("ttl", "short");
    let token2 = acquire(store, &short_lived, &fp, t.long).await;
    store
        .complete(&short_lived, token2, outcome("short"), t.short)
        .await
        .unwrap();
    t.wait_out_short().await;
    let next = acquire(store, &short_lived, &fp, t.long).await;
    vec![token, token2, next]
}

/// Checks two instances of a store that share its records (two connection
/// pools on one database, two clients of one Redis): `a` claims a key and
/// stalls past its lease, `b` takes the key over, `a`'s late completion is
/// refused and changes nothing, and both then replay `b`'s result.
///
/// ```
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::{Timing, check_takeover};
///
/// #[tokio::main(flavor = "current_thread", start_paused = true)]
/// async fn main() {
///     // Clones of a `MemoryStore` share its records.
///     let store = MemoryStore::new();
///     check_takeover(&store, &store.clone(), Timing::PAUSED).await;
/// }
/// ```
pub async fn check_takeover<S: IdempotencyStore>(a: &S, b: &S, timing: Timing) {
    let key = RecordKey::new("alice", "charge-1");
    let token_a = acquire(a, &key, &fingerprint(1), timing.short).await;
    assert!(
        matches!(
            b.claim(&key, &fingerprint(1), timing.short).await,
            Ok(Claim::InFlight { .. })
        ),
        "the other instance sees the claim in flight"
    );
    // A stalls past its lease (a GC pause, a partition); B's duplicate takes over.
    timing.wait_out_short().await;
    let token_b = acquire(b, &key, &fingerprint(1), timing.long).await;
    assert_ne!(token_b, token_a, "a takeover gets a token of its own");
    // A wakes up and tries to store its result: refused, nothing changed.
    assert!(
        matches!(
            a.complete(&key, token_a, outcome("A"), timing.long).await,
            Err(StoreError::LeaseLost)
        ),
        "the late holder's completion is refused"
    );
    b.complete(&key, token_b, outcome("B"), timing.long)
        .await
        .expect("the new holder completes");
    assert_fenced(a, &key, token_a, timing.long).await;
    assert_completed(a, &key, &fingerprint(1), &outcome("B")).await;
    assert_completed(b, &key, &fingerprint(1), &outcome("B")).await;
}

/// Of many concurrent claims of a free key, exactly one is acquired, and the
/// others see it in flight. Run it on a multi-threaded runtime, so that the
/// claims truly race. It uses the key `same` of the principal `p`.
///
/// ```
/// use tower_reissue::MemoryStore;
/// use tower_reissue::conformance::store::check_concurrent_claims;
///
/// #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// async fn main() {
///     check_concurrent_claims(&MemoryStore::new()).await;
/// }
/// ```
pub async fn check_concurrent_claims<S: IdempotencyStore>(store: &S) {
    let key = RecordKey::new("p", "same");
    let fp = fingerprint(8);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, &fp, Duration::from_secs(60)).await })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Claim::Acquired(_)) => acquired += 1,
            Ok(Claim::InFlight { fingerprint }) => assert_eq!(fingerprint, fp),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}
