//! The on_retry / on_give_up hooks: attempt numbers, verdicts, delays,
//! reasons and the request details a dead-letter queue needs.

mod common;

use bytes::Bytes;
use common::{Reply, TestServer};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_reissue::retry::{GiveUpReason, NotReplayable, Retryable};
use tower_reissue::{
    Attempts, Backoff, IdempotencyKeyLayer, Processed, ReplayBody, RetryBudget, RetryLayer, Verdict,
};

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

#[derive(Debug, Clone, PartialEq)]
struct Retried {
    attempt: u32,
    verdict: Verdict,
    delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
struct GaveUp {
    attempts: u32,
    reason: GiveUpReason,
    verdict: Verdict,
    method: Method,
    uri: String,
    key: Option<String>,
}

#[derive(Default, Clone)]
struct Log {
    retried: Arc<Mutex<Vec<Retried>>>,
    gave_up: Arc<Mutex<Vec<GaveUp>>>,
}

impl Log {
    fn attach(&self, layer: RetryLayer) -> RetryLayer {
        let retried = self.retried.clone();
        let gave_up = self.gave_up.clone();
        layer
            .on_retry(move |e| {
                retried.lock().unwrap().push(Retried {
                    attempt: e.attempt,
                    verdict: e.verdict,
                    delay: e.delay,
                })
            })
            .on_give_up(move |e| {
                gave_up.lock().unwrap().push(GaveUp {
                    attempts: e.attempts,
                    reason: e.reason,
                    verdict: e.verdict,
                    method: e.request.method().clone(),
                    uri: e.request.uri().to_string(),
                    key: e.request.idempotency_key().map(str::to_owned),
                })
            })
    }

    fn retried(&self) -> Vec<Retried> {
        self.retried.lock().unwrap().clone()
    }

    fn gave_up(&self) -> Vec<GaveUp> {
        self.gave_up.lock().unwrap().clone()
    }

    /// (attempts, reason) of each give-up.
    fn reasons(&self) -> Vec<(u32, GiveUpReason)> {
        self.gave_up()
            .iter()
            .map(|g| (g.attempts, g.reason))
            .collect()
    }

