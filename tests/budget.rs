//! RetryBudget accounting under contention, per-host partitions, and the
//! amplification bound over real HTTP.

mod common;

use bytes::Bytes;
use common::TestServer;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{Backoff, ReplayBody, RetryBudget, RetryLayer};

const TASKS: u64 = 8;

/// A budget whose whole balance comes from deposits (no floor) and whose
/// window outlives the test, so every figure below is exact.
fn exact_budget() -> RetryBudget {
    RetryBudget::builder()
        .ratio(0.2)
        .min_per_sec(0)
        .window(Duration::from_secs(60))
        .build()
}

/// Runs `work(task)` on `TASKS` tasks of a multi-thread runtime at once and
/// sums what they return.
async fn on_all_tasks<F>(work: F) -> u64
where
    F: Fn(u64) -> u64 + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let start = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let work = work.clone();
        let start = start.clone();
        handles.push(tokio::spawn(async move {
            start.wait().await;
            work(task)
        }));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_deposits_are_all_counted() {
    let budget = exact_budget();
    let b = budget.clone();
    on_all_tasks(move |_| {
        for _ in 0..10_000 {
            b.deposit();
        }
        0
    })
    .await;
    // 80,000 requests at 20%.
    assert_eq!(budget.available(), 16_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_withdrawals_spend_the_balance_exactly() {
    for round in 0..20 {
        let budget = exact_budget();
        for _ in 0..80_000 {
            budget.deposit();
        }
        let b = budget.clone();
        // 32,000 tries for 16,000 retries: the tasks fight over the last ones.
        let granted =
            on_all_tasks(move |_| (0..4_000).filter(|_| b.withdraw()).count() as u64).await;
        assert_eq!(
            (granted, budget.available()),
            (16_000, 0),
            "round {round}: every retry paid for is granted, none more"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn interleaved_deposits_and_withdrawals_conserve_the_balance() {
    for round in 0..20 {
        let budget = exact_budget();
        let b = budget.clone();
        let granted = on_all_tasks(move |_| {
            let mut granted = 0;
            for _ in 0..10_000 {
                b.deposit();
                if b.withdraw() {
                    granted += 1;
                }
            }
            granted
        })
        .await;
        // 80,000 deposits buy 16,000 retries: those granted plus those left.
        assert!(granted <= 16_000, "round {round}: overdrawn ({granted})");
        assert_eq!(
            granted + budget.available(),
            16_000,
            "round {round}: a deposit or a withdrawal was lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn per_host_budgets_are_exact_and_independent() {
    let budget = RetryBudget::builder()
        .ratio(0.2)
        .min_per_sec(0)
        .window(Duration::from_secs(60))
        .per_host()
        .build();
    let hosts: Arc<[Uri]> = Arc::new([
        Uri::from_static("http://a.example/x"),
        Uri::from_static("http://b.example:8080/y"),
    ]);
    let b = budget.clone();
    let h = hosts.clone();
    let granted = on_all_tasks(move |task| {
        // Tasks 0..4 talk to a.example, 4..8 to b.example.
        let uri = &h[(task / 4) as usize];
        let mut granted = 0;
        for _ in 0..10_000 {
            b.deposit_for(uri);
            if b.withdraw_for(uri) {
                granted += 1;
            }
        }
        granted
    })
    .await;
    let left: u64 = hosts.iter().map(|uri| budget.available_for(uri)).sum();
    assert_eq!(granted + left, 16_000);
    // Each host earned its own 8,000 retries; neither touched the other's,
    // nor the budget of hosts not seen.
    for uri in hosts.iter() {
        assert!(budget.available_for(uri) <= 8_000);
    }
    assert_eq!(
        budget.available_for(&Uri::from_static("http://c.example/")),
        0
    );
    assert_eq!(budget.available(), 0);
}

#[test]
fn per_host_budget_charges_only_the_failing_host() {
    let budget = RetryBudget::builder()
        .ratio(0.5)
        .min_per_sec(0)
        .per_host()
        .build();
    let down = Uri::from_static("https://down.example/a");
    let down_other_path = Uri::from_static("https://DOWN.example/b?q=1");
    let healthy = Uri::from_static("https://up.example/");
    for _ in 0..4 {
        budget.deposit_for(&down);
        budget.deposit_for(&healthy);
    }
    // down.example spends its two retries (the host is matched without
    // regard to case or path) ...
    assert!(budget.withdraw_for(&down_other_path));
    assert!(budget.withdraw_for(&down));
    assert!(!budget.withdraw_for(&down));
    // ... and up.example keeps its own.
    assert_eq!(budget.available_for(&healthy), 2);
    assert!(budget.is_per_host());
}

#[test]
fn per_host_budget_is_bounded() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .per_host()
        .max_hosts(2)
        .build();
    let uri = |n: u32| format!("http://h{n}.example/").parse::<Uri>().unwrap();
    for n in 0..10 {
        budget.deposit_for(&uri(n));
    }
    // The first two hosts have their own budgets; the other eight share the
    // overflow budget instead of growing the map without bound.
    assert_eq!(budget.available_for(&uri(0)), 1);
    assert_eq!(budget.available_for(&uri(1)), 1);
    assert_eq!(budget.available_for(&uri(9)), 8);
    assert_eq!(budget.available(), 8);
}

#[tokio::test(start_paused = true)]
async fn idle_hosts_make_room_for_new_ones() {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_sec(0)
        .window(Duration::from_secs(1))
        .per_host()
        .max_hosts(1)
        .build();
    let old = Uri::from_static("http://old.example/");
    let new = Uri::from_static("http://new.example/");
    budget.deposit_for(&old);
    tokio::time::advance(Duration::from_secs(2)).await;
    // old.example has been idle for a whole window: it gives its place up.
    budget.deposit_for(&new);
    assert_eq!(budget.available_for(&new), 1);
    assert_eq!(
        budget.available(),
        0,
        "new.example did not land in the overflow"
    );
}

type EmptyClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Empty<Bytes>>,
>;

/// Sends `requests` logical GETs, evenly over `over` of paused-clock time, to
/// a server answering 503 to everything; returns the attempts it received
/// and how many requests gave up because the budget ran out.
async fn outage(layer: RetryLayer, requests: u64, over: Duration) -> (u64, u64) {
    let server = TestServer::always(503).await;
    let budget_refusals = Arc::new(AtomicU64::new(0));
    let refusals = budget_refusals.clone();
    let layer = layer.on_give_up(move |event| {
        if event.reason == GiveUpReason::BudgetExhausted {
            refusals.fetch_add(1, Ordering::Relaxed);
        }
    });
    let client: EmptyClient = common::client();
    let service = layer.layer(client);
    let url: Uri = server.url("/items").parse().unwrap();
    let gap = over / requests as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let service = service.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let request = Request::get(url).body(Empty::<Bytes>::new()).unwrap();
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        });
        tokio::time::sleep(gap).await;
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    (
        server.count() as u64,
        budget_refusals.load(Ordering::Relaxed),
    )
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_not_amplified_beyond_the_budget() {
    const REQUESTS: u64 = 2_000;
    let over = Duration::from_secs(60);
    // Short delays keep every retry of a request inside the 10 s window of
    // the deposit that pays for it.
    let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(100));

    let (attempts, refused) = outage(
        RetryLayer::new()
            .max_attempts(10)
            .backoff(backoff)
            .budget(RetryBudget::default()),
        REQUESTS,
        over,
    )
    .await;
    let with_budget = attempts as f64 / REQUESTS as f64;
    // The floor's share: 10 retries/s for the 60 s of traffic plus the
    // window's worth held in reserve when it started.
    let floor_share = (10.0 * (60.0 + 10.0)) / REQUESTS as f64;
    println!(
        "with budget (ratio 0.2, floor 10/s): {attempts} attempts for {REQUESTS} requests = {with_budget:.3}x \
         (bound 1.2 + floor share {floor_share:.3} = {:.3}); {refused} requests stopped by the budget",
        1.2 + floor_share
    );
    assert!(with_budget <= 1.2 + floor_share, "{with_budget}");
    assert!(refused > 0, "the budget never refused a retry");

    let (attempts, _) = outage(
        RetryLayer::new()
            .max_attempts(10)
            .backoff(backoff)
            .budget(RetryBudget::builder().min_per_sec(0).build()),
        REQUESTS,
        over,
    )
    .await;
    let ratio_only = attempts as f64 / REQUESTS as f64;
    println!(
        "with budget (ratio 0.2, no floor): {attempts} attempts for {REQUESTS} requests = {ratio_only:.3}x (bound 1.2)"
    );
    assert!(ratio_only <= 1.2, "{ratio_only}");

    let (attempts, refused) = outage(
        RetryLayer::new()
            .max_attempts(10)
            .backoff(backoff)
            .no_budget(),
        REQUESTS,
        over,
    )
    .await;
    let without_budget = attempts as f64 / REQUESTS as f64;
    println!("without budget: {attempts} attempts for {REQUESTS} requests = {without_budget:.3}x");
    assert_eq!(attempts, REQUESTS * 10);
    assert_eq!(refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_refusal_means_the_balance_is_spent() {
    for round in 0..200 {
        let budget = exact_budget();
        for _ in 0..40_000 {
            budget.deposit();
        }
        let b = budget.clone();
        // Each task withdraws until it is refused once: a refusal must mean
        // the 8,000 retries paid for are all gone, never that two tasks raced.
        let granted = on_all_tasks(move |_| {
            let mut granted = 0;
            while b.withdraw() {
                granted += 1;
            }
            granted
        })
        .await;
        assert_eq!((granted, budget.available()), (8_000, 0), "round {round}");
    }
}

#[test]
fn a_tiny_ratio_with_a_floor_grants_the_floor_and_no_more() {
    // Each retry costs a million requests' worth: only the floor pays,
    // 10 retries/s over a 10 s window.
    let budget = RetryBudget::builder()
        .ratio(0.000_001)
        .min_per_sec(10)
        .build();
    let granted = (0..1_000).filter(|_| budget.withdraw()).count();
    assert_eq!(granted, 100);
}
