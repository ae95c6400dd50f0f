//! IdempotencyLayer over real HTTP: an axum app on 127.0.0.1:0 whose handlers
//! count their side effects, called through hyper's client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;
use tower_reissue::idempotency::store::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};
use tower_reissue::idempotency::{Principal, StoreDecision};
use tower_reissue::{IdempotencyLayer, MemoryStore};

// ---------- harness ----------

#[derive(Clone, Default)]
struct Effects {
    count: Arc<AtomicUsize>,
    started: Arc<Notify>,
    gate: Arc<Notify>,
}

impl Effects {
    /// Records one execution and returns its number.
    fn hit(&self) -> usize {
        self.count.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[derive(Clone)]
struct Http {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
    fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.headers["content-type"],
            "application/problem+json",
            "{}",
            self.text()
        );
        let problem: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        for field in ["type", "title", "detail"] {
            assert!(
                problem[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} in {problem}"
            );
        }
        assert_eq!(problem["status"], self.status.as_u16());
        problem
    }
    fn problem_type(&self) -> String {
        let problem = self.problem();
        let uri = problem["type"].as_str().unwrap();
        uri.rsplit_once('#').unwrap().1.to_owned()
    }
}

impl Http {
    async fn new(app: Router) -> Self {
        Self {
            addr: serve(app).await,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let response = self
            .client
            .request(request.body(Full::new(body.into())).unwrap())
            .await?;
        let (parts, body) = response.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.unwrap()
    }

    async fn post(&self, path: &str, key: &str) -> Reply {
        self.post_body(path, key, "payload").await
    }

    async fn post_body(&self, path: &str, key: &str, body: impl Into<Bytes>) -> Reply {
        let headers: &[(&str, &[u8])] = &[("idempotency-key", key.as_bytes())];
        self.send(Method::POST, path, headers, body).await
    }
}

/// A handler that counts its executions and answers 201 with headers.
async fn create(State(effects): State<Effects>) -> impl IntoResponse {
    let n = effects.hit();
    (
        StatusCode::CREATED,
        [
            ("x-order-id", format!("order-{n}")),
            ("cache-control", "no-store".to_owned()),
        ],
        format!("created #{n}"),
    )
}

/// Like `create`, but waits for the test to open the gate before answering.
async fn gated(State(effects): State<Effects>) -> impl IntoResponse {
    let n = effects.hit();
    effects.started.notify_one();
    effects.gate.notified().await;
    (StatusCode::CREATED, format!("created #{n}"))
}

fn app(effects: &Effects, layer: IdempotencyLayer<MemoryStore>) -> Router {
    Router::new()
        .route("/orders", post(create))
        .route("/other", post(create))
        .route("/gated", post(gated))
        .route("/health", get(|| async { "ok" }))
        .layer(layer)
        .with_state(effects.clone())
}

// ---------- 1. concurrency ----------

#[tokio::test]
async fn fifty_concurrent_requests_run_once_and_the_rest_get_409() {
    let effects = Effects::default();
    let http = Http::new(app(&effects, IdempotencyLayer::new(MemoryStore::new()))).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let http = http.clone();
        requests.spawn(async move { http.post("/gated", "one-key").await });
    }

    // The handler holds the claim until every duplicate has been answered.
    let mut conflicts = 0;
    while requests.len() > 1 {
        // Bounded, so a second execution blocked on the gate fails the test
        // instead of hanging it.
        let next = tokio::time::timeout(Duration::from_secs(30), requests.join_next());
        let reply = next
            .await
            .expect("a duplicate ran the handler")
            .unwrap()
            .unwrap();
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
        assert_eq!(reply.headers["retry-after"], "1");
        assert_eq!(reply.problem_type(), "request-in-flight");
        conflicts += 1;
    }
    assert_eq!(effects.count(), 1);
    effects.gate.notify_one();
    let first = requests.join_next().await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(conflicts, 49);
    assert_eq!(effects.count(), 1);

    let replay = http.post("/gated", "one-key").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(effects.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_requests_in_wait_mode_share_one_result() {
    let effects = Effects::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).wait_for_result(Duration::from_secs(600));
    let http = Http::new(app(&effects, layer)).await;
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move { http.post("/gated", "wait-key").await })
        })
        .collect();
    effects.started.notified().await;
    // Let the duplicates poll the store for a while before the first finishes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    effects.gate.notify_one();

    let mut replays = 0;
    for request in requests {
        let reply = tokio::time::timeout(Duration::from_secs(600), request)
            .await
            .expect("a duplicate ran the handler")
            .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.text(), "created #1");
        replays += usize::from(reply.replayed());
    }
    assert_eq!(replays, 49);
    assert_eq!(effects.count(), 1);
}

