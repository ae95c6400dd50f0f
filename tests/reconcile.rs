//! Reconciliation over real HTTP on loopback: a third-party email API that
//! ignores idempotency keys but can be asked `GET /emails?reference=…`.

mod common;

use bytes::Bytes;
use common::{Reply, TestServer};
use http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::reconcile::{
    AlreadyApplied, AppliedResponseLost, NotSent, Reconcile, ReconcileFirst, ReconcileRequest,
    ReconcileTimedOut, Reconciled, Reconciliation,
};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{
    Attempts, Backoff, BoxError, IdempotencyKeyLayer, ReplayBody, RetryBudget, RetryLayer,
};

const REFERENCE: HeaderName = HeaderName::from_static("x-reference");

/// What the API does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// 500 before any work.
    ErrorBefore,
    /// The work is done (the email goes out), then 500.
    ErrorAfter,
    /// The work is done, then the connection drops without an answer.
    HangupAfter,
    /// 429 with `Retry-After`, before any work.
    Throttled,
    /// 503 with `Retry-After`, before any work.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Send,
    Lookup,
}

type Faults = Box<dyn Fn(Route, usize) -> Fault + Send + Sync>;

/// The API's own record of what it did.
struct ApiState {
    /// Emails sent per reference.
    sent: Mutex<HashMap<String, u32>>,
    sends: AtomicUsize,
    lookups: AtomicUsize,
    faults: Faults,
}

/// A third-party email API without key support: `POST /emails` sends (and
/// keeps the `X-Reference` header it was given), `GET /emails?reference=…`
/// finds a sent email. `faults(route, n)` decides the n-th request of each
/// route (1-based).
struct EmailApi {
    addr: SocketAddr,
    state: Arc<ApiState>,
}

