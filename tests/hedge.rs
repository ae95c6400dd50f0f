//! HedgeLayer over real HTTP on loopback, with tokio's paused clock moved
//! only by the tests: which requests get a hedge, which answer wins, and
//! what stops hedges (the budget, the breaker, a body still streaming).

mod common;

use bytes::Bytes;
use common::{ManualClock, Reply, TestServer, until_seen};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
use tower_reissue::classify::{Outcome, RequestView};
use tower_reissue::retry::Retryable;
use tower_reissue::{
    Attempts, BoxError, Classifier, DefaultClassifier, HedgeLayer, IdempotencyKeyLayer,
    IdempotencyLayer, MemoryStore, ReplayBody, RetryBudget, Verdict,
};

const DELAY: Duration = Duration::from_millis(100);
/// How long the server holds a stalled copy.
const STALL: Duration = Duration::from_secs(10);
/// Timers fire on the millisecond tick after their instant.
const TICK: Duration = Duration::from_millis(1);

type Body_ = ReplayBody<Full<Bytes>>;
type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body_>;

/// A request as the hedge layer takes it when no retry layer wraps it.
fn request(method: Method, url: &str, body: &'static str) -> Request<Body_> {
    let (body, _) = ReplayBody::new(Full::new(Bytes::from_static(body.as_bytes())), 64 * 1024);
    Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap()
}

fn attempts(response: &Response<Incoming>) -> u32 {
    response.extensions().get::<Attempts>().unwrap().get()
}

async fn text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A server where the first request to each path stalls for `STALL` (but
/// on paths starting with `/quick`), and every later one answers at once,
/// 500 on a path containing `fail`, else 200. Each answer says which
/// arrival on its path it was: `copy 1`, `copy 2`, ...
async fn first_stalls() -> TestServer {
    let arrivals: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    TestServer::start(move |_, seen| {
        let copy = {
            let mut arrivals = arrivals.lock().unwrap();
            let n = arrivals.entry(seen.path.clone()).or_default();
            *n += 1;
            *n
        };
        async move {
            if copy == 1 && !seen.path.starts_with("/quick") {
                tokio::time::sleep(STALL).await;
            }
            let status = if seen.path.contains("fail") { 500 } else { 200 };
            Reply::Respond(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(format!("copy {copy}"))))
                    .unwrap(),
            )
        }
    })
    .await
}

fn count_on(server: &TestServer, path: &str) -> usize {
    server.seen().iter().filter(|s| s.path == path).count()
}

/// Wraps the client so that the test sees the copies dropped before their
/// answer came: the hedge layer's cancellations.
#[derive(Clone)]
struct CountCancels {
    inner: Client,
    cancelled: Arc<AtomicUsize>,
}

struct CancelGuard(Option<Arc<AtomicUsize>>);

