//! `Once` over real stores: redelivered and concurrent messages, crashing
//! workers, an unreachable store, a worker fenced off after its lease.

#[path = "../examples/consumer/pool.rs"]
mod pool;
#[path = "../examples/consumer/queue.rs"]
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;
use tower_reissue::idempotency::store::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};
use tower_reissue::once::{Failure, OnceError, Ran};
use tower_reissue::{MemoryStore, Once};

use pool::{Mailbox, Settings};
use queue::Queue;

/// Must show: 10,000 messages, each delivered one to three times (a third of
/// the duplicates concurrent with the first delivery), workers crashing at
/// random instants of the handling. A crash drops the handler's future, so
/// the claim stays in the store until its lease runs out, and the delivery
/// is never acked, so the queue delivers it again after its visibility
/// timeout.
#[tokio::test(start_paused = true)]
async fn ten_thousand_redelivered_messages_send_each_email_exactly_once() {
    const MESSAGES: u64 = 10_000;
    let started = Instant::now();
    let queue = Queue::new(Duration::from_secs(30));
    let mut rng = StdRng::seed_from_u64(2002);
    let published = pool::publish(&queue, 0..MESSAGES, Duration::from_secs(120), &mut rng);
    let once = Once::new(MemoryStore::with_max_records(4 * MESSAGES as usize))
        .lease(Duration::from_secs(10))
        .wait_for_result(Duration::from_secs(1));
    let mailbox = Arc::new(Mailbox::default());
    let settings = Settings {
        workers: 16,
        work: Duration::from_millis(50),
        crash_ratio: 0.1,
        refusal_ratio: 0.03,
        retry_delay: Duration::from_secs(5),
        seed: 2002,
    };
    let report = pool::drain(queue.clone(), once, mailbox.clone(), settings).await;
    let stats = queue.stats();
    println!(
        "{published:?}\n{report:?}\n{stats:?}\nvirtual time: {:?}",
        started.elapsed()
    );

    let wrong: Vec<_> = (0..MESSAGES)
        .filter(|&user| mailbox.sent_to(user) != 1)
        .map(|user| (user, mailbox.sent_to(user)))
        .collect();
    assert!(
        wrong.is_empty(),
        "users not emailed exactly once: {wrong:?}"
    );
    assert_eq!(mailbox.total(), MESSAGES as usize);
    assert_eq!(stats.acked, published.deliveries, "every delivery acked");
    assert_eq!(queue.outstanding(), 0);
    assert_eq!(report.unexpected, 0);
    // The faults happened, in numbers: otherwise this proves nothing.
    assert!(published.concurrent_duplicates > 1_000, "{published:?}");
    assert!(published.later_duplicates > 2_000, "{published:?}");
    assert!(report.crashed_mid_handler > 500, "{report:?}");
    assert!(report.crashed_before_ack > 100, "{report:?}");
    assert!(report.replayed > 1_000, "{report:?}");
    assert!(
        report.in_flight > 0,
        "claims left by crashes were met: {report:?}"
    );
    assert!(report.refused_by_mail > 0, "{report:?}");
    assert!(stats.timed_out >= report.crashed_mid_handler + report.crashed_before_ack);
}

/// A store that forwards to a `MemoryStore` unless it is switched off, when
/// every operation fails as a refused connection would.
#[derive(Clone, Default)]
struct Switchable {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Switchable {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )));
        }
        Ok(())
    }
}

impl IdempotencyStore for Switchable {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.check()?;
        self.inner.claim(key, fingerprint, lease).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.complete(key, token, outcome, ttl).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.renew(key, token, lease).await
    }
    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        self.check()?;
        self.inner.release(key, token).await
    }
}

/// A closure's work: counts its runs.
async fn counted(runs: &AtomicUsize) -> Result<usize, Failure<String>> {
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Must show: the store cannot be reached -> `Unavailable`, closure not run.
#[tokio::test]
async fn an_unreachable_store_is_unavailable_and_the_closure_does_not_run() {
    let store = Switchable::default();
    store.down.store(true, Ordering::SeqCst);
    let once = Once::new(store.clone());
    let runs = AtomicUsize::new(0);
    let result = once
        .run("emails", "user-1", Fingerprint::of("p"), || counted(&runs))
        .await;
    let Err(OnceError::Unavailable(error)) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(matches!(error, StoreError::Unavailable(_)));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the closure must not run");

    store.down.store(false, Ordering::SeqCst);
    let ran = once
        .run("emails", "user-1", Fingerprint::of("p"), || counted(&runs))
        .await
        .unwrap();
    assert_eq!(ran, Ran::Executed(1));
}

#[cfg(feature = "redis")]
#[path = "redis_server/mod.rs"]
mod redis_server;

/// Must show, on a real Redis: the server dies -> `Unavailable`, closure not
/// run.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_dead_redis_is_unavailable_and_the_closure_does_not_run() {
    let mut server = redis_server::RedisServer::start();
    let store = tower_reissue::RedisStore::connect(server.url())
        .await
        .unwrap()
        .prefix("once-test:dead")
        .timeout(Duration::from_millis(500));
    let once = Once::new(store);
    let runs = AtomicUsize::new(0);
    let ran = once
        .run("emails", "user-1", Fingerprint::of("p"), || counted(&runs))
        .await
        .unwrap();
    assert_eq!(ran, Ran::Executed(1));

    server.stop();
    let result = once
        .run("emails", "user-2", Fingerprint::of("p"), || counted(&runs))
        .await;
    assert!(
        matches!(
            result,
            Err(OnceError::Unavailable(StoreError::Unavailable(_)))
        ),
        "{result:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the closure must not run");
}