impl EmailApi {
    async fn start(faults: impl Fn(Route, usize) -> Fault + Send + Sync + 'static) -> EmailApi {
        let state = Arc::new(ApiState {
            sent: Mutex::default(),
            sends: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            faults: Box::new(faults),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { state.handle(req) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EmailApi { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn effects(&self, reference: &str) -> u32 {
        self.state
            .sent
            .lock()
            .unwrap()
            .get(reference)
            .copied()
            .unwrap_or(0)
    }

    fn total_effects(&self) -> u32 {
        self.state.sent.lock().unwrap().values().sum()
    }

    fn duplicates(&self) -> u32 {
        let sent = self.state.sent.lock().unwrap();
        sent.values().map(|n| n.saturating_sub(1)).sum()
    }

    fn sends(&self) -> usize {
        self.state.sends.load(Ordering::SeqCst)
    }

    fn lookups(&self) -> usize {
        self.state.lookups.load(Ordering::SeqCst)
    }
}

impl ApiState {
    fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let route = match *req.method() {
            Method::GET => Route::Lookup,
            _ => Route::Send,
        };
        let n = match route {
            Route::Send => self.sends.fetch_add(1, Ordering::SeqCst) + 1,
            Route::Lookup => self.lookups.fetch_add(1, Ordering::SeqCst) + 1,
        };
        let fault = (self.faults)(route, n);
        match fault {
            Fault::ErrorBefore => return Ok(status(500)),
            Fault::Throttled => return Ok(retry_after(429)),
            Fault::Unavailable => return Ok(retry_after(503)),
            _ => {}
        }
        let response = match route {
            Route::Send => {
                let reference = req
                    .headers()
                    .get(&REFERENCE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                *self.sent.lock().unwrap().entry(reference).or_default() += 1;
                status(201)
            }
            Route::Lookup => {
                let reference = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("reference="))
                    .unwrap_or_default();
                if self
                    .sent
                    .lock()
                    .unwrap()
                    .get(reference)
                    .is_some_and(|&n| n > 0)
                {
                    status(200)
                } else {
                    status(404)
                }
            }
        };
        match fault {
            Fault::ErrorAfter => Ok(status(500)),
            Fault::HangupAfter => Err(std::io::Error::other("hung up after the work")),
            _ => Ok(response),
        }
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn retry_after(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("retry-after", "1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

type SendClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

/// The reconciler of these tests: `GET /emails?reference={correlation id}`
/// through a client of its own (`lookups`: its retry layer, for a lookup is
/// a GET and safe to repeat). 200 -> applied, 404 -> not applied.
fn lookup(base: String, lookups: RetryLayer) -> impl Reconcile {
    let client = lookups.layer(common::client::<ReplayBody<Empty<Bytes>>>());
    move |request: ReconcileRequest| {
        let client = client.clone();
        let url = request
            .correlation_id()
            .map(|id| format!("{base}/emails?reference={id}"));
        async move {
            let Some(url) = url else {
                return Ok(Reconciled::Unknown);
            };
            let response = client
                .oneshot(Request::get(url).body(Empty::new())?)
                .await?;
            Ok::<_, BoxError>(match response.status() {
                StatusCode::OK => Reconciled::Applied,
                StatusCode::NOT_FOUND => Reconciled::NotApplied,
                _ => Reconciled::Unknown,
            })
        }
    }
}

/// The client: a correlation id in `X-Reference` (the API stores it but
/// does not deduplicate on it), retries with `layer`.
fn email_client(
    layer: RetryLayer,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(
            IdempotencyKeyLayer::new()
                .header(REFERENCE)
                .correlation_only(),
        )
        .layer(layer)
        .service(common::client::<ReplayBody<Full<Bytes>>>() as SendClient)
}

fn email(api: &EmailApi) -> Request<Full<Bytes>> {
    Request::post(api.url("/emails"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"to\":\"ada@example.com\"}",
        )))
        .unwrap()
}

fn reference_of(response: &Response<Incoming>) -> String {
    response
        .extensions()
        .get::<tower_reissue::IdempotencyKey>()
        .expect("the key layer keys the request")
        .as_str()
        .to_owned()
}

/// (reason, correlation id) of each give-up.
type GiveUps = Arc<Mutex<Vec<(GiveUpReason, Option<String>)>>>;

/// Each give-up, and each probe's answer.
#[derive(Clone, Default)]
struct Log {
    gave_up: GiveUps,
    answers: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn hook(&self, layer: RetryLayer) -> RetryLayer {
        let (gave_up, answers) = (self.gave_up.clone(), self.answers.clone());
        layer
            .on_give_up(move |event| {
                let id = event.request.idempotency_key().map(str::to_owned);
                gave_up.lock().unwrap().push((event.reason, id));
            })
            .on_reconcile(move |event| {
                let answer = match event.answer {
                    Ok(answer) => answer.to_string(),
                    Err(error) => format!("error: {error}"),
                };
                answers.lock().unwrap().push(answer);
            })
    }

    fn reasons(&self) -> Vec<GiveUpReason> {
        self.gave_up
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| *r)
            .collect()
    }

    fn probes(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    fn answers(&self) -> Vec<String> {
        self.answers.lock().unwrap().clone()
    }
}

fn no_retry_lookups() -> RetryLayer {
    RetryLayer::new().max_attempts(1)
}

/// Up to 5 attempts, each ambiguous one looked up once, logged.
fn reconciling(api: &EmailApi) -> (RetryLayer, Log) {
    let log = Log::default();
    let layer = RetryLayer::new()
        .max_attempts(5)
        .reconcile(lookup(api.url(""), no_retry_lookups()));
    (log.hook(layer), log)
}

#[tokio::test(start_paused = true)]
async fn sent_then_500_is_reconciled_as_applied_and_not_sent_again() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorAfter,
        _ => Fault::None,
    })
    .await;
    let (layer, log) = reconciling(&api);

    let response = email_client(layer).oneshot(email(&api)).await.unwrap();

    // The caller sees the 500 the API sent, marked as having taken effect.
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.extensions().get::<Reconciliation>(),
        Some(&Reconciliation::Applied)
    );
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(api.effects(&reference_of(&response)), 1);
    assert_eq!(api.sends(), 1, "no second POST");
    assert_eq!(api.lookups(), 1);
    assert_eq!(log.probes(), 1);
    assert!(log.reasons().is_empty(), "an applied request is no failure");
}

#[tokio::test(start_paused = true)]
async fn not_sent_500_is_reconciled_as_not_applied_and_retried_once() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorBefore,
        _ => Fault::None,
    })
    .await;
    let (layer, log) = reconciling(&api);