// ---------- 2. replay ----------

#[tokio::test]
async fn a_replay_is_identical_and_runs_nothing() {
    let effects = Effects::default();
    let http = Http::new(app(&effects, IdempotencyLayer::new(MemoryStore::new()))).await;
    let first = http.post("/orders", "replay-key").await;
    let second = http.post("/orders", "replay-key").await;

    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert!(second.replayed());
    assert_eq!(second.status, first.status);
    assert_eq!(second.body, first.body);
    let without = |headers: &HeaderMap| {
        let mut headers = headers.clone();
        headers.remove("date");
        headers.remove("idempotent-replayed");
        headers
    };
    assert_eq!(without(&second.headers), without(&first.headers));
    assert_eq!(second.headers["x-order-id"], "order-1");
    assert_eq!(effects.count(), 1);

    // Requests without a key are untouched.
    let health = http.send(Method::GET, "/health", &[], "").await;
    assert_eq!((health.status, health.text()), (StatusCode::OK, "ok"));
    let unkeyed = http.send(Method::POST, "/orders", &[], "").await;
    assert_eq!(unkeyed.text(), "created #2");
}

// ---------- 3. key and payload errors ----------

#[tokio::test]
async fn reused_keys_and_bad_keys_are_rejected_with_problems() {
    let effects = Effects::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]);
    let http = Http::new(app(&effects, layer)).await;
    let key: &[(&str, &[u8])] = &[("idempotency-key", b"k-422")];

    assert_eq!(
        http.send(Method::POST, "/orders", key, "body A")
            .await
            .status,
        StatusCode::CREATED
    );
    let other_body = http.send(Method::POST, "/orders", key, "body B").await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.problem_type(), "idempotency-key-reused");
    let other_path = http.send(Method::POST, "/other", key, "body A").await;
    assert_eq!(other_path.status, StatusCode::UNPROCESSABLE_ENTITY);
    let other_query = http.send(Method::POST, "/orders?x=1", key, "body A").await;
    assert_eq!(other_query.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(effects.count(), 1);

    let missing = http.send(Method::POST, "/orders", &[], "").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.problem_type(), "idempotency-key-missing");

    let long = [b'k'; 256];
    let bad_keys: [&[u8]; 6] = [
        b"",
        b"\"\"",
        &long,
        "cl\u{e9}".as_bytes(),
        b"a\tb",
        b"\"unterminated",
    ];
    for bad in bad_keys {
        let reply = http
            .send(Method::POST, "/orders", &[("idempotency-key", bad)], "")
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "key {bad:?}");
        assert_eq!(
            reply.problem_type(),
            "idempotency-key-invalid",
            "key {bad:?}"
        );
    }
    // 255 characters, quoted, is fine.
    let longest = format!("\"{}\"", "k".repeat(255));
    let ok = http
        .send(
            Method::POST,
            "/orders",
            &[("idempotency-key", longest.as_bytes())],
            "",
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(effects.count(), 2);
}

#[tokio::test]
async fn an_oversized_request_body_is_a_413_problem() {
    let effects = Effects::default();
    let layer = IdempotencyLayer::new(MemoryStore::new()).max_request_body(1024);
    let http = Http::new(app(&effects, layer)).await;
    let reply = http.post_body("/orders", "big", vec![b'x'; 2048]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.problem_type(), "request-too-large");
    assert_eq!(effects.count(), 0);
    let fits = http.post_body("/orders", "big", vec![b'x'; 1024]).await;
    assert_eq!(fits.status, StatusCode::CREATED);
}

// ---------- 4. principals ----------

#[tokio::test]
async fn principals_never_see_each_others_results() {
    let effects = Effects::default();
    let http = Http::new(app(&effects, IdempotencyLayer::new(MemoryStore::new()))).await;
    let as_user = |auth: &'static str| {
        let http = http.clone();
        async move {
            http.send(
                Method::POST,
                "/orders",
                &[
                    ("idempotency-key", b"shared"),
                    ("authorization", auth.as_bytes()),
                ],
                "same body",
            )
            .await
        }
    };
    let alice = as_user("Bearer alice").await;
    let bob = as_user("Bearer bob").await;
    assert_eq!((alice.text(), bob.text()), ("created #1", "created #2"));
    assert!(!bob.replayed());
    let alice_again = as_user("Bearer alice").await;
    let bob_again = as_user("Bearer bob").await;
    assert_eq!(
        (alice_again.text(), bob_again.text()),
        ("created #1", "created #2")
    );
    assert!(alice_again.replayed() && bob_again.replayed());
    assert_eq!(effects.count(), 2);
}

