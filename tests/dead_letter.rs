//! Dead letters over real HTTP: what `RetryLayer::dead_letters` parks, and
//! how the `Replayer` sends it again (same key, bounded rate, shutdown,
//! history, retention).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::{Reply, TestServer};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::dead_letter::{
    AttemptOutcome, DeadLetter, DeadLetterQueue, DeadLetterState, DeadLetters, FailedRequest,
    KeptBody, MemoryQueue, PageQuery, QueueError, Replayer, StateKind,
};
use tower_reissue::{
    Backoff, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody, RetryLayer,
};

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

fn layer(queue: impl Into<DeadLetters>) -> RetryLayer {
    RetryLayer::new()
        .max_attempts(2)
        .no_budget()
        .backoff(Backoff::fixed(Duration::from_millis(10)))
        .dead_letters(queue)
}

fn post_request(url: &str, body: &'static str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::post(url)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

async fn send(layer: RetryLayer, request: Request<Full<Bytes>>) -> StatusCode {
    let client: FullClient = common::client();
    match layer.layer(client).oneshot(request).await {
        Ok(response) => response.status(),
        Err(_) => StatusCode::from_u16(599).unwrap(),
    }
}

/// Waits (without moving time) until the queue's spawned pushes have landed.
async fn entries(queue: &MemoryQueue, n: usize) -> Vec<DeadLetter> {
    while queue.len() < n {
        tokio::task::yield_now().await;
    }
    queue.page(&PageQuery::new(100)).await.unwrap().entries
}

#[tokio::test(start_paused = true)]
async fn every_give_up_is_parked_with_its_body_key_and_last_answer() {
    let server = TestServer::always(503).await;
    let queue = MemoryQueue::new();

    // Attempts spent: a keyed POST, credentials left out.
    let keyed = post_request(
        &server.url("/emails?to=ada"),
        r#"{"subject":"hi"}"#,
        &[
            ("idempotency-key", "k-1"),
            ("authorization", "Bearer secret"),
            ("cookie", "session=1"),
            ("x-trace", "t-1"),
        ],
    );
    assert_eq!(
        send(layer(queue.clone()), keyed).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Not safe to repeat: a POST without a key, parked after one attempt.
    let unkeyed = post_request(&server.url("/emails"), "plain", &[]);
    assert_eq!(
        send(layer(queue.clone()), unkeyed).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let parked = entries(&queue, 2).await;
    let first = &parked[0].request;
    assert_eq!(first.method, Method::POST);
    assert_eq!(first.uri, server.url("/emails?to=ada").as_str());
    assert_eq!(
        first.body,
        KeptBody::Kept(Bytes::from(r#"{"subject":"hi"}"#))
    );
    assert_eq!(first.idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(first.reason, "max_attempts");
    assert_eq!(first.attempts, 2);
    assert_eq!(
        first.last,
        AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert!(first.headers.get(AUTHORIZATION).is_none());
    assert!(first.headers.get(COOKIE).is_none());
    assert_eq!(first.headers["x-trace"], "t-1");
    assert_eq!(parked[0].state, DeadLetterState::Pending);
    // The body is what the server received.
    assert_eq!(server.seen()[0].body, Bytes::from(r#"{"subject":"hi"}"#));

    let second = &parked[1].request;
    assert_eq!(second.reason, "not_safe");
    assert_eq!(second.attempts, 1);
    assert_eq!(second.body, KeptBody::Kept(Bytes::from("plain")));
    assert_eq!(second.idempotency_key, None);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_permanent_failures_and_sink_options() {
    let server = TestServer::always(400).await;
    let queue = MemoryQueue::new();
    let sink = DeadLetters::new(queue.clone())
        .keep_header(AUTHORIZATION)
        .redact(|request| {
            if request.uri.path() == "/resets" {
                request.body = KeptBody::NotKept("redacted".into());
            }
        });

    // A permanent answer is final: nothing to park.
    let rejected = post_request(&server.url("/emails"), "x", &[("idempotency-key", "k")]);
    assert_eq!(
        send(layer(sink.clone()), rejected).await,
        StatusCode::BAD_REQUEST
    );

    // Refused connections, with the cause's text.
    let (addr, _reserved) = common::closed_port();
    let refused = post_request(
        &format!("http://{addr}/resets"),
        "personal",
        &[("idempotency-key", "k-2"), ("authorization", "Bearer kept")],
    );
    assert_eq!(send(layer(sink), refused).await.as_u16(), 599);

    let parked = entries(&queue, 1).await;
    assert_eq!(parked.len(), 1, "the 400 was not parked");
    let request = &parked[0].request;
    assert_eq!(request.reason, "max_attempts");
    assert_eq!(request.headers[AUTHORIZATION], "Bearer kept");
    assert_eq!(request.body, KeptBody::NotKept("redacted".into()));
    let AttemptOutcome::Error(text) = &request.last else {
        panic!("a transport error, got {:?}", request.last);
    };
    assert!(text.to_lowercase().contains("connect"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_is_not_kept_and_never_replayed_empty() {
    let server = TestServer::always(503).await;
    let queue = MemoryQueue::new();
    let big = "a body far longer than the sixteen-byte replay limit";
    let request = post_request(&server.url("/upload"), big, &[("idempotency-key", "k-big")]);
    let status = send(layer(queue.clone()).replay_limit(16), request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.count(), 1);

    let parked = entries(&queue, 1).await;
    let request = &parked[0].request;
    assert_eq!(request.reason, "not_replayable");
    assert_eq!(
        request.body,
        KeptBody::NotKept("the request body is over the replay limit of 16 bytes".into())
    );
    assert!(!request.is_replayable());

    let client = ServiceBuilder::new()
        .layer(RetryLayer::new())
        .service(common::client::<ReplayBody<Full<Bytes>>>());
    let report = Replayer::new(queue.clone(), client)
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.not_replayable, 1);
    assert_eq!(report.replayed, 0);
    assert_eq!(
        server.count(),
        1,
        "never sent again, with an empty body or any other"
    );
    let entry = queue.get(parked[0].id).await.unwrap().unwrap();
    assert!(
        matches!(entry.state, DeadLetterState::FailedAgain { retry_at } if retry_at > SystemTime::now() + Duration::from_secs(86_400 * 365))
    );
    assert_eq!(
        entry.history[0].outcome,
        AttemptOutcome::Error(
            "not replayable: the request body is over the replay limit of 16 bytes".into()
        )
    );
}

/// A queue whose pushes never finish, or fail: the caller's answer must not
/// care.
#[derive(Clone)]
struct BrokenQueue {
    hang: bool,
}

impl DeadLetterQueue for BrokenQueue {
    async fn push(
        &self,
        _: FailedRequest,
    ) -> Result<tower_reissue::dead_letter::DeadLetterId, QueueError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(QueueError::unavailable("disk full"))
    }
    async fn lease(
        &self,
        _: usize,
        _: Duration,
    ) -> Result<Vec<tower_reissue::dead_letter::Lease>, QueueError> {
        Ok(Vec::new())
    }
    async fn lease_one(
        &self,
        _: tower_reissue::dead_letter::DeadLetterId,
        _: Duration,
    ) -> Result<Option<tower_reissue::dead_letter::Lease>, QueueError> {
        Err(QueueError::NotFound)
    }
    async fn complete(
        &self,
        _: tower_reissue::dead_letter::DeadLetterId,
        _: tower_reissue::dead_letter::LeaseToken,
        _: StatusCode,
    ) -> Result<(), QueueError> {
        Err(QueueError::LeaseLost)
    }
    async fn fail(
        &self,
        _: tower_reissue::dead_letter::DeadLetterId,
        _: tower_reissue::dead_letter::LeaseToken,
        _: AttemptOutcome,
        _: Duration,
    ) -> Result<(), QueueError> {
        Err(QueueError::LeaseLost)
    }
    async fn discard(&self, _: tower_reissue::dead_letter::DeadLetterId) -> Result<(), QueueError> {
        Err(QueueError::NotFound)
    }
    async fn get(
        &self,
        _: tower_reissue::dead_letter::DeadLetterId,
    ) -> Result<Option<DeadLetter>, QueueError> {
        Ok(None)
    }
    async fn page(&self, _: &PageQuery) -> Result<tower_reissue::dead_letter::Page, QueueError> {
        Ok(tower_reissue::dead_letter::Page {
            entries: Vec::new(),
            next: None,
        })
    }
    async fn counts(&self) -> Result<tower_reissue::dead_letter::Counts, QueueError> {
        Ok(Default::default())
    }
    async fn purge(&self, _: SystemTime) -> Result<u64, QueueError> {
        Ok(0)
    }
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_or_failing_queue_never_costs_the_caller_its_answer() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::always(503).await;

    let hanging = post_request(&server.url("/a"), "x", &[("idempotency-key", "k-1")]);
    let status = send(layer(BrokenQueue { hang: true }), hanging).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let failing = post_request(&server.url("/b"), "x", &[("idempotency-key", "k-2")]);
    let status = send(layer(BrokenQueue { hang: false }), failing).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    while !captured.text().contains("dead letter lost") {
        tokio::task::yield_now().await;
    }
    let text = captured.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("disk full"), "{text}");
    assert!(text.contains("/b"), "{text}");
    assert!(
        !text.contains("/a"),
        "the hanging push is still pending: {text}"
    );
}

/// An axum app whose `POST /emails` counts its effects, behind
/// `IdempotencyLayer`; `fail_first` answers 503 before running the handler.
async fn email_api(effects: Arc<Mutex<Vec<String>>>, fail_first: usize) -> TestServer {
    let app = Router::new()
        .route(
            "/emails",
            post(move |body: Bytes| {
                let effects = effects.clone();
                async move {
                    effects
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    (StatusCode::CREATED, "sent")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
    let app = Arc::new(tokio::sync::Mutex::new(app));
    TestServer::start(move |n, seen| {
        let app = app.clone();
        async move {
            if n <= fail_first {
                return Reply::status(503);
            }
            let mut request = Request::post(seen.path.as_str())
                .body(axum::body::Body::from(seen.body))
                .unwrap();
            *request.headers_mut() = seen.headers;
            let response = app.lock().await.clone().oneshot(request).await.unwrap();
            Reply::status(response.status().as_u16())
        }
    })
    .await
}

/// The client stack an application would use, parking into `queue`.
fn app_client(
    queue: MemoryQueue,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = tower_reissue::BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(layer(queue))
        .service(common::client::<ReplayBody<Full<Bytes>>>())
}

#[tokio::test(start_paused = true)]
async fn the_replayer_sends_the_same_request_once_and_records_history() {
    let effects = Arc::new(Mutex::new(Vec::new()));
    // Four 503s: the first request's two attempts, then the first replay's
    // two attempts; after that the API is back.
    let server = email_api(effects.clone(), 4).await;
    let queue = MemoryQueue::new();
    let client = app_client(queue.clone());

    let request = post_request(&server.url("/emails"), "to=ada", &[]);
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let parked = entries(&queue, 1).await;
    let key = parked[0]
        .request
        .idempotency_key
        .clone()
        .expect("the key layer's key");

    // The first replay fails (two more 503s), goes back to its entry with
    // that in its history, and with retry_in zero is taken again at once.
    let replayer = Replayer::new(queue.clone(), client).retry_in(Duration::ZERO);
    let report = replayer.drain(std::future::pending()).await.unwrap();
    assert_eq!((report.failed, report.replayed), (1, 1));
    let entry = queue.get(parked[0].id).await.unwrap().unwrap();
    assert_eq!(
        entry.state,
        DeadLetterState::Replayed {
            status: StatusCode::CREATED
        }
    );
    let outcomes: Vec<_> = entry.history.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(
        outcomes,
        vec![
            AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
            AttemptOutcome::Status(StatusCode::CREATED)
        ]
    );
    assert_eq!(
        queue.len(),
        1,
        "a failed replay goes back to its entry, not a new one"
    );
    assert_eq!(server.count(), 5);

    assert_eq!(*effects.lock().unwrap(), vec!["to=ada".to_string()]);
    let keys: Vec<_> = server
        .seen()
        .iter()
        .map(|seen| seen.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        keys.iter().all(|k| *k == key),
        "every attempt and replay carried {key}: {keys:?}"
    );
    assert!(server.seen().iter().all(|seen| seen.body == "to=ada"));
}

fn pending_request(url: &str, tag: usize) -> FailedRequest {
    FailedRequest {
        at: SystemTime::now(),
        method: Method::POST,
        uri: url.parse().unwrap(),
        headers: HeaderMap::new(),
        body: KeptBody::Kept(Bytes::from(format!("n={tag}"))),
        idempotency_key: Some(format!("key-{tag}")),
        reason: "budget_exhausted".into(),
        attempts: 1,
        last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

#[tokio::test(start_paused = true)]
async fn replays_honour_the_rate_limit() {
    let server = TestServer::always(201).await;
    let queue = MemoryQueue::new();
    for tag in 0..6 {
        queue
            .push(pending_request(&server.url("/emails"), tag))
            .await
            .unwrap();
    }
    let start = Instant::now();
    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .concurrency(4)
        .rate(2, Duration::from_secs(1))
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.replayed, 6);
    let arrivals: Vec<Duration> = server.seen().iter().map(|s| s.at - start).collect();
    assert_eq!(arrivals.len(), 6);
    for (k, at) in arrivals.iter().enumerate() {
        // The k-th replay starts no earlier than its slot, k * 500 ms.
        assert!(
            *at >= Duration::from_millis(500) * k as u32,
            "replay {k} at {at:?}: {arrivals:?}"
        );
    }
    assert_eq!(queue.counts().await.unwrap().state(StateKind::Replayed), 6);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_stops_the_drain_within_one_entry() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = Arc::new(Mutex::new(Some(stop)));
    let server = TestServer::start(move |n, _| {
        let stop = stop.clone();
        async move {
            if n == 3 {
                // Signalled while the third replay is in flight.
                if let Some(stop) = stop.lock().unwrap().take() {
                    let _ = stop.send(());
                }
            }
            Reply::status(201)
        }
    })
    .await;
    let queue = MemoryQueue::new();
    for tag in 0..10 {
        queue
            .push(pending_request(&server.url("/emails"), tag))
            .await
            .unwrap();
    }
    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .rate(1, Duration::from_secs(1))
        .drain(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    assert!(
        (3..=4).contains(&server.count()),
        "{} replays",
        server.count()
    );
    assert_eq!(
        report.replayed as usize,
        server.count(),
        "the one in flight was recorded"
    );
    let counts = queue.counts().await.unwrap();
    assert_eq!(counts.state(StateKind::Replayed) as usize, server.count());
    assert_eq!(
        counts.state(StateKind::Pending) as usize,
        10 - server.count()
    );
    assert_eq!(
        counts.state(StateKind::Leased),
        0,
        "nothing left holding a lease"
    );
}

#[tokio::test(start_paused = true)]
async fn old_entries_are_discarded_unsent_and_finished_ones_purged() {
    let server = TestServer::always(201).await;
    let queue = MemoryQueue::new();
    let day = Duration::from_secs(86_400);
    let mut stale = pending_request(&server.url("/emails"), 1);
    stale.at = SystemTime::now() - 10 * day;
    let stale = queue.push(stale).await.unwrap();
    let mut old_done = pending_request(&server.url("/emails"), 2);
    old_done.at = SystemTime::now() - 40 * day;
    let old_done = queue.push(old_done).await.unwrap();
    let lease = queue.lease(1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(lease[0].letter.id, stale);
    queue.discard(stale).await.unwrap();
    let fresh = queue
        .push(pending_request(&server.url("/emails"), 3))
        .await
        .unwrap();

    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .max_age(7 * day)
        .retention(30 * day)
        .drain(std::future::pending())
        .await
        .unwrap();
    // old_done was pending, so the purge kept it; max_age then discarded it.
    assert_eq!(report.purged, 0);
    assert_eq!(report.expired, 1);
    assert_eq!(report.replayed, 1);
    assert_eq!(server.count(), 1);
    assert_eq!(server.seen()[0].body, "n=3");
    assert_eq!(
        queue.get(old_done).await.unwrap().unwrap().state,
        DeadLetterState::Discarded
    );
    assert!(matches!(
        queue.get(fresh).await.unwrap().unwrap().state,
        DeadLetterState::Replayed { .. }
    ));

    // The next drain's purge removes the finished entries past retention.
    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .retention(30 * day)
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.purged, 1);
    assert!(queue.get(old_done).await.unwrap().is_none());
    assert!(
        queue.get(stale).await.unwrap().is_some(),
        "discarded, but within retention"
    );
}

#[tokio::test(start_paused = true)]
async fn a_keyless_request_that_may_have_taken_effect_is_replayed_only_on_request() {
    let server = TestServer::always(201).await;
    let queue = MemoryQueue::new();
    let mut maybe_done = pending_request(&server.url("/emails"), 1);
    maybe_done.idempotency_key = None;
    maybe_done.reason = "not_safe".into();
    let maybe_done = queue.push(maybe_done).await.unwrap();
    // Refused by the budget after attempts that never reached the server.
    let mut never_sent = pending_request(&server.url("/emails"), 2);
    never_sent.idempotency_key = None;
    let never_sent = queue.push(never_sent).await.unwrap();

    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!((report.replayed, report.not_replayable), (1, 1));
    assert_eq!(server.count(), 1);
    assert_eq!(server.seen()[0].body, "n=2");
    assert!(matches!(
        queue.get(never_sent).await.unwrap().unwrap().state,
        DeadLetterState::Replayed { .. }
    ));
    let held = queue.get(maybe_done).await.unwrap().unwrap();
    assert!(matches!(held.state, DeadLetterState::FailedAgain { .. }));
    let AttemptOutcome::Error(why) = &held.history[0].outcome else {
        panic!("{held:?}");
    };
    assert!(why.contains("no idempotency key"), "{why}");

    // Once a person has checked, a replayer run by hand sends it.
    let lease = queue.lease(1, Duration::from_secs(1)).await.unwrap();
    assert!(lease.is_empty(), "held back until a person acts");
    let mut checked = held.request.clone();
    checked.at = SystemTime::now();
    queue.discard(maybe_done).await.unwrap();
    let again = queue.push(checked).await.unwrap();
    let report = Replayer::new(queue.clone(), common::client::<Full<Bytes>>())
        .replay_unkeyed(true)
        .drain(std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    assert_eq!(server.count(), 2);
    assert!(matches!(
        queue.get(again).await.unwrap().unwrap().state,
        DeadLetterState::Replayed { .. }
    ));
}