    fn retried_attempts(&self) -> Vec<u32> {
        self.retried().iter().map(|r| r.attempt).collect()
    }
}

/// A server answering every request with `status` and one header.
async fn always_with_header(status: u16, name: &'static str, value: &'static str) -> TestServer {
    TestServer::start(move |_, _| async move { Reply::with_header(status, name, value) }).await
}

const MAYBE: Verdict = Verdict::transient(Processed::Maybe);

async fn send(
    layer: RetryLayer,
    method: Method,
    url: &str,
    body: Bytes,
) -> http::Response<hyper::body::Incoming> {
    let client: FullClient = common::client();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .unwrap();
    layer.layer(client).oneshot(request).await.unwrap()
}

fn fixed(ms: u64) -> Backoff {
    Backoff::fixed(Duration::from_millis(ms))
}

#[tokio::test(start_paused = true)]
async fn max_attempts_numbers_every_retry_then_gives_up() {
    let server = TestServer::always(503).await;
    let log = Log::default();
    let layer = log.attach(RetryLayer::new().max_attempts(4).backoff(fixed(250)));
    let response = send(
        layer,
        Method::GET,
        &server.url("/items?page=2"),
        Bytes::new(),
    )
    .await;
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(4)));
    let delay = Duration::from_millis(250);
    assert_eq!(
        log.retried(),
        (1..=3)
            .map(|attempt| Retried {
                attempt,
                verdict: MAYBE,
                delay
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        log.gave_up(),
        vec![GaveUp {
            attempts: 4,
            reason: GiveUpReason::MaxAttempts,
            verdict: MAYBE,
            method: Method::GET,
            uri: server.url("/items?page=2"),
            key: None,
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn success_calls_no_give_up_hook() {
    let server = TestServer::fails_first(2, || Reply::status(502)).await;
    let log = Log::default();
    let response = send(
        log.attach(RetryLayer::new().backoff(fixed(1))),
        Method::GET,
        &server.url("/"),
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(log.retried_attempts(), vec![1, 2]);
    assert!(log.gave_up().is_empty());
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_gives_up_after_the_first_attempt() {
    let server = TestServer::always(404).await;
    let log = Log::default();
    send(
        log.attach(RetryLayer::new()),
        Method::GET,
        &server.url("/gone"),
        Bytes::new(),
    )
    .await;
    assert!(log.retried().is_empty());
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::Permanent)]);
    assert_eq!(log.gave_up()[0].verdict, Verdict::Permanent);
}

#[tokio::test(start_paused = true)]
async fn budget_exhausted_is_reported_with_the_attempt_it_stopped_at() {
    let server = TestServer::always(503).await;
    // One request at 100% buys exactly one retry; no floor.
    let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    let log = Log::default();
    let layer = log.attach(
        RetryLayer::new()
            .max_attempts(5)
            .backoff(fixed(10))
            .budget(budget.clone()),
    );
    let response = send(layer, Method::GET, &server.url("/"), Bytes::new()).await;
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(log.retried_attempts(), vec![1]);
    assert_eq!(log.reasons(), vec![(2, GiveUpReason::BudgetExhausted)]);
    assert_eq!(budget.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_is_not_replayable() {
    let server = TestServer::always(503).await;
    let log = Log::default();
    let layer = log.attach(RetryLayer::new().replay_limit(16));
    send(
        layer,
        Method::PUT,
        &server.url("/blobs/1"),
        Bytes::from(vec![b'x'; 64]),
    )
    .await;
    assert_eq!(server.count(), 1);
    assert!(log.retried().is_empty());
    assert_eq!(
        log.reasons(),
        vec![(
            1,
            GiveUpReason::NotReplayable(NotReplayable::TooLarge { limit: 16 })
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_too_close_for_the_server_delay_gives_up() {
    let server = always_with_header(503, "retry-after", "5").await;
    let log = Log::default();
    let layer = log.attach(RetryLayer::new().deadline(Duration::from_secs(3)));
    send(layer, Method::GET, &server.url("/"), Bytes::new()).await;
    assert!(log.retried().is_empty());
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::Deadline)]);
    assert_eq!(
        log.gave_up()[0].verdict.retry_after(),
        Some(Duration::from_secs(5))
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_is_reported_with_its_jitter() {
    let server = TestServer::fails_first(1, || Reply::with_header(503, "retry-after", "2")).await;
    let log = Log::default();
    send(
        log.attach(RetryLayer::new()),
        Method::GET,
        &server.url("/"),
        Bytes::new(),
    )
    .await;
    let retried = log.retried();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        retried[0].verdict.retry_after(),
        Some(Duration::from_secs(2))
    );
    // The server's 2 s plus at most a tenth of it.
    assert!(
        (Duration::from_secs(2)..=Duration::from_millis(2200)).contains(&retried[0].delay),
        "{:?}",
        retried[0].delay
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_too_long_not_safe_and_disabled_are_reported() {
    let server = always_with_header(503, "retry-after", "3600").await;
    let log = Log::default();
    send(
        log.attach(RetryLayer::new()),
        Method::GET,
        &server.url("/"),
        Bytes::new(),
    )
    .await;
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::RetryAfterTooLong)]);

    let server = TestServer::always(500).await;
    let log = Log::default();
    send(
        log.attach(RetryLayer::new()),
        Method::POST,
        &server.url("/emails"),
        Bytes::new(),
    )
    .await;
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::NotSafe)]);
    assert_eq!(log.gave_up()[0].key, None);

    let log = Log::default();
    let client: FullClient = common::client();
    let mut request = Request::get(server.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    request.extensions_mut().insert(Retryable::No);
    log.attach(RetryLayer::new())
        .layer(client)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::Disabled)]);
}

#[tokio::test(start_paused = true)]
async fn give_up_carries_the_generated_key_for_a_dead_letter_queue() {
    let server = TestServer::always(503).await;
    let log = Log::default();
    // The key is made below the retry layer, yet the hook sees it.
    let retry = log.attach(RetryLayer::new().max_attempts(3).backoff(fixed(10)));
    let client: FullClient = common::client();
    let service = retry.layer(IdempotencyKeyLayer::new().layer(client));
    let request = Request::post(server.url("/emails"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    service.oneshot(request).await.unwrap();

    let gave_up = log.gave_up();
    assert_eq!(gave_up.len(), 1);
    assert_eq!(
        (gave_up[0].attempts, gave_up[0].reason),
        (3, GiveUpReason::MaxAttempts)
    );
    assert_eq!(gave_up[0].method, Method::POST);
    assert_eq!(gave_up[0].uri, server.url("/emails"));
    let sent = server.seen()[0].headers["idempotency-key"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(gave_up[0].key.as_deref(), Some(sent.as_str()));
    assert_eq!(log.retried_attempts(), vec![1, 2]);
}

/// A client that breaks once it has sent one request: every later
/// `poll_ready` fails, as a pool whose connections were closed for good.
#[derive(Clone)]
struct BreaksAfterOneCall {
    inner: FullClient,
    called: Arc<std::sync::atomic::AtomicBool>,
}

impl tower::Service<Request<ReplayBody<Full<Bytes>>>> for BreaksAfterOneCall {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.called.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(Err("connection pool closed".into()));
        }
        tower::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReplayBody<Full<Bytes>>>) -> Self::Future {
        self.called.store(true, std::sync::atomic::Ordering::SeqCst);
        let future = self.inner.request(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_that_fails_to_get_ready_for_a_retry_is_reported() {
    let server = TestServer::always(503).await;
    let log = Log::default();
    let client = BreaksAfterOneCall {
        inner: common::client(),
        called: Arc::default(),
    };
    let service = log
        .attach(RetryLayer::new().max_attempts(3).backoff(fixed(10)))
        .layer(client);
    let request = Request::get(server.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.to_string(), "connection pool closed");
    assert_eq!(server.count(), 1);
    assert_eq!(log.retried_attempts(), vec![1]);
    assert_eq!(log.reasons(), vec![(1, GiveUpReason::ServiceNotReady)]);
    assert_eq!(log.gave_up()[0].verdict, MAYBE);
}