// ---------- 5. failures release the claim ----------

async fn fails_first(State(effects): State<Effects>) -> Response<String> {
    let n = effects.hit();
    let status = if n == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let mut response = Response::new(format!("attempt {n}"));
    *response.status_mut() = status;
    response
}

async fn panics_first(State(effects): State<Effects>) -> String {
    let n = effects.hit();
    if n == 1 {
        panic!("handler failed on attempt {n}");
    }
    format!("attempt {n}")
}

async fn forced_500(State(effects): State<Effects>) -> impl IntoResponse {
    let n = effects.hit();
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Extension(StoreDecision::Store),
        format!("charged #{n}, receipt failed"),
    )
}

async fn declined_201(State(effects): State<Effects>) -> impl IntoResponse {
    let n = effects.hit();
    (
        StatusCode::CREATED,
        Extension(StoreDecision::Release),
        format!("draft #{n}"),
    )
}

#[tokio::test]
async fn server_errors_release_and_forced_results_are_kept() {
    let effects = Effects::default();
    let http = Http::new(
        Router::new()
            .route("/flaky", post(fails_first))
            .route("/forced", post(forced_500))
            .route("/declined", post(declined_201))
            .layer(IdempotencyLayer::new(MemoryStore::new()))
            .with_state(effects.clone()),
    )
    .await;

    let first = http.post("/flaky", "k-500").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = http.post("/flaky", "k-500").await;
    assert_eq!(
        (retry.status, retry.text(), retry.replayed()),
        (StatusCode::OK, "attempt 2", false)
    );
    assert_eq!(http.post("/flaky", "k-500").await.text(), "attempt 2");
    assert_eq!(effects.count(), 2);

    let forced = http.post("/forced", "k-forced").await;
    let replay = http.post("/forced", "k-forced").await;
    assert_eq!(replay.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(replay.replayed());
    assert_eq!(replay.body, forced.body);
    assert_eq!(effects.count(), 3);

    http.post("/declined", "k-declined").await;
    let again = http.post("/declined", "k-declined").await;
    assert_eq!((again.text(), again.replayed()), ("draft #5", false));
}

#[tokio::test]
async fn with_store_server_errors_a_retry_gets_the_same_500() {
    let effects = Effects::default();
    let http = Http::new(
        Router::new()
            .route("/flaky", post(fails_first))
            .route("/declined", post(declined_201))
            .layer(IdempotencyLayer::new(MemoryStore::new()).store_server_errors())
            .with_state(effects.clone()),
    )
    .await;

    let first = http.post("/flaky", "k-500").await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    for _ in 0..3 {
        let retry = http.post("/flaky", "k-500").await;
        assert_eq!(
            (retry.status, retry.text(), retry.replayed()),
            (StatusCode::INTERNAL_SERVER_ERROR, "attempt 1", true)
        );
    }
    assert_eq!(effects.count(), 1);
    // A handler's own decision still wins.
    http.post("/declined", "k-declined").await;
    assert!(!http.post("/declined", "k-declined").await.replayed());
    assert_eq!(effects.count(), 3);
}

#[tokio::test]
async fn a_panic_releases_the_claim_with_catch_panic_outside_or_inside() {
    for catch_panic_outside in [true, false] {
        let effects = Effects::default();
        let router = Router::new().route("/panicky", post(panics_first));
        let router = if catch_panic_outside {
            router
                .layer(IdempotencyLayer::new(MemoryStore::new()))
                .layer(CatchPanicLayer::new())
        } else {
            router
                .layer(CatchPanicLayer::new())
                .layer(IdempotencyLayer::new(MemoryStore::new()))
        };
        let http = Http::new(router.with_state(effects.clone())).await;
        let first = http.post("/panicky", "k-panic").await;
        assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
        let retry = http.post("/panicky", "k-panic").await;
        assert_eq!(
            (retry.status, retry.text()),
            (StatusCode::OK, "attempt 2"),
            "CatchPanic outside: {catch_panic_outside}"
        );
        assert_eq!(effects.count(), 2);
    }
}

#[tokio::test]
async fn a_service_error_releases_the_claim() {
    // A plain hyper server around a tower service whose first call fails: the
    // connection is dropped, and the retry must run the service again.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service_fn(move |_request: Request<_>| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    Err(std::io::Error::other("database connection lost"))
                } else {
                    Ok(Response::new(Full::new(Bytes::from(format!("call {n}")))))
                }
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let http = Http {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let headers: &[(&str, &[u8])] = &[("idempotency-key", b"k-err")];
    assert!(
        http.try_send(Method::POST, "/", headers, "x")
            .await
            .is_err()
    );
    let retry = http.send(Method::POST, "/", headers, "x").await;
    assert_eq!((retry.status, retry.text()), (StatusCode::OK, "call 2"));
    assert_eq!(
        http.send(Method::POST, "/", headers, "x").await.text(),
        "call 2"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------- 6. leases ----------

#[tokio::test(start_paused = true)]
async fn a_long_running_handler_keeps_its_claim_by_renewing() {
    let effects = Effects::default();
    let lease = Duration::from_secs(60);
    let http = Http::new(app(
        &effects,
        IdempotencyLayer::new(MemoryStore::new()).lease(lease),
    ))
    .await;
    let first = tokio::spawn({
        let http = http.clone();
        async move { http.post("/gated", "slow").await }
    });
    effects.started.notified().await;
    // Five leases later the handler is still running: without renewal its
    // claim would have run out and this duplicate would run the handler.
    tokio::time::sleep(lease * 5).await;
    // The bound is generous on purpose: while the exchange waits on loopback
    // I/O, the paused clock jumps from one renewal tick to the next, and a
    // bound of one lease could be reached by those jumps alone.
    let duplicate = tokio::time::timeout(lease * 100, http.post("/gated", "slow"))
        .await
        .expect("the duplicate ran the handler: the claim was not renewed");
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(effects.count(), 1);

    effects.gate.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let replay = http.post("/gated", "slow").await;
    assert!(replay.replayed());
    assert_eq!(effects.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_holders_claim_is_taken_after_the_lease() {
    // Another instance claimed the key and crashed before finishing: nothing
    // renews its claim, so it blocks duplicates only until its lease ends.
    let effects = Effects::default();
    let lease = Duration::from_secs(60);
    let store = MemoryStore::new();
    let record = RecordKey::new(Principal::anonymous().as_str(), "vanish");
    let fingerprint = Fingerprint::of_request(
        &Method::POST,
        &http::Uri::from_static("/orders"),
        b"payload",
    );
    let claim = store.claim(&record, &fingerprint, lease).await.unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    let http = Http::new(app(&effects, IdempotencyLayer::new(store).lease(lease))).await;

    let during_lease = http.post("/orders", "vanish").await;
    assert_eq!(
        during_lease.status,
        StatusCode::CONFLICT,
        "the claim outlives its holder until the lease ends"
    );
    assert_eq!(effects.count(), 0);

    tokio::time::sleep(lease).await;
    let after_lease = http.post("/orders", "vanish").await;
    assert_eq!(
        (after_lease.status, after_lease.text()),
        (StatusCode::CREATED, "created #1")
    );
    assert_eq!(effects.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_mid_handler_still_stores_its_result() {
    // A timeout above the layer drops the request future while the handler
    // runs (as a client that disconnects does). The handler must still finish
    // and its result be stored: a retry gets that result, never a second run.
    let effects = Effects::default();
    let router = app(&effects, IdempotencyLayer::new(MemoryStore::new())).layer(
        axum::middleware::from_fn(|request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(Duration::from_secs(5), next.run(request)).await {
                Ok(response) => response,
                Err(_) => StatusCode::GATEWAY_TIMEOUT.into_response(),
            }
        }),
    );
    let http = Http::new(router).await;

    let first = http.post("/gated", "cancelled").await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    effects.gate.notify_one();

    // The handler finishes on its own task; until it has stored its result,
    // duplicates are told it is in flight.
    let mut retry = http.post("/gated", "cancelled").await;
    for _ in 0..10 {
        if retry.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        retry = http.post("/gated", "cancelled").await;
    }
    assert_eq!(
        (retry.status, retry.text()),
        (StatusCode::CREATED, "created #1")
    );
    assert!(retry.replayed());
    assert_eq!(effects.count(), 1);
}

// ---------- 7. ttl and store bound ----------

#[tokio::test(start_paused = true)]
async fn after_the_ttl_a_key_runs_again() {
    let effects = Effects::default();
    let ttl = Duration::from_secs(3600);
    let http = Http::new(app(
        &effects,
        IdempotencyLayer::new(MemoryStore::new()).ttl(ttl),
    ))
    .await;
    assert_eq!(http.post("/orders", "ttl").await.text(), "created #1");
    tokio::time::sleep(ttl - Duration::from_secs(1)).await;
    assert!(http.post("/orders", "ttl").await.replayed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = http.post("/orders", "ttl").await;
    assert_eq!((after.text(), after.replayed()), ("created #2", false));
    assert_eq!(effects.count(), 2);
}

#[tokio::test]
async fn a_full_memory_store_evicts_and_never_grows_past_its_bound() {
    let effects = Effects::default();
    let store = MemoryStore::with_max_records(5);
    let http = Http::new(app(&effects, IdempotencyLayer::new(store.clone()))).await;
    for i in 0..20 {
        assert_eq!(
            http.post("/orders", &format!("key-{i}")).await.status,
            StatusCode::CREATED
        );
        assert!(store.len() <= 5, "store holds {} records", store.len());
    }
    assert_eq!(store.len(), 5);
    // The newest results are still replayed; the oldest were evicted.
    assert!(http.post("/orders", "key-19").await.replayed());
    assert!(!http.post("/orders", "key-0").await.replayed());
    assert_eq!(effects.count(), 21);
}

impl Http {
    async fn post_as(&self, auth: &str, path: &str, key: &str) -> Reply {
        let headers: &[(&str, &[u8])] = &[
            ("idempotency-key", key.as_bytes()),
            ("authorization", auth.as_bytes()),
        ];
        self.send(Method::POST, path, headers, "payload").await
    }
}

#[tokio::test]
async fn a_key_flood_from_one_client_evicts_nobody_elses_results() {
    // Default store and layer: the quotas are on without any setting.
    let effects = Effects::default();
    let store = MemoryStore::new();
    let http = Http::new(app(&effects, IdempotencyLayer::new(store.clone()))).await;
    let victim = http
        .post_as("Bearer victim", "/orders", "victim-order")
        .await;
    assert_eq!(victim.status, StatusCode::CREATED);

    // More fresh keys than the whole store holds, sixteen at a time.
    let flood = 11_000;
    let mut statuses = std::collections::HashMap::<StatusCode, usize>::new();
    let mut last_refusal = None;
    for batch in (0..flood).collect::<Vec<_>>().chunks(16) {
        let replies = batch.iter().map(|i| {
            let http = http.clone();
            async move {
                http.post_as("Bearer flood", "/orders", &format!("fresh-{i}"))
                    .await
            }
        });
        for reply in futures_util::future::join_all(replies).await {
            *statuses.entry(reply.status).or_default() += 1;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                last_refusal = Some(reply);
            }
        }
    }
    // The flood fills the store's free room (10,000 records, one the
    // victim's), then, over its quota with the store full, is refused.
    let room = 10_000 - 1;
    assert_eq!(statuses[&StatusCode::CREATED], room, "{statuses:?}");
    assert_eq!(statuses[&StatusCode::TOO_MANY_REQUESTS], flood - room);
    let refusal = last_refusal.unwrap();
    assert_eq!(refusal.problem_type(), "quota-exceeded");
    // Room comes back when the flood's oldest result expires, in 24 h.
    let retry_after: u64 = refusal.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (23 * 3600..=24 * 3600).contains(&retry_after),
        "{retry_after}"
    );
    assert_eq!(store.len(), 10_000);

    let retry = http
        .post_as("Bearer victim", "/orders", "victim-order")
        .await;
    assert_eq!((retry.text(), retry.replayed()), ("created #1", true));
    assert_eq!(effects.count(), 1 + room, "the victim's request ran again");
    let another = http
        .post_as("Bearer victim", "/orders", "victim-order-2")
        .await;
    assert_eq!(
        another.status,
        StatusCode::CREATED,
        "the victim is not throttled"
    );
}

#[tokio::test]
async fn one_client_may_hold_a_hundred_claims_in_flight() {
    let effects = Effects::default();
    let http = Http::new(app(&effects, IdempotencyLayer::new(MemoryStore::new()))).await;
    let running: Vec<_> = (0..100)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                http.post_as("Bearer busy", "/gated", &format!("k-{i}"))
                    .await
            })
        })
        .collect();
    while effects.count() < 100 {
        effects.started.notified().await;
    }
    let over = http.post_as("Bearer busy", "/gated", "k-100").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.problem_type(), "quota-exceeded");
    assert_eq!(over.headers["retry-after"], "1");
    // Another client is not affected.
    let other = tokio::spawn({
        let http = http.clone();
        async move { http.post_as("Bearer calm", "/gated", "k-0").await }
    });
    while effects.count() < 101 {
        effects.started.notified().await;
    }
    for _ in 0..101 {
        effects.gate.notify_one();
    }
    for reply in running {
        assert_eq!(reply.await.unwrap().status, StatusCode::CREATED);
    }
    assert_eq!(other.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(effects.count(), 101);
}

// ---------- 8. max_body ----------

/// A body of several chunks with no size hint, like a streamed response.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_response_over_max_body_is_sent_once_and_duplicates_get_410() {
    let effects = Effects::default();
    let big = |State(effects): State<Effects>| async move {
        effects.hit();
        vec![b'a'; 4096]
    };
    let streamed = |State(effects): State<Effects>| async move {
        effects.hit();
        axum::body::Body::new(Chunked(
            (0..4).map(|i| Bytes::from(vec![b'0' + i; 1024])).collect(),
        ))
    };
    let http = Http::new(
        Router::new()
            .route("/big", post(big))
            .route("/streamed", post(streamed))
            .layer(IdempotencyLayer::new(MemoryStore::new()).max_body(1500))
            .with_state(effects.clone()),
    )
    .await;

    for (path, expected) in [
        ("/big", vec![b'a'; 4096]),
        (
            "/streamed",
            [b'0', b'1', b'2', b'3']
                .iter()
                .flat_map(|b| vec![*b; 1024])
                .collect(),
        ),
    ] {
        let first = http.post(path, path).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            first.body, expected,
            "{path}: the first caller gets the whole body"
        );
        let duplicate = http.post(path, path).await;
        assert_eq!(duplicate.status, StatusCode::GONE);
        assert_eq!(duplicate.problem_type(), "response-not-stored");
        assert_eq!(duplicate.problem()["original_status"], 200);
    }
    assert_eq!(effects.count(), 2);
}