impl CancelGuard {
    /// The copy got its answer: not a cancellation.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Service<Request<Body_>> for CountCancels {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body_>) -> Self::Future {
        let future = self.inner.call(request);
        let mut guard = CancelGuard(Some(self.cancelled.clone()));
        Box::pin(async move {
            let result = future.await;
            guard.disarm();
            result
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_get_whose_first_copy_stalls_is_answered_by_the_hedge() {
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    let cancelled = Arc::new(AtomicUsize::new(0));
    let client = HedgeLayer::new(DELAY).layer(CountCancels {
        inner: common::client(),
        cancelled: cancelled.clone(),
    });

    let started = Instant::now();
    let call = tokio::spawn(client.oneshot(request(Method::GET, &server.url("/report"), "")));
    until_seen(&server, 1).await;
    // Nothing before the delay.
    tokio::time::advance(DELAY - TICK).await;
    assert_eq!(server.count(), 1);
    tokio::time::advance(TICK + TICK).await;
    until_seen(&server, 2).await;

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    assert_eq!(text(response).await, "copy 2", "the hedge's answer");
    // Answered at the delay, not after the first copy's 10 s.
    assert!(started.elapsed() < DELAY + Duration::from_millis(10));
    let seen = server.seen();
    assert!(seen[1].at.duration_since(seen[0].at) >= DELAY);
    assert_eq!(seen[0].headers, seen[1].headers, "the hedge is a copy");
    // The first copy was dropped once the hedge won, not left running.
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_key_is_never_hedged() {
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    let client = HedgeLayer::new(DELAY).layer(common::client::<Body_>());

    let started = Instant::now();
    let url = server.url("/emails");
    let call = tokio::spawn(client.clone().oneshot(request(Method::POST, &url, "{}")));
    until_seen(&server, 1).await;
    // Well past the delay, and on to the first copy's answer.
    tokio::time::advance(DELAY * 5).await;
    tokio::time::advance(STALL).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 1);
    assert_eq!(text(response).await, "copy 1");
    assert!(started.elapsed() >= STALL, "it waited for its only copy");
    assert_eq!(count_on(&server, "/emails"), 1);

    // The same POST, declared safe to repeat by the caller: now it is
    // hedged, so what kept the first one back was the safety rule.
    let mut upsert = request(Method::POST, &server.url("/upsert"), "{}");
    upsert.extensions_mut().insert(Retryable::Yes);
    let call = tokio::spawn(client.oneshot(upsert));
    until_seen(&server, 2).await;
    tokio::time::advance(DELAY + TICK).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 2);
    assert_eq!(count_on(&server, "/upsert"), 2);
}

/// What the server saw: each answer's key and status, outside the
/// idempotency layer.
type Answered = Arc<Mutex<Vec<(String, StatusCode)>>>;

#[tokio::test(start_paused = true)]
async fn a_keyed_post_stalling_after_its_effect_takes_effect_once_and_answers_with_the_first_copy()
{
    use axum::Router;
    use axum::routing::post;

    // The server: the handler performs its effect, then stalls for 10 s
    // before answering 201.
    let effects = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = tokio::sync::watch::channel(0usize);
    let counted = effects.clone();
    let answered: Answered = Arc::default();
    let log = answered.clone();
    let app = Router::new()
        .route(
            "/emails",
            post(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                started_tx.send_replace(n);
                async move {
                    tokio::time::sleep(STALL).await;
                    (StatusCode::CREATED, "sent")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let log = log.clone();
                async move {
                    let key = request
                        .headers()
                        .get("idempotency-key")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let response = next.run(request).await;
                    log.lock().unwrap().push((key, response.status()));
                    response
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let _clock = ManualClock::hold().await;

    // The client: keys, then hedges (a retry layer would sit between them;
    // here nothing retries, so that a 409 that won would reach the caller
    // at once). The hedge layer's classifier reports what it judged, so
    // that the test knows when the 409 has come back.
    let (judged_tx, mut judged) = tokio::sync::watch::channel(Vec::<u16>::new());
    let judged_tx = Arc::new(judged_tx);
    let classifier = move |request: &RequestView<'_>, outcome: &Outcome<'_>| -> Verdict {
        if let Some(status) = outcome.status() {
            judged_tx.send_modify(|seen| seen.push(status.as_u16()));
        }
        DefaultClassifier::new().classify(request, outcome)
    };
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(HedgeLayer::new(DELAY).classifier(classifier))
        .service(common::client::<Body_>());

    let url = format!("http://{addr}/emails");
    let call =
        tokio::spawn(client.oneshot(request(Method::POST, &url, "{\"to\":\"ada@example.com\"}")));
    // The effect is done and the first copy stalls; the hedge goes out.
    started.wait_for(|n| *n == 1).await.unwrap();
    tokio::time::advance(DELAY + TICK).await;
    judged.wait_for(|seen| seen.contains(&409)).await.unwrap();
    // The 409 came back while the first copy runs: it must not have won.
    assert!(!call.is_finished());
    tokio::time::advance(STALL).await;

    let response: Response<Incoming> = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(attempts(&response), 2);
    assert_eq!(text(response).await, "sent");
    assert_eq!(effects.load(Ordering::SeqCst), 1, "one effect");
    let answered = answered.lock().unwrap().clone();
    assert_eq!(answered.len(), 2, "{answered:?}");
    // The hedge carried the first copy's key, and was told the first copy
    // is still running.
    assert!(!answered[0].0.is_empty());
    assert_eq!(answered[0].0, answered[1].0);
    assert_eq!(answered[0].1, StatusCode::CONFLICT);
    assert_eq!(answered[1].1, StatusCode::CREATED);
    assert_eq!(*judged.borrow(), vec![409, 201]);
}

#[tokio::test(start_paused = true)]
async fn when_every_copy_fails_the_caller_gets_the_first_copys_answer() {
    // The first copy of /fail answers 500 "copy 1" after 10 s; the hedge
    // answers 500 "copy 2" at once.
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    // The classifier reports what it judged, so that the test knows when
    // the hedge's 500 has come back.
    let (judged_tx, mut judged) = tokio::sync::watch::channel(0_usize);
    let judged_tx = Arc::new(judged_tx);
    let classifier = move |request: &RequestView<'_>, outcome: &Outcome<'_>| -> Verdict {
        judged_tx.send_modify(|n| *n += 1);
        DefaultClassifier::new().classify(request, outcome)
    };
    let client = HedgeLayer::new(DELAY)
        .classifier(classifier)
        .layer(common::client::<Body_>());

    let call = tokio::spawn(client.oneshot(request(Method::GET, &server.url("/fail"), "")));
    until_seen(&server, 1).await;
    tokio::time::advance(DELAY + TICK).await;
    // The hedge's 500 is judged while the first copy stalls: it must not
    // have ended the call.
    judged.wait_for(|n| *n == 1).await.unwrap();
    assert!(!call.is_finished());
    tokio::time::advance(STALL).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts(&response), 2);
    assert_eq!(text(response).await, "copy 1");
}

#[tokio::test(start_paused = true)]
async fn no_hedge_goes_out_once_the_budget_is_spent() {
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    // One hedge's worth in the budget, and this layer pays nothing in.
    let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    budget.deposit();
    let client = HedgeLayer::new(DELAY)
        .shared_budget(budget.clone())
        .layer(common::client::<Body_>());

    // The budget has room: the hedge goes out and spends it.
    let call = tokio::spawn(
        client
            .clone()
            .oneshot(request(Method::GET, &server.url("/paid"), "")),
    );
    until_seen(&server, 1).await;
    tokio::time::advance(DELAY + TICK).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 2);
    assert_eq!(budget.available(), 0);

    // Spent: the next slow GET waits for its only copy.
    let call = tokio::spawn(client.oneshot(request(Method::GET, &server.url("/unpaid"), "")));
    until_seen(&server, 3).await;
    tokio::time::advance(DELAY + TICK).await;
    tokio::time::advance(STALL).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 1);
    assert_eq!(text(response).await, "copy 1");
    assert_eq!(count_on(&server, "/unpaid"), 1);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_goes_out_while_the_breaker_is_open() {
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    let breaker = CircuitBreakerLayer::builder()
        .min_throughput(2)
        .failure_ratio(0.5)
        .break_duration(Duration::from_secs(60))
        .max_break_duration(Duration::from_secs(60))
        .build();
    // Counts what the hedge layer hands the breaker for `/during`: a hedge
    // the breaker refuses never reaches the server, so the server's count
    // alone would not show it was sent.
    let handed = Arc::new(AtomicUsize::new(0));
    let counting = handed.clone();
    let client = ServiceBuilder::new()
        .layer(HedgeLayer::new(DELAY).breaker(&breaker))
        .map_request(move |request: Request<Body_>| {
            if request.uri().path() == "/during" {
                counting.fetch_add(1, Ordering::SeqCst);
            }
            request
        })
        .layer(breaker.clone())
        .service(common::client::<Body_>());

    // Closed: a slow GET gets its hedge.
    let call = tokio::spawn(client.clone().oneshot(request(
        Method::GET,
        &server.url("/before"),
        "",
    )));
    until_seen(&server, 1).await;
    tokio::time::advance(DELAY + TICK).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 2);

    // A slow GET goes out while the breaker is closed; then the host's
    // other calls fail (each answers at once: nothing to hedge) until the
    // breaker opens.
    let call = tokio::spawn(client.clone().oneshot(request(
        Method::GET,
        &server.url("/during"),
        "",
    )));
    until_seen(&server, 3).await;
    let mut failures = 0;
    while breaker.state() == BreakerState::Closed {
        let response = client
            .clone()
            .oneshot(request(Method::GET, &server.url("/quick-fail"), ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        failures += 1;
        assert!(failures < 10, "the breaker never opened");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let seen_before = server.count();

    // The hedge is due: none goes out, and the first copy answers.
    tokio::time::advance(DELAY + TICK).await;
    tokio::time::advance(STALL).await;
    let response = call.await.unwrap().unwrap();
    assert_eq!(attempts(&response), 1);
    assert_eq!(text(response).await, "copy 1");
    assert_eq!(count_on(&server, "/during"), 1);
    assert_eq!(server.count(), seen_before);
    assert_eq!(
        handed.load(Ordering::SeqCst),
        1,
        "no hedge handed to the breaker"
    );
}

/// A body sent in chunks as the test releases them: never whole, so only
/// the copy reading it can send it until it ends.
struct Trickle(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_still_streaming_is_not_copied() {
    let server = TestServer::start(|_, _| async { Reply::status(200) }).await;
    let _clock = ManualClock::hold().await;
    let client = HedgeLayer::new(DELAY).layer(common::client::<ReplayBody<Trickle>>());

    let (chunks, rx) = tokio::sync::mpsc::channel(4);
    let (body, _) = ReplayBody::new(Trickle(rx), 64 * 1024);
    let put = Request::put(server.url("/files/7")).body(body).unwrap();
    let call = tokio::spawn(client.oneshot(put));
    chunks.send(Bytes::from_static(b"part 1, ")).await.unwrap();
    // The hedge is due while the first copy still streams the body: a copy
    // cannot be made, so none is sent.
    tokio::time::advance(DELAY + TICK).await;
    tokio::task::yield_now().await;
    chunks.send(Bytes::from_static(b"part 2")).await.unwrap();
    drop(chunks);
    let response: Result<Response<Incoming>, BoxError> = call.await.unwrap();
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 1);
    assert_eq!(server.count(), 1);
    assert_eq!(server.seen()[0].body, "part 1, part 2");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_read_to_its_end_is_copied() {
    // The control of the test above: the same kind of body, released whole
    // before the hedge is due, so the first copy has read it to its end.
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    let client = HedgeLayer::new(DELAY).layer(common::client::<ReplayBody<Trickle>>());

    let (chunks, rx) = tokio::sync::mpsc::channel(4);
    let (body, _) = ReplayBody::new(Trickle(rx), 64 * 1024);
    let put = Request::put(server.url("/files/8")).body(body).unwrap();
    chunks.send(Bytes::from_static(b"part 1, ")).await.unwrap();
    chunks.send(Bytes::from_static(b"part 2")).await.unwrap();
    drop(chunks);
    let call = tokio::spawn(client.oneshot(put));
    until_seen(&server, 1).await;
    tokio::time::advance(DELAY + TICK).await;
    let response: Result<Response<Incoming>, BoxError> = call.await.unwrap();
    let response = response.unwrap();
    assert_eq!(attempts(&response), 2);
    assert_eq!(text(response).await, "copy 2");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|request| request.body == "part 1, part 2"));
}

/// The hedges counter, read back with `metrics-util`'s debugging recorder
/// (installed for this thread only, which runs every task of the test).
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn hedges_are_counted_by_event() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower_reissue::telemetry::metrics as names;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = first_stalls().await;
    let _clock = ManualClock::hold().await;
    let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    budget.deposit();
    let client = HedgeLayer::new(DELAY)
        .shared_budget(budget)
        .layer(common::client::<Body_>());

    // A hedge sent, and winning; then one due that the budget refuses.
    for (path, arrived) in [("/one", 1), ("/two", 3)] {
        let call = tokio::spawn(client.clone().oneshot(request(
            Method::GET,
            &server.url(path),
            "",
        )));
        until_seen(&server, arrived).await;
        tokio::time::advance(DELAY + TICK).await;
        if path == "/two" {
            tokio::time::advance(STALL).await;
        }
        call.await.unwrap().unwrap();
    }

    let counted: HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == names::HEDGES)
        .map(|(key, _, _, value)| {
            let event = key.key().labels().next().unwrap().value().to_owned();
            let DebugValue::Counter(n) = value else {
                panic!("{} is a counter", names::HEDGES)
            };
            (event, n)
        })
        .collect();
    let expected: HashMap<String, u64> = [("sent", 1), ("won", 1), ("budget_exhausted", 1)]
        .into_iter()
        .map(|(event, n)| (event.to_owned(), n))
        .collect();
    assert_eq!(counted, expected);
}
