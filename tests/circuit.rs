//! CircuitBreakerLayer over real HTTP on loopback, with tokio's paused clock
//! moved only by the tests.

mod common;

use bytes::Bytes;
use common::{ManualClock, Reply, TestServer};
use http::{Request, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer, CircuitOpen};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{BoxError, Processed, ReplayBody, RetryLayer, Verdict};

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;
type Breaker = tower_reissue::CircuitBreaker<Client, tower_reissue::DefaultClassifier>;

/// A server answering every request with the status currently set.
async fn switchable(status: u16) -> (TestServer, Arc<AtomicU16>) {
    let current = Arc::new(AtomicU16::new(status));
    let read = current.clone();
    let server = TestServer::start(move |_, _| {
        let status = read.load(Ordering::SeqCst);
        async move { Reply::status(status) }
    })
    .await;
    (server, current)
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// One call through the breaker: the status, or the error.
async fn call(service: &Breaker, url: &str) -> Result<StatusCode, BoxError> {
    service
        .clone()
        .oneshot(get(url))
        .await
        .map(|response| response.status())
}

fn refused(result: Result<StatusCode, BoxError>) -> CircuitOpen {
    let error = result.expect_err("refused by the breaker");
    *error
        .downcast_ref::<CircuitOpen>()
        .unwrap_or_else(|| panic!("not CircuitOpen: {error}"))
}

type Changes = Arc<Mutex<Vec<(BreakerState, BreakerState, Option<Duration>)>>>;

fn logged(
    builder: tower_reissue::circuit::CircuitBreakerBuilder,
) -> (CircuitBreakerLayer, Changes) {
    let log: Changes = Arc::default();
    let sink = log.clone();
    let layer = builder
        .on_state_change(move |c| sink.lock().unwrap().push((c.from, c.to, c.break_duration)))
        .build();
    (layer, log)
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_ratio_never_below_the_minimum_throughput() {
    let _clock = ManualClock::hold().await;
    let (server, status) = switchable(503).await;
    let url = server.url("/");
    let layer = CircuitBreakerLayer::builder()
        .min_throughput(10)
        .failure_ratio(0.5)
        .window(Duration::from_secs(10))
        .build();
    let service = layer.layer(common::client());

    // Every call fails, but nine calls are below the minimum throughput.
    for _ in 0..9 {
        assert_eq!(
            call(&service, &url).await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // Past the window those nine no longer count: one more failure is one
    // call in the window, not ten.
    tokio::time::advance(Duration::from_secs(11)).await;
    call(&service, &url).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Closed);

    status.store(200, Ordering::SeqCst);
    for _ in 0..5 {
        call(&service, &url).await.unwrap();
    }
    status.store(503, Ordering::SeqCst);
    for _ in 0..3 {
        call(&service, &url).await.unwrap();
    }
    status.store(200, Ordering::SeqCst);
    call(&service, &url).await.unwrap();
    assert_eq!(
        layer.state(),
        BreakerState::Closed,
        "4 failures in 10 calls"
    );
    status.store(503, Ordering::SeqCst);
    call(&service, &url).await.unwrap();
    assert_eq!(
        layer.state(),
        BreakerState::Closed,
        "5 failures in 11 calls"
    );
    call(&service, &url).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Open, "6 failures in 12 calls");
    assert_eq!(server.count(), 9 + 1 + 5 + 3 + 1 + 2);
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_open_it_server_errors_do() {
    let _clock = ManualClock::hold().await;
    let (server, status) = switchable(429).await;
    let url = server.url("/");
    let layer = CircuitBreakerLayer::builder()
        .min_throughput(10)
        .failure_ratio(0.5)
        .build();
    let service = layer.layer(common::client());

    // 429 is Throttled for the retry layer, 404 and 409 Permanent: none is
    // the host's failure.
    for code in [429, 404, 409] {
        status.store(code, Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(call(&service, &url).await.unwrap().as_u16(), code);
        }
    }
    assert_eq!(layer.state(), BreakerState::Closed);

    // 501 is Permanent but a 5xx: it counts, and 30 of them against the 30
    // answered calls reach 50%.
    status.store(501, Ordering::SeqCst);
    let mut failures = 0;
    while layer.state() == BreakerState::Closed {
        call(&service, &url).await.unwrap();
        failures += 1;
        assert!(failures <= 30, "still closed after {failures} 501s");
    }
    assert_eq!(failures, 30);
    assert_eq!(layer.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn throttling_never_opens_it_a_bare_503_does() {
    let _clock = ManualClock::hold().await;
    // 503s that say when to come back, until the switch; bare 503s after.
    let paced = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let read = paced.clone();
    let server = TestServer::start(move |_, _| {
        let paced = read.load(Ordering::SeqCst);
        async move {
            if paced {
                Reply::with_header(503, "retry-after", "1")
            } else {
                Reply::status(503)
            }
        }
    })
    .await;
    let url = server.url("/");
    let layer = CircuitBreakerLayer::builder()
        .min_throughput(10)
        .failure_ratio(0.5)
        .build();
    let service = layer.layer(common::client());

    // The host is up and pacing its clients: not its failure.
    for _ in 0..40 {
        assert_eq!(call(&service, &url).await.unwrap().as_u16(), 503);
    }
    assert_eq!(layer.state(), BreakerState::Closed);

    // A bare 503 is: 40 of them against the 80 answered calls reach 50%.
    paced.store(false, Ordering::SeqCst);
    let mut failures = 0;
    while layer.state() == BreakerState::Closed {
        call(&service, &url).await.unwrap();
        failures += 1;
        assert!(failures <= 40, "still closed after {failures} bare 503s");
    }
    assert_eq!(failures, 40);
}

/// Opens `layer`'s breaker for `url` with `min_throughput` failed calls.
async fn trip(service: &Breaker, url: &str, min_throughput: usize) {
    for _ in 0..min_throughput {
        call(service, url).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn open_refuses_at_once_then_lets_exactly_the_probes_through() {
    let _clock = ManualClock::hold().await;
    let (server, status) = switchable(503).await;
    let url = server.url("/");
    let (layer, changes) = logged(
        CircuitBreakerLayer::builder()
            .min_throughput(4)
            .failure_ratio(0.5)
            .break_duration(Duration::from_secs(2))
            .max_break_duration(Duration::from_secs(5))
            .probes(2),
    );
    let service = layer.layer(common::client());
    trip(&service, &url, 4).await;
    assert_eq!(layer.state(), BreakerState::Open);

    // Refused without a request and without waiting, with the time left.
    let started = Instant::now();
    for _ in 0..20 {
        let open = refused(call(&service, &url).await);
        assert_eq!(open.retry_after(), Duration::from_secs(2));
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(server.count(), 4);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(
        refused(call(&service, &url).await).retry_after(),
        Duration::from_millis(500)
    );
    assert_eq!(server.count(), 4);

    // After the break: two probes go out, the third call is refused while
    // they are in flight. Both fail: open again, for twice as long.
    tokio::time::advance(Duration::from_millis(500)).await;
    let mut probes = Vec::new();
    for _ in 0..2 {
        let mut svc = service.clone();
        probes.push(svc.ready().await.unwrap().call(get(&url)));
    }
    assert_eq!(layer.state(), BreakerState::HalfOpen);
    refused(call(&service, &url).await);
    for probe in probes {
        assert_eq!(
            probe.await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(server.count(), 6);
    assert_eq!(layer.state(), BreakerState::Open);
    assert_eq!(
        refused(call(&service, &url).await).retry_after(),
        Duration::from_secs(4)
    );

    // The next probe fails as well: the break doubles again, up to its cap.
    tokio::time::advance(Duration::from_secs(4)).await;
    call(&service, &url).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Open);
    assert_eq!(
        refused(call(&service, &url).await).retry_after(),
        Duration::from_secs(5)
    );

    // The host is back: two successful probes close the breaker.
    status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(call(&service, &url).await.unwrap(), StatusCode::OK);
    assert_eq!(layer.state(), BreakerState::HalfOpen, "one probe of two");
    assert_eq!(call(&service, &url).await.unwrap(), StatusCode::OK);
    assert_eq!(layer.state(), BreakerState::Closed);
    for _ in 0..10 {
        assert_eq!(call(&service, &url).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(server.count(), 4 + 2 + 1 + 2 + 10);

    use BreakerState::*;
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            (Closed, Open, secs(2)),
            (Open, HalfOpen, None),
            (HalfOpen, Open, secs(4)),
            (Open, HalfOpen, None),
            (HalfOpen, Open, secs(5)),
            (Open, HalfOpen, None),
            (HalfOpen, Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let _clock = ManualClock::hold().await;
    let (server, status) = switchable(503).await;
    let url = server.url("/");
    let layer = CircuitBreakerLayer::builder()
        .min_throughput(2)
        .break_duration(Duration::from_secs(1))
        .build();
    let service = layer.layer(common::client());
    trip(&service, &url, 2).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut svc = service.clone();
    let probe = svc.ready().await.unwrap().call(get(&url));
    refused(call(&service, &url).await);
    drop(probe);
    status.store(200, Ordering::SeqCst);
    assert_eq!(call(&service, &url).await.unwrap(), StatusCode::OK);
    assert_eq!(layer.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn per_host_breakers_keep_a_down_host_to_itself() {
    let _clock = ManualClock::hold().await;
    let down = TestServer::always(503).await;
    let up = TestServer::always(200).await;
    let (down_url, up_url) = (down.url("/"), up.url("/"));

    let layer = CircuitBreakerLayer::builder()
        .min_throughput(5)
        .per_host()
        .build();
    let service = layer.layer(common::client());
    trip(&service, &down_url, 5).await;
    assert_eq!(
        layer.state_for(&down_url.parse().unwrap()),
        BreakerState::Open
    );
    refused(call(&service, &down_url).await);
    for _ in 0..10 {
        assert_eq!(call(&service, &up_url).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        layer.state_for(&up_url.parse().unwrap()),
        BreakerState::Closed
    );
    assert_eq!((down.count(), up.count()), (5, 10));

    // One breaker for all hosts: the down host cuts off the healthy one.
    let shared = CircuitBreakerLayer::builder().min_throughput(5).build();
    let service = shared.layer(common::client());
    trip(&service, &down_url, 5).await;
    refused(call(&service, &up_url).await);
    assert_eq!(up.count(), 10);
}

type RetryClient = tower_reissue::Retry<
    tower_reissue::CircuitBreaker<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            ReplayBody<Full<Bytes>>,
        >,
        tower_reissue::DefaultClassifier,
    >,
    tower_reissue::DefaultClassifier,
>;

/// RetryLayer over the breaker over a hyper-util client.
fn retry_over(breaker: &CircuitBreakerLayer, retry: RetryLayer) -> RetryClient {
    retry.layer(breaker.layer(common::client()))
}

#[tokio::test(start_paused = true)]
async fn under_retry_a_refused_request_waits_for_the_probe_or_gives_up() {
    let _clock = ManualClock::hold().await;
    let (server, status) = switchable(503).await;
    let url = server.url("/");
    let breaker = CircuitBreakerLayer::builder()
        .min_throughput(4)
        .break_duration(Duration::from_secs(2))
        .build();
    let (retried_tx, mut retried) = tokio::sync::watch::channel(None::<(Verdict, Duration)>);
    let gave_up: Arc<Mutex<Vec<GiveUpReason>>> = Arc::default();
    let sink = gave_up.clone();
    let retry = RetryLayer::new()
        .max_attempts(3)
        .no_budget()
        .deadline(Duration::from_secs(10))
        .on_retry(move |event| {
            retried_tx.send_replace(Some((event.verdict, event.delay)));
        })
        .on_give_up(move |event| sink.lock().unwrap().push(event.reason));
    let client = retry_over(&breaker, retry.clone());
    // Four failed single-attempt requests open the breaker.
    let opener = retry_over(&breaker, RetryLayer::new().max_attempts(1).no_budget());
    for _ in 0..4 {
        let response = opener.clone().oneshot(get(&url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    status.store(200, Ordering::SeqCst);

    // Refused at once, then waits for the end of the break: nothing is sent
    // meanwhile.
    let request = tokio::spawn(client.clone().oneshot(get(&url)));
    let (verdict, delay) = retried.wait_for(Option::is_some).await.unwrap().unwrap();
    assert_eq!(
        verdict,
        Verdict::Transient {
            processed: Processed::No,
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert!(delay >= Duration::from_secs(2) && delay <= Duration::from_millis(2200));
    tokio::time::advance(delay - Duration::from_millis(1)).await;
    assert_eq!(server.count(), 4);
    tokio::time::advance(Duration::from_millis(2)).await;
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .extensions()
            .get::<tower_reissue::Attempts>()
            .unwrap()
            .get(),
        2
    );
    assert_eq!(server.count(), 5, "the probe, and nothing else");
    assert_eq!(breaker.state(), BreakerState::Closed);

    // Open again; a request whose deadline ends before the break gives up
    // at once with the refusal, and so does one the server-side wait limit
    // forbids.
    status.store(503, Ordering::SeqCst);
    for _ in 0..4 {
        opener.clone().oneshot(get(&url)).await.unwrap();
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    for (layer, reason) in [
        (
            retry.clone().deadline(Duration::from_secs(1)),
            GiveUpReason::Deadline,
        ),
        (
            retry.clone().max_retry_after(Duration::from_secs(1)),
            GiveUpReason::RetryAfterTooLong,
        ),
    ] {
        let started = Instant::now();
        let error = retry_over(&breaker, layer)
            .oneshot(get(&url))
            .await
            .unwrap_err();
        assert!(error.is::<CircuitOpen>(), "{error}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(gave_up.lock().unwrap().pop(), Some(reason));
    }
    assert_eq!(server.count(), 9);
}