// ---------- store failures ----------

/// A store whose backend is down.
#[derive(Clone)]
struct DownStore;

impl IdempotencyStore for DownStore {
    async fn claim(
        &self,
        _: &RecordKey,
        _: &Fingerprint,
        _: Duration,
    ) -> Result<Claim, StoreError> {
        Err(StoreError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn complete(
        &self,
        _: &RecordKey,
        _: FencingToken,
        _: StoredOutcome,
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(StoreError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn renew(&self, _: &RecordKey, _: FencingToken, _: Duration) -> Result<(), StoreError> {
        Err(StoreError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
    async fn release(&self, _: &RecordKey, _: FencingToken) -> Result<(), StoreError> {
        Err(StoreError::unavailable(std::io::Error::other(
            "connection refused",
        )))
    }
}

/// A `MemoryStore` that becomes unreachable for `outage` from the first
/// completion on: every operation fails meanwhile.
#[derive(Clone)]
struct FailsAtCompletion {
    inner: MemoryStore,
    outage: Duration,
    down_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl FailsAtCompletion {
    fn new(outage: Duration) -> Self {
        Self {
            inner: MemoryStore::new(),
            outage,
            down_until: Arc::default(),
        }
    }

    fn check(&self, completing: bool) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        let mut down_until = self.down_until.lock().unwrap();
        if completing && down_until.is_none() {
            *down_until = Some(now + self.outage);
        }
        match *down_until {
            Some(until) if now < until => Err(StoreError::unavailable(std::io::Error::other(
                "connection refused",
            ))),
            _ => Ok(()),
        }
    }
}

impl IdempotencyStore for FailsAtCompletion {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.check(false)?;
        self.inner.claim(key, fingerprint, lease).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.check(true)?;
        self.inner.complete(key, token, outcome, ttl).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.check(false)?;
        self.inner.renew(key, token, lease).await
    }
    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        self.check(false)?;
        self.inner.release(key, token).await
    }
}

fn orders_on(store: FailsAtCompletion, effects: &Effects, lease: Duration) -> Router {
    Router::new()
        .route("/orders", post(create))
        .layer(IdempotencyLayer::new(store).lease(lease))
        .with_state(effects.clone())
}

#[tokio::test(start_paused = true)]
async fn a_completion_during_a_one_second_store_outage_is_retried() {
    let effects = Effects::default();
    let lease = Duration::from_secs(10);
    let store = FailsAtCompletion::new(Duration::from_secs(1));
    let http = Http::new(orders_on(store.clone(), &effects, lease)).await;

    let first = http.post("/orders", "k").await;
    assert_eq!(
        (first.status, first.text()),
        (StatusCode::CREATED, "created #1")
    );
    // Long after the lease: a claim left in flight would have run out and
    // the retry would run the handler again.
    tokio::time::sleep(lease * 3).await;
    let retry = http.post("/orders", "k").await;
    assert_eq!((retry.text(), retry.replayed()), ("created #1", true));
    assert_eq!(effects.count(), 1, "the handler ran again");
    // The result is in the store itself, not only in this process.
    let elsewhere = Http::new(orders_on(store, &effects, lease)).await;
    assert!(elsewhere.post("/orders", "k").await.replayed());
    assert_eq!(effects.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_result_the_store_never_took_answers_this_instances_duplicates() {
    let effects = Effects::default();
    let lease = Duration::from_secs(10);
    let http = Http::new(orders_on(
        FailsAtCompletion::new(lease * 6),
        &effects,
        lease,
    ))
    .await;

    assert_eq!(http.post("/orders", "k").await.status, StatusCode::CREATED);
    tokio::time::sleep(lease * 10).await;
    // The store is back and its claim has expired; this process still knows.
    let retry = http.post("/orders", "k").await;
    assert_eq!((retry.text(), retry.replayed()), ("created #1", true));
    let reused = http.post_body("/orders", "k", "another payload").await;
    assert_eq!(reused.problem_type(), "idempotency-key-reused");
    assert_eq!(effects.count(), 1, "the handler ran again");
}

#[tokio::test]
async fn an_unavailable_store_fails_closed_or_open() {
    let effects = Effects::default();
    let closed = Http::new(
        Router::new()
            .route("/orders", post(create))
            .layer(IdempotencyLayer::new(DownStore))
            .with_state(effects.clone()),
    )
    .await;
    let reply = closed.post("/orders", "k").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["retry-after"], "5");
    assert_eq!(reply.problem_type(), "store-unavailable");
    assert_eq!(effects.count(), 0);

    let open = Http::new(
        Router::new()
            .route("/orders", post(create))
            .layer(IdempotencyLayer::new(DownStore).fail_open())
            .with_state(effects.clone()),
    )
    .await;
    assert_eq!(open.post("/orders", "k").await.status, StatusCode::CREATED);
    assert_eq!(effects.count(), 1);
}

/// A `MemoryStore` whose renewals report the lease lost, as a store does
/// once another execution took the key over.
#[derive(Clone, Default)]
struct LosesLeaseOnRenewal {
    inner: MemoryStore,
    renewals: Arc<AtomicUsize>,
}

impl IdempotencyStore for LosesLeaseOnRenewal {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, fingerprint, lease).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.complete(key, token, outcome, ttl).await
    }
    async fn renew(&self, _: &RecordKey, _: FencingToken, _: Duration) -> Result<(), StoreError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::LeaseLost)
    }
    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_whose_lease_is_lost_still_answers_and_renews_no_more() {
    let effects = Effects::default();
    let lease = Duration::from_secs(60);
    let store = LosesLeaseOnRenewal::default();
    let app = Router::new()
        .route("/gated", post(gated))
        .layer(IdempotencyLayer::new(store.clone()).lease(lease))
        .with_state(effects.clone());
    let http = Http::new(app).await;
    let first = tokio::spawn({
        let http = http.clone();
        async move { http.post("/gated", "lost").await }
    });
    effects.started.notified().await;
    // Several renewal periods pass: the first renewal hears the lease is
    // lost, and no other is tried.
    tokio::time::sleep(lease * 3).await;
    assert_eq!(store.renewals.load(Ordering::SeqCst), 1);

    effects.gate.notify_one();
    let reply = first.await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::CREATED, "created #1"),
        "the client still gets the handler's answer"
    );
    assert_eq!(effects.count(), 1);
}
