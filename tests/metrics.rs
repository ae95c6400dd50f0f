//! Counters and histograms recorded through the `metrics` facade, read back
//! with `metrics-util`'s debugging recorder (installed for this thread only,
//! so tests do not see each other's counts).
#![cfg(feature = "metrics")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::{Reply, TestServer};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use tower_reissue::telemetry::metrics as names;
use tower_reissue::{Backoff, IdempotencyLayer, MemoryStore, ReplayBody, RetryBudget, RetryLayer};

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

async fn send(layer: &RetryLayer, method: Method, url: &str) -> StatusCode {
    let client: FullClient = common::client();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    layer.layer(client).oneshot(request).await.unwrap().status()
}

type Labels = Vec<(String, String)>;

/// One snapshot of the recorder (taking one resets its counters and
/// histograms, not its list of series).
struct Reading {
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
    histograms: BTreeMap<String, Vec<f64>>,
    series: BTreeSet<String>,
}

impl Reading {
    fn take(snapshotter: &Snapshotter) -> Reading {
        let mut reading = Reading {
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
            series: BTreeSet::new(),
        };
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            reading.series.insert(format!("{key:?}"));
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match value {
                DebugValue::Counter(n) => {
                    reading.counters.insert((key.name().to_owned(), labels), n);
                }
                DebugValue::Histogram(values) => {
                    reading.histograms.insert(
                        key.name().to_owned(),
                        values.into_iter().map(|v| v.into_inner()).collect(),
                    );
                }
                DebugValue::Gauge(value) => {
                    reading
                        .gauges
                        .insert((key.name().to_owned(), labels), value.into_inner());
                }
            }
        }
        reading
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.counters
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0)
    }

    fn histogram(&self, name: &str) -> &[f64] {
        self.histograms.get(name).map_or(&[], Vec::as_slice)
    }
}