/// A worker cut off from the store past its lease loses the key to the next
/// one; when it can reach the store again, its renewal is refused by
/// fencing and its work is stopped before its effect.
#[tokio::test(start_paused = true)]
async fn a_worker_cut_off_past_its_lease_is_fenced_off_and_stopped() {
    let store = Switchable::default();
    let lease = Duration::from_secs(3);
    let once = Once::new(store.clone()).lease(lease);
    let effects = AtomicUsize::new(0);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let stale = async {
        once.run("emails", "user-1", Fingerprint::of("p"), || async {
            started_tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Failure<String>>(effects.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await
    };
    let takeover = async {
        started_rx.await.unwrap();
        // The first worker's network goes: its renewals fail, its lease runs
        // out, and another worker takes the key.
        store.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(lease * 2).await;
        store.down.store(false, Ordering::SeqCst);
        let ran = once
            .run("emails", "user-1", Fingerprint::of("p"), || async {
                Ok::<_, Failure<String>>(effects.fetch_add(1, Ordering::SeqCst) + 1)
            })
            .await;
        assert_eq!(ran.unwrap(), Ran::Executed(1));
    };
    let (stale, ()) = tokio::join!(stale, takeover);
    assert!(matches!(stale, Err(OnceError::LeaseLost)), "{stale:?}");
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    let again = once
        .run("emails", "user-1", Fingerprint::of("p"), || async {
            Ok::<_, Failure<String>>(0)
        })
        .await;
    assert_eq!(
        again.unwrap(),
        Ran::Replayed(1),
        "the takeover's value is kept"
    );
}

/// Dropping the future mid-closure is a crash: the key stays claimed until
/// the lease runs out, then runs again.
#[tokio::test(start_paused = true)]
async fn an_abandoned_run_holds_the_key_until_its_lease_ends() {
    let once = Once::new(MemoryStore::new()).lease(Duration::from_secs(10));
    let runs = AtomicUsize::new(0);
    let crashed = tokio::time::timeout(
        Duration::from_secs(1),
        once.run("jobs", "nightly", Fingerprint::of("v1"), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<usize, Failure<String>>>().await
        }),
    )
    .await;
    assert!(crashed.is_err());
    let early = once
        .run("jobs", "nightly", Fingerprint::of("v1"), || counted(&runs))
        .await;
    assert!(matches!(early, Err(OnceError::InFlight)), "{early:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let late = once
        .run("jobs", "nightly", Fingerprint::of("v1"), || counted(&runs))
        .await;
    assert_eq!(late.unwrap(), Ran::Executed(2));
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_duplicate_waits_for_the_result_or_gets_in_flight() {
    let store = MemoryStore::new();
    let waiting = Once::new(store.clone()).wait_for_result(Duration::from_secs(5));
    let impatient = Once::new(store);
    let runs = AtomicUsize::new(0);
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, Failure<String>>(runs.fetch_add(1, Ordering::SeqCst) + 1)
    };
    let (first, second, third) = tokio::join!(
        waiting.run("emails", "user-1", Fingerprint::of("p"), slow),
        async {
            tokio::task::yield_now().await;
            waiting
                .run("emails", "user-1", Fingerprint::of("p"), slow)
                .await
        },
        async {
            tokio::task::yield_now().await;
            impatient
                .run("emails", "user-1", Fingerprint::of("p"), slow)
                .await
        },
    );
    assert_eq!(first.unwrap(), Ran::Executed(1));
    assert_eq!(second.unwrap(), Ran::Replayed(1));
    assert!(matches!(third, Err(OnceError::InFlight)), "{third:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failure_releases_the_key_unless_it_is_stored() {
    let once = Once::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let fail = |keep: bool| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let error = "smtp 451".to_owned();
            Err::<usize, _>(if keep {
                Failure::store(error)
            } else {
                Failure::release(error)
            })
        }
    };
    let first = once
        .run("emails", "a", Fingerprint::of("p"), fail(false))
        .await;
    assert!(matches!(first, Err(OnceError::Failed(ref e)) if e == "smtp 451"));
    let retried = once
        .run("emails", "a", Fingerprint::of("p"), || counted(&runs))
        .await;
    assert_eq!(retried.unwrap(), Ran::Executed(2), "released: runs again");

    let kept = once
        .run("emails", "b", Fingerprint::of("p"), fail(true))
        .await;
    assert!(matches!(kept, Err(OnceError::Failed(_))));
    let duplicate = once
        .run("emails", "b", Fingerprint::of("p"), || counted(&runs))
        .await;
    assert!(
        matches!(duplicate, Err(OnceError::StoredFailure(ref m)) if m == "smtp 451"),
        "{duplicate:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "a stored failure never runs again"
    );
}

#[tokio::test]
async fn a_reused_key_or_another_type_is_an_error_not_a_second_run() {
    let once = Once::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    once.run("emails", "a", Fingerprint::of("alice"), || counted(&runs))
        .await
        .unwrap();
    let reused = once
        .run("emails", "a", Fingerprint::of("bob"), || counted(&runs))
        .await;
    assert!(
        matches!(reused, Err(OnceError::FingerprintMismatch)),
        "{reused:?}"
    );
    let as_text = once
        .run("emails", "a", Fingerprint::of("alice"), || async {
            Ok::<String, Failure<String>>("not run".into())
        })
        .await;
    assert!(matches!(as_text, Err(OnceError::Decode(_))), "{as_text:?}");
    // Scopes are separate: the same key in another scope runs.
    let other_scope = once
        .run("invoices", "a", Fingerprint::of("bob"), || counted(&runs))
        .await;
    assert_eq!(other_scope.unwrap(), Ran::Executed(2));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