    let response = email_client(layer).oneshot(email(&api)).await.unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.extensions().get::<Reconciliation>(), None);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(
        api.effects(&reference_of(&response)),
        1,
        "exactly one email"
    );
    assert_eq!(api.total_effects(), 1);
    assert_eq!(api.sends(), 2);
    assert_eq!(log.probes(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_connection_after_the_send_ends_in_an_applied_error() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::HangupAfter,
        _ => Fault::None,
    })
    .await;
    let layer = RetryLayer::new()
        .max_attempts(5)
        .reconcile(lookup(api.url(""), no_retry_lookups()));

    let error = email_client(layer).oneshot(email(&api)).await.unwrap_err();

    assert!(
        error.downcast_ref::<AppliedResponseLost>().is_some(),
        "{error}"
    );
    assert_eq!(api.total_effects(), 1);
    assert_eq!(api.sends(), 1);
}

/// The reconciler sees the request as it was sent.
#[tokio::test(start_paused = true)]
async fn the_reconciler_sees_the_request_and_its_last_outcome() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorAfter,
        _ => Fault::None,
    })
    .await;
    let seen: Arc<Mutex<Option<ReconcileRequest>>> = Arc::default();
    let sink = seen.clone();
    let layer = RetryLayer::new().reconcile(move |request: ReconcileRequest| {
        *sink.lock().unwrap() = Some(request);
        async { Reconciled::Applied }
    });

    let response = email_client(layer).oneshot(email(&api)).await.unwrap();

    let request = seen.lock().unwrap().take().expect("the reconciler ran");
    assert_eq!(request.method(), Method::POST);
    assert_eq!(request.uri().path(), "/emails");
    assert_eq!(
        request.body().map(|b| &b[..]),
        Some(&b"{\"to\":\"ada@example.com\"}"[..])
    );
    assert_eq!(request.attempt(), 1);
    assert_eq!(
        request.last_status(),
        Some(StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(request.correlation_id(), Some(&*reference_of(&response)));
    assert_eq!(
        request.headers().get(&REFERENCE).unwrap(),
        &*reference_of(&response)
    );
}

/// Sends one ambiguous email through `reconciler` and checks that nothing
/// is guessed: no second POST, give-up reason `Unreconciled`.
async fn assert_unreconciled(api: &EmailApi, layer: RetryLayer) -> Log {
    let log = Log::default();
    let layer = log.hook(layer.max_attempts(5));
    let response = email_client(layer).oneshot(email(api)).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.extensions().get::<Reconciliation>(), None);
    assert_eq!(api.sends(), 1, "no retry without an answer");
    assert!(api.total_effects() <= 1);
    assert_eq!(log.reasons(), [GiveUpReason::Unreconciled]);
    assert_eq!(log.probes(), 1);
    log
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_is_unreconciled() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorAfter,
        (Route::Lookup, _) => Fault::HangupAfter,
        _ => Fault::None,
    })
    .await;
    let layer = RetryLayer::new().reconcile(lookup(api.url(""), no_retry_lookups()));
    let log = assert_unreconciled(&api, layer).await;
    assert_eq!(api.lookups(), 1);
    assert!(
        log.answers()[0].starts_with("error: "),
        "{:?}",
        log.answers()
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_answering_unknown_is_unreconciled() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorBefore,
        // The lookup endpoint is down too: 503, and no retries of it.
        (Route::Lookup, _) => Fault::Unavailable,
        _ => Fault::None,
    })
    .await;
    let layer = RetryLayer::new().reconcile(lookup(api.url(""), no_retry_lookups()));
    let log = assert_unreconciled(&api, layer).await;
    assert_eq!(log.answers(), ["unknown"]);
    assert_eq!(api.total_effects(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_does_not_answer_in_time_is_unreconciled() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorAfter,
        _ => Fault::None,
    })
    .await;
    let layer = RetryLayer::new()
        .reconcile_timeout(Duration::from_secs(3))
        .reconcile(|_request: ReconcileRequest| std::future::pending::<Reconciled>());
    let started = tokio::time::Instant::now();
    let log = assert_unreconciled(&api, layer).await;
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(log.answers(), [format!("error: {ReconcileTimedOut}")]);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_probe() {
    let api = EmailApi::start(|route, n| match (route, n) {
        (Route::Send, 1) => Fault::ErrorAfter,
        _ => Fault::None,
    })
    .await;
    let layer = RetryLayer::new()
        .deadline(Duration::from_secs(5))
        .reconcile(|_request: ReconcileRequest| std::future::pending::<Reconciled>());
    let started = tokio::time::Instant::now();
    assert_unreconciled(&api, layer).await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_paid_from_the_budget() {
    let api = EmailApi::start(|route, _| match route {
        Route::Send => Fault::ErrorBefore,
        Route::Lookup => Fault::None,
    })
    .await;
    // One withdrawal per request: room for three with the email's own.
    let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    budget.deposit();
    budget.deposit();
    let log = Log::default();
    let layer = log.hook(
        RetryLayer::new()
            .max_attempts(10)
            .budget(budget.clone())
            .reconcile(lookup(api.url(""), no_retry_lookups())),
    );

    email_client(layer).oneshot(email(&api)).await.unwrap();

    // Each 500 costs a probe and each NotApplied a retry, both from the
    // budget, until it refuses one.
    assert_eq!(budget.available(), 0);
    assert_eq!((log.probes(), api.sends()), (2, 2), "probe, retry, probe");
    assert_eq!(log.reasons(), [GiveUpReason::BudgetExhausted]);
    assert_eq!(api.total_effects(), 0);
}

/// A request the layer may repeat anyway never reaches the reconciler.
#[tokio::test(start_paused = true)]
async fn the_reconciler_is_not_asked_about_requests_safe_to_repeat() {
    let server = TestServer::start(|n, seen| async move {
        // Every first attempt of a request fails; 429 for the "429" path.
        if n % 2 == 1 {
            if seen.path == "/throttled" {
                Reply::with_header(429, "retry-after", "1")
            } else {
                Reply::status(500)
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let layer = RetryLayer::new().reconcile(move |_request: ReconcileRequest| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Reconciled::Unknown }
    });
    let keyed = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(layer.clone())
        .service(common::client::<ReplayBody<Full<Bytes>>>() as SendClient);
    let plain = layer.layer(common::client::<ReplayBody<Full<Bytes>>>() as SendClient);
    let request = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(server.url(path))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };

    let cases = [
        (
            "GET",
            plain.clone().oneshot(request(Method::GET, "/a")).await,
        ),
        (
            "PUT",
            plain.clone().oneshot(request(Method::PUT, "/b")).await,
        ),
        (
            "keyed POST",
            keyed.clone().oneshot(request(Method::POST, "/c")).await,
        ),
        (
            "processed-No POST",
            plain
                .clone()
                .oneshot(request(Method::POST, "/throttled"))
                .await,
        ),
    ];
    for (case, response) in cases {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{case}");
        assert_eq!(
            response.extensions().get::<Attempts>(),
            Some(&Attempts(2)),
            "{case} was retried"
        );
    }
    assert_eq!(server.count(), 8);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// `PUT` with `If-Match`: the first attempt updates the document and the
/// connection drops; the retry fails its precondition, which proves the
/// first took effect.
#[tokio::test(start_paused = true)]
async fn if_match_put_412_after_a_drop_is_applied() {
    let version = Arc::new(Mutex::new(1u32));
    let updates = Arc::new(AtomicUsize::new(0));
    let (doc, count) = (version.clone(), updates.clone());
    let server = TestServer::start(move |n, seen| {
        let (doc, count) = (doc.clone(), count.clone());
        async move {
            let mut version = doc.lock().unwrap();
            let current = format!("\"v{version}\"");
            if seen.headers.get(IF_MATCH).is_none_or(|v| v != &*current) {
                return Reply::status(412);
            }
            *version += 1;
            count.fetch_add(1, Ordering::SeqCst);
            if n == 1 {
                return Reply::Hangup;
            }
            Reply::with_header(200, ETAG.as_str(), &format!("\"v{version}\""))
        }
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let layer = RetryLayer::new().reconcile(move |_request: ReconcileRequest| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Reconciled::Unknown }
    });
    let request = Request::put(server.url("/documents/1"))
        .header(IF_MATCH, "\"v1\"")
        .body(Full::new(Bytes::from_static(b"{\"title\":\"new\"}")))
        .unwrap();

    let response = layer
        .layer(common::client::<ReplayBody<Full<Bytes>>>() as SendClient)
        .oneshot(request)
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        response.extensions().get::<Reconciliation>(),
        Some(&Reconciliation::Applied)
    );
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(updates.load(Ordering::SeqCst), 1);
    assert_eq!(server.count(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "it proves itself");
}

/// A conditional POST is safe to repeat; a 412 on its first attempt is the
/// caller's plain failure.
#[tokio::test(start_paused = true)]
async fn a_conditional_post_is_retried_and_a_first_412_is_a_plain_failure() {
    let server = TestServer::start(|n, _| async move {
        match n {
            1 => Reply::status(500),
            2 => Reply::status(201),
            _ => Reply::status(412),
        }
    })
    .await;
    let client = RetryLayer::new().layer(common::client::<ReplayBody<Full<Bytes>>>() as SendClient);
    let create = || {
        Request::post(server.url("/users/ada"))
            .header("if-none-match", "*")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let created = client.clone().oneshot(create()).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.extensions().get::<Attempts>(), Some(&Attempts(2)));

    let exists = client.oneshot(create()).await.unwrap();
    assert_eq!(exists.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(exists.extensions().get::<Reconciliation>(), None);
}

/// The incident: 90% of sends and lookups fail (500 before and after the
/// email went out, drops after it, 429/503).
fn incident(seed: u64) -> impl Fn(Route, usize) -> Fault + Send + Sync + 'static {
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    move |_route, _n| {
        let mut rng = rng.lock().unwrap();
        if !rng.random_bool(0.9) {
            return Fault::None;
        }
        match rng.random_range(0..100) {
            0..40 => Fault::ErrorAfter,
            40..60 => Fault::ErrorBefore,
            60..70 => Fault::HangupAfter,
            70..85 => Fault::Unavailable,
            _ => Fault::Throttled,
        }
    }
}

/// What happened to each of `ops` emails sent through `layer` at `api`.
struct Run {
    ops: usize,
    /// The caller was told it was sent (2xx, or reconciled as applied).
    told_sent: Vec<String>,
    /// Give-ups with their reason, per correlation id.
    gave_up: HashMap<String, GiveUpReason>,
    attempts: usize,
    probes: usize,
    lookups: usize,
    lost: usize,
}

async fn run_incident(api: &EmailApi, layer: RetryLayer, ops: usize) -> Run {
    let log = Log::default();
    let client = email_client(log.hook(layer));
    let told_sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    // A bounded number in flight, like a worker pool: keeps the number of
    // loopback connections sane.
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    for _ in 0..ops {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, request) = (client.clone(), email(api));
        let (told_sent, answered) = (told_sent.clone(), answered.clone());
        tasks.spawn(async move {
            let result = client.oneshot(request).await;
            answered.fetch_add(1, Ordering::SeqCst);
            match result {
                Ok(response)
                    if response.status().is_success()
                        || response.extensions().get::<Reconciliation>().is_some() =>
                {
                    told_sent.lock().unwrap().push(reference_of(&response));
                }
                Ok(_) => {}
                Err(error) => {
                    // The reference of a request whose response was lost is
                    // in the give-up log only when it was not applied.
                    if error.downcast_ref::<AppliedResponseLost>().is_some() {
                        told_sent.lock().unwrap().push(String::new());
                    }
                }
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(answered.load(Ordering::SeqCst), ops, "every call answered");
    let gave_up: HashMap<String, GiveUpReason> = log
        .gave_up
        .lock()
        .unwrap()
        .iter()
        .map(|(reason, id)| (id.clone().expect("every email has a reference"), *reason))
        .collect();
    let sent = api.state.sent.lock().unwrap();
    let lost = ops - sent.len();
    let told_sent = std::mem::take(&mut *told_sent.lock().unwrap());
    Run {
        ops,
        told_sent,
        gave_up,
        attempts: api.sends(),
        probes: log.probes(),
        lookups: api.lookups(),
        lost,
    }
}

impl Run {
    fn report(&self, label: &str) {
        let per_op = |n: usize| n as f64 / self.ops as f64;
        println!(
            "{label}: {} ops, attempts/op {:.2}, probes/op {:.2}, lookups/op {:.2}, lost {} ({:.2}%), given up {}",
            self.ops,
            per_op(self.attempts),
            per_op(self.probes),
            per_op(self.lookups),
            self.lost,
            100.0 * per_op(self.lost),
            self.gave_up.len(),
        );
    }

    /// Nothing the caller was told is false, and nothing vanished.
    fn assert_truthful(&self, api: &EmailApi) {
        assert_eq!(api.duplicates(), 0, "no email sent twice");
        for reference in self.told_sent.iter().filter(|r| !r.is_empty()) {
            assert_eq!(api.effects(reference), 1, "told sent, so sent");
        }
        let sent = api.state.sent.lock().unwrap();
        assert_eq!(
            self.told_sent.len() + self.gave_up.len(),
            self.ops,
            "every email is either reported sent or given up with a reason"
        );
        for reference in sent.keys() {
            assert!(!reference.is_empty(), "every email carried its reference");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_keyless_emails_in_an_incident_without_a_budget() {
    let api = EmailApi::start(incident(11)).await;
    let lookups = RetryLayer::new()
        .no_budget()
        .max_attempts(60)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ));
    let layer = RetryLayer::new()
        .no_budget()
        .max_attempts(30)
        .reconcile(lookup(api.url(""), lookups));

    let run = run_incident(&api, layer, 10_000).await;

    run.report("no budget");
    run.assert_truthful(&api);
    assert!(run.lost * 100 <= run.ops, "at most 1% never sent");
    assert!(run.probes > 0);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_keyless_emails_in_an_incident_with_the_default_budget() {
    let api = EmailApi::start(incident(12)).await;
    let layer = RetryLayer::new()
        .max_attempts(30)
        .reconcile(lookup(api.url(""), RetryLayer::new().max_attempts(10)));

    let run = run_incident(&api, layer, 10_000).await;

    run.report("default budget");
    run.assert_truthful(&api);
    assert!(
        run.gave_up
            .values()
            .any(|r| *r == GiveUpReason::BudgetExhausted),
        "the budget held the load down"
    );
}

/// An email with a reference of the caller's, asking the reconciler before
/// it is sent.
fn checked_email(api: &EmailApi, reference: &str) -> Request<Full<Bytes>> {
    let mut request = email(api);
    request
        .headers_mut()
        .insert(REFERENCE, reference.parse().unwrap());
    request.extensions_mut().insert(ReconcileFirst);
    request
}

#[tokio::test(start_paused = true)]
async fn a_request_checked_first_is_not_sent_when_an_earlier_send_took_effect() {
    let api = EmailApi::start(|_, _| Fault::None).await;
    let (layer, log) = reconciling(&api);
    let client = email_client(layer);
    // The first run sent it (and, say, crashed before recording that).
    let mut first = email(&api);
    first
        .headers_mut()
        .insert(REFERENCE, "run-1".parse().unwrap());
    client.clone().oneshot(first).await.unwrap();
    assert_eq!(api.sends(), 1);

    // The second run asks before sending: the API has it.
    let error = client
        .oneshot(checked_email(&api, "run-1"))
        .await
        .unwrap_err();

    assert!(error.is::<AlreadyApplied>(), "{error}");
    assert_eq!(api.sends(), 1, "not sent again");
    assert_eq!(api.effects("run-1"), 1);
    assert_eq!(api.lookups(), 1);
    assert_eq!(log.answers(), ["applied"]);
    assert!(log.reasons().is_empty(), "an applied request is no failure");
}

#[tokio::test(start_paused = true)]
async fn a_request_checked_first_is_sent_once_when_no_earlier_send_took_effect() {
    let api = EmailApi::start(|_, _| Fault::None).await;
    let (layer, log) = reconciling(&api);

    let response = email_client(layer)
        .oneshot(checked_email(&api, "run-2"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(api.lookups(), 1, "asked first");
    assert_eq!(api.sends(), 1);
    assert_eq!(api.effects("run-2"), 1);
    assert_eq!(log.answers(), ["not applied"]);
}

#[tokio::test(start_paused = true)]
async fn a_request_checked_first_is_not_sent_when_nobody_can_tell() {
    let api = EmailApi::start(|route, _| match route {
        Route::Lookup => Fault::Unavailable,
        Route::Send => Fault::None,
    })
    .await;
    let (layer, log) = reconciling(&api);

    let error = email_client(layer)
        .oneshot(checked_email(&api, "run-3"))
        .await
        .unwrap_err();

    assert!(error.is::<NotSent>(), "{error}");
    assert_eq!(api.sends(), 0, "never guess");
    assert_eq!(log.answers(), ["unknown"]);
    assert_eq!(
        log.gave_up.lock().unwrap().clone(),
        [(GiveUpReason::Unreconciled, Some("run-3".to_owned()))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_check_first_is_paid_from_the_budget() {
    let api = EmailApi::start(|_, _| Fault::None).await;
    let log = Log::default();
    // No floor and no deposits but the request's own: 0.5 of a retry.
    let budget = RetryBudget::builder().ratio(0.5).min_per_sec(0).build();
    let layer = log.hook(
        RetryLayer::new()
            .budget(budget)
            .reconcile(lookup(api.url(""), no_retry_lookups())),
    );

    let error = email_client(layer)
        .oneshot(checked_email(&api, "run-4"))
        .await
        .unwrap_err();

    assert!(error.is::<NotSent>(), "{error}");
    assert_eq!((api.lookups(), api.sends()), (0, 0));
    assert_eq!(log.reasons(), [GiveUpReason::BudgetExhausted]);
}

#[tokio::test(start_paused = true)]
async fn check_first_without_a_reconciler_sends_as_usual() {
    let api = EmailApi::start(|_, _| Fault::None).await;
    let response = email_client(RetryLayer::new())
        .oneshot(checked_email(&api, "run-5"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!((api.lookups(), api.sends()), (0, 1));
}