#[tokio::test(start_paused = true)]
async fn client_counters_after_a_scripted_run() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = RetryLayer::new()
        .backoff(Backoff::fixed(std::time::Duration::from_millis(250)))
        .no_budget();
    // 503, 503, 200: two retries for 503, no give-up.
    let flaky = TestServer::fails_first(2, || Reply::status(503)).await;
    assert_eq!(send(&layer, Method::GET, &flaky.url("/a")).await, 200);
    // 500 on every attempt: two retries for 500, then max_attempts.
    let down = TestServer::always(500).await;
    assert_eq!(send(&layer, Method::GET, &down.url("/b")).await, 500);
    // A POST without a key may have been processed: not safe, no retry.
    assert_eq!(send(&layer, Method::POST, &down.url("/c")).await, 500);
    // A 404 is permanent.
    let missing = TestServer::always(404).await;
    assert_eq!(send(&layer, Method::GET, &missing.url("/d")).await, 404);
    // An empty budget refuses the retry.
    let broke = layer
        .clone()
        .budget(RetryBudget::builder().ratio(0.0).min_per_sec(0).build());
    assert_eq!(send(&broke, Method::GET, &down.url("/e")).await, 500);

    let read = Reading::take(&snapshotter);
    let reason = |r| [(names::LABEL_REASON, r)];
    assert_eq!(read.counter(names::RETRIES, &reason("503")), 2);
    assert_eq!(read.counter(names::RETRIES, &reason("500")), 2);
    assert_eq!(read.counter(names::GIVE_UPS, &reason("max_attempts")), 1);
    assert_eq!(read.counter(names::GIVE_UPS, &reason("not_safe")), 1);
    assert_eq!(read.counter(names::GIVE_UPS, &reason("permanent")), 1);
    assert_eq!(
        read.counter(names::GIVE_UPS, &reason("budget_exhausted")),
        1
    );
    assert_eq!(read.counter(names::BUDGET_REFUSALS, &[]), 1);
    assert_eq!(
        read.counters.len(),
        7,
        "no other series: {:?}",
        read.counters
    );
    // Attempts per logical request, in order: 3, 3, 1, 1, 1.
    assert_eq!(read.histogram(names::ATTEMPTS), [3.0, 3.0, 1.0, 1.0, 1.0]);
    assert_eq!(read.histogram(names::RETRY_DELAY), [0.25; 4]);
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An app whose `POST /emails` waits for `gate` when its body is `slow`.
fn app(gate: Arc<Notify>, started: Arc<Notify>) -> Router {
    Router::new()
        .route(
            "/emails",
            post(move |body: Bytes| {
                let (gate, started) = (gate.clone(), started.clone());
                async move {
                    if &body[..] == b"slow" {
                        started.notify_one();
                        gate.notified().await;
                    }
                    (StatusCode::CREATED, "sent")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]))
}

async fn post_email(addr: SocketAddr, key: Option<&str>, body: &'static str) -> StatusCode {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> = common::client();
    let mut request = Request::post(format!("http://{addr}/emails"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    client.request(request).await.unwrap().status()
}

#[tokio::test(flavor = "current_thread")]
async fn server_counters_after_a_scripted_run() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (gate, started) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let addr = serve(app(gate.clone(), started.clone())).await;

    assert_eq!(post_email(addr, Some("k-1"), "a").await, 201);
    assert_eq!(post_email(addr, Some("k-1"), "a").await, 201);
    assert_eq!(post_email(addr, Some("k-1"), "a").await, 201);
    assert_eq!(post_email(addr, Some("k-1"), "b").await, 422);
    assert_eq!(post_email(addr, None, "a").await, 400);
    assert_eq!(post_email(addr, Some(""), "a").await, 400);
    // A duplicate while the first copy still runs: 409.
    let first = tokio::spawn(post_email(addr, Some("k-2"), "slow"));
    started.notified().await;
    assert_eq!(post_email(addr, Some("k-2"), "slow").await, 409);
    gate.notify_one();
    assert_eq!(first.await.unwrap(), 201);

    let read = Reading::take(&snapshotter);
    let n = |o| read.counter(names::SERVER_REQUESTS, &[(names::LABEL_OUTCOME, o)]);
    assert_eq!(n("executed"), 2);
    assert_eq!(n("replayed"), 2);
    assert_eq!(n("mismatch"), 1);
    assert_eq!(n("missing_key"), 1);
    assert_eq!(n("invalid_key"), 1);
    assert_eq!(n("conflict"), 1);
    assert_eq!(read.counters.len(), 6, "{:?}", read.counters);
}

#[tokio::test(start_paused = true)]
async fn distinct_uris_and_keys_add_no_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let down = TestServer::always(503).await;
    let (gate, started) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let addr = serve(app(gate, started)).await;
    let layer = RetryLayer::new()
        .max_attempts(2)
        .backoff(Backoff::none())
        .no_budget();

    let mut after_ten = None;
    for i in 0..1_000 {
        let url = down.url(&format!("/users/{i}?session={i}"));
        assert_eq!(send(&layer, Method::GET, &url).await, 503);
        let key = format!("key-{i}");
        assert_eq!(post_email(addr, Some(&key), "a").await, 201);
        assert_eq!(post_email(addr, Some(&key), "a").await, 201);
        if i == 9 {
            after_ten = Some(Reading::take(&snapshotter));
        }
    }
    let after_ten = after_ten.unwrap();
    let after_all = Reading::take(&snapshotter);
    let replayed = |read: &Reading| {
        read.counter(
            names::SERVER_REQUESTS,
            &[(names::LABEL_OUTCOME, "replayed")],
        )
    };
    assert_eq!(replayed(&after_ten) + replayed(&after_all), 1_000);
    let after_all = after_all.series;
    assert_eq!(after_all, after_ten.series);
    assert!(after_all.len() <= 8, "{after_all:?}");
    assert!(
        after_all
            .iter()
            .all(|s| !s.contains("users") && !s.contains("key-")),
        "{after_all:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_transitions_and_state_gauge() {
    use tower_reissue::circuit::CircuitBreakerLayer;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let down = TestServer::always(503).await;
    let breaker = CircuitBreakerLayer::builder()
        .min_throughput(4)
        .failure_ratio(0.5)
        .build()
        .layer(common::client::<Full<Bytes>>());
    for _ in 0..6 {
        let request = Request::get(down.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = breaker.clone().oneshot(request).await;
    }

    let read = Reading::take(&snapshotter);
    let transition = [(names::LABEL_FROM, "closed"), (names::LABEL_TO, "open")];
    assert_eq!(read.counter(names::BREAKER_TRANSITIONS, &transition), 1);
    assert_eq!(
        read.gauges.get(&(
            names::BREAKERS.to_owned(),
            vec![(names::LABEL_STATE.to_owned(), "open".to_owned())]
        )),
        Some(&1.0)
    );
    // Closed breakers are not a series: with one per host, it would count
    // every host ever called.
    assert!(!read.gauges.contains_key(&(
        names::BREAKERS.to_owned(),
        vec![(names::LABEL_STATE.to_owned(), "closed".to_owned())]
    )));
}

/// Reconciler answers and dead letters, counted by what happened to them.
#[tokio::test]
async fn reconcile_and_dead_letter_counters_after_a_scripted_run() {
    use tower_reissue::dead_letter::{DeadLetterQueue, MemoryQueue, Replayer};
    use tower_reissue::reconcile::{ReconcileRequest, Reconciled};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let queue = MemoryQueue::new();
    let layer = RetryLayer::new()
        .backoff(Backoff::none())
        .no_budget()
        .dead_letters(queue.clone())
        .reconcile(|request: ReconcileRequest| async move {
            match request.uri().path() {
                "/sent" => Ok(Reconciled::Applied),
                "/unknown" => Ok(Reconciled::Unknown),
                _ => Err::<Reconciled, tower_reissue::BoxError>("lookup failed".into()),
            }
        });
    // Every POST answers 500: ambiguous, so the reconciler is asked.
    let down = TestServer::always(500).await;
    assert_eq!(send(&layer, Method::POST, &down.url("/sent")).await, 500);
    assert_eq!(send(&layer, Method::POST, &down.url("/unknown")).await, 500);
    assert_eq!(send(&layer, Method::POST, &down.url("/broken")).await, 500);
    // A GET that fails three times is parked after max_attempts, and its
    // replay (the fourth request) succeeds.
    let flaky = TestServer::fails_first(3, || Reply::status(503)).await;
    assert_eq!(send(&layer, Method::GET, &flaky.url("/g")).await, 503);
    // Pushes run on their own tasks.
    while queue.counts().await.unwrap().total() < 3 {
        tokio::task::yield_now().await;
    }
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> = common::client();
    let report = Replayer::new(queue.clone(), client)
        .replay_unkeyed(true)
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!((report.replayed, report.failed), (1, 2), "{report:?}");

    let read = Reading::take(&snapshotter);
    let answer = |a| [(names::LABEL_ANSWER, a)];
    assert_eq!(
        read.counter(names::RECONCILE_ANSWERS, &answer("applied")),
        1
    );
    assert_eq!(
        read.counter(names::RECONCILE_ANSWERS, &answer("unknown")),
        1
    );
    assert_eq!(read.counter(names::RECONCILE_ANSWERS, &answer("error")), 1);
    let event = |e| [(names::LABEL_EVENT, e)];
    assert_eq!(read.counter(names::DEAD_LETTERS, &event("pushed")), 3);
    assert_eq!(read.counter(names::DEAD_LETTERS, &event("replayed")), 1);
    assert_eq!(read.counter(names::DEAD_LETTERS, &event("failed_again")), 2);
    assert_eq!(
        read.counter(names::GIVE_UPS, &[(names::LABEL_REASON, "unreconciled")]),
        2
    );
}
