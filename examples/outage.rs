//! The outage demo: one workload, three clients, one flaky third-party API.
//!
//! A simulated API with `/emails` and `/payments` runs on loopback behind
//! `IdempotencyLayer`, counting every real side effect. Its failure profile is
//! the one teams meet in practice, compressed in time: a normal phase where
//! 0.1% of calls fail with a 500, then an incident where 90% fail (500s
//! returned *after* the email went out, 500s before, dropped connections,
//! 429/503 with `Retry-After`), then recovery.
//!
//! The same operations go through three clients:
//! - no retries;
//! - a naive loop: 10 attempts, fixed delay, every 5xx retried, a new request
//!   each time;
//! - tower-reissue: `IdempotencyKeyLayer` + `RetryLayer` with a budget;
//!   operations it gives up on are parked in a `SqliteQueue` (a file under
//!   `target/`) with their key and body, and a `Replayer` sends them again
//!   once the API has recovered.
//!
//! With `--hard-outage SECS`, the incident is followed by SECS seconds where
//! the API answers 503 to everything, and a fourth client joins: the same
//! tower-reissue stack with a `CircuitBreakerLayer` under the retry layer.
//! `--json` prints one JSON object per client instead of the table.
//!
//! Run: `cargo run --example outage` (add `-- --help` for the knobs).

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};
use tower_reissue::dead_letter::{DeadLetterQueue, Replayer, SqliteQueue};
use tower_reissue::reconcile::{
    AppliedResponseLost, Reconcile, ReconcileRequest, Reconciled, Reconciliation,
};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{
    Attempts, Backoff, IdempotencyKey, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore,
    ReplayBody, RetryBudget, RetryLayer,
};

#[derive(Parser, Debug, Clone)]
#[command(about = "Three clients against a flaky API: no retries, a naive loop, tower-reissue")]
struct Args {
    /// Logical operations each client performs (half emails, half payments).
    #[arg(long, default_value_t = 1500)]
    ops: usize,
    /// Seconds the workload is spread over: a quarter normal, half incident,
    /// a quarter recovery.
    #[arg(long, default_value_t = 24.0)]
    duration: f64,
    /// Share of calls that fail outside the incident.
    #[arg(long, default_value_t = 0.001)]
    normal_failure_rate: f64,
    /// Share of calls that fail during the incident.
    #[arg(long, default_value_t = 0.9)]
    incident_failure_rate: f64,
    /// Seed of the API's failure draws.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to write the attempts-per-second chart.
    #[arg(long, default_value = "target/outage.svg")]
    svg: PathBuf,
    /// The SQLite file of tower-reissue's dead-letter queue (started afresh;
    /// the breaker client of `--hard-outage` uses a second file beside it).
    #[arg(long, default_value = "target/outage-dead-letters.sqlite")]
    dead_letters: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Seconds of hard outage (503 to everything) after the incident, with
    /// a fourth client that has a circuit breaker. The workload is spread
    /// over `--duration` plus these seconds.
    #[arg(long, default_value_t = 0.0)]
    hard_outage: f64,
    /// The API ignores `Idempotency-Key` (no `IdempotencyLayer`) but can be
    /// asked `GET /emails?reference=…`; adds a "tower-reissue + reconcile"
    /// client that asks before repeating an ambiguous call.
    #[arg(long)]
    api_without_keys: bool,
    /// One JSON object per client on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// After the run, serve the dead-letter admin page on this address (for
    /// example 127.0.0.1:8080) until Ctrl-C; needs `--features admin`.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
}

impl Args {
    /// The whole timeline: normal, incident, hard outage, recovery.
    fn total(&self) -> f64 {
        self.duration + self.hard_outage
    }

    /// When the hard outage starts and ends, in seconds from the start.
    fn hard_window(&self) -> (f64, f64) {
        let from = self.duration * 0.75;
        (from, from + self.hard_outage)
    }
}

// ---------------------------------------------------------------------------
// The flaky third-party API
// ---------------------------------------------------------------------------

/// What the API does to one attempt.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// 500 before the handler runs: nothing happened.
    ErrorBefore,
    /// The handler runs (the email goes out), then a 500 comes back.
    ErrorAfter,
    /// The handler runs, then the connection drops without an answer.
    HangupAfter,
    /// 429 with `Retry-After`, before any work.
    Throttled,
    /// 503 with `Retry-After`, before any work.
    Unavailable,
    /// The hard outage: 503 without `Retry-After`, before any work.
    Down,
}

struct Api {
    args: Args,
    start: Instant,
    rng: Mutex<StdRng>,
    /// Side effects per operation id.
    effects: Mutex<HashMap<u64, u32>>,
    /// The `X-Reference` each operation was sent with, as the API stores it.
    references: Mutex<HashMap<String, u64>>,
    /// Attempts received per 250 ms bucket, for the chart.
    attempts: Mutex<Vec<u32>>,
    /// When each attempt of the hard outage arrived, from the start.
    hard_attempts: Mutex<Vec<Duration>>,
    /// The first attempt answered 2xx after the hard outage, from its end.
    recovered_after: Mutex<Option<Duration>>,
}

const BUCKET: Duration = Duration::from_millis(250);

impl Api {
    fn in_incident(&self) -> bool {
        let t = self.start.elapsed().as_secs_f64() / self.args.duration;
        (0.25..0.75).contains(&t)
    }

    fn in_hard_outage(&self) -> bool {
        let (from, to) = self.args.hard_window();
        (from..to).contains(&self.start.elapsed().as_secs_f64())
    }

    /// Seconds past the end of the hard outage, if it is over.
    fn after_hard_outage(&self) -> Option<Duration> {
        let (_, to) = self.args.hard_window();
        self.start
            .elapsed()
            .checked_sub(Duration::from_secs_f64(to))
    }

    fn draw(&self) -> Fault {
        if self.in_hard_outage() {
            return Fault::Down;
        }
        let mut rng = self.rng.lock().unwrap();
        if self.in_incident() {
            if !rng.random_bool(self.args.incident_failure_rate.clamp(0.0, 1.0)) {
                return Fault::None;
            }
            match rng.random_range(0..100) {
                0..40 => Fault::ErrorAfter,
                40..60 => Fault::ErrorBefore,
                60..70 => Fault::HangupAfter,
                70..85 => Fault::Unavailable,
                _ => Fault::Throttled,
            }
        } else if rng.random_bool(self.args.normal_failure_rate.clamp(0.0, 1.0)) {
            if rng.random_bool(0.5) {
                Fault::ErrorAfter
            } else {
                Fault::ErrorBefore
            }
        } else {
            Fault::None
        }
    }

    fn count_attempt(&self) {
        let bucket = (self.start.elapsed().as_millis() / BUCKET.as_millis()) as usize;
        let mut attempts = self.attempts.lock().unwrap();
        if attempts.len() <= bucket {
            attempts.resize(bucket + 1, 0);
        }
        attempts[bucket] += 1;
        if self.in_hard_outage() {
            self.hard_attempts
                .lock()
                .unwrap()
                .push(self.start.elapsed());
        }
    }

    fn answered(&self, status: StatusCode) {
        if !status.is_success() || self.args.hard_outage <= 0.0 {
            return;
        }
        if let Some(after) = self.after_hard_outage() {
            self.recovered_after.lock().unwrap().get_or_insert(after);
        }
    }

    /// Attempts received over the whole run.
    fn received(&self) -> u64 {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .map(|&n| u64::from(n))
            .sum()
    }

    fn duplicates(&self) -> u64 {
        self.effects
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    fn executed(&self, op: u64) -> bool {
        self.effects
            .lock()
            .unwrap()
            .get(&op)
            .is_some_and(|&n| n > 0)
    }
}

fn op_id(headers: &http::HeaderMap) -> Option<u64> {
    headers.get("x-op-id")?.to_str().ok()?.parse().ok()
}

/// The API's own handler: performs the side effect (sends the email,
/// captures the payment) and answers 201.
async fn perform(api: Arc<Api>, request: Request<axum::body::Body>) -> Response<axum::body::Body> {
    let Some(op) = op_id(request.headers()) else {
        return Response::builder()
            .status(400)
            .body("missing x-op-id".into())
            .unwrap();
    };
    *api.effects.lock().unwrap().entry(op).or_default() += 1;
    if let Some(reference) = request
        .headers()
        .get(REFERENCE)
        .and_then(|v| v.to_str().ok())
    {
        api.references
            .lock()
            .unwrap()
            .insert(reference.to_owned(), op);
    }
    Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(format!("{{\"op\":{op},\"status\":\"done\"}}").into())
        .unwrap()
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the simulated API")
    }
}
impl std::error::Error for Dropped {}

/// Starts one instance of the API; faults are injected in front of the
/// idempotency layer, the way a gateway in front of a real API fails.
async fn start_api(args: &Args, salt: u64, start: Instant) -> (SocketAddr, Arc<Api>) {
    let api = Arc::new(Api {
        args: args.clone(),
        start,
        rng: Mutex::new(StdRng::seed_from_u64(args.seed ^ salt)),
        effects: Mutex::default(),
        references: Mutex::default(),
        attempts: Mutex::default(),
        hard_attempts: Mutex::default(),
        recovered_after: Mutex::default(),
    });
    let handler_api = api.clone();
    let app = axum::Router::new()
        .route(
            "/emails",
            axum::routing::post({
                let api = handler_api.clone();
                move |req| perform(api.clone(), req)
            }),
        )
        .route(
            "/payments",
            axum::routing::post({
                let api = handler_api.clone();
                move |req| perform(api.clone(), req)
            }),
        );
    let app = if args.api_without_keys {
        with_lookups(app, handler_api)
    } else {
        app.layer(IdempotencyLayer::new(MemoryStore::new()))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_api = api.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let api = server_api.clone();
            let app = app.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                let app = app.clone();
                async move {
                    api.count_attempt();
                    let fault = api.draw();
                    let retry_after = |status: u16| {
                        Response::builder()
                            .status(status)
                            .header("retry-after", "1")
                            .body(axum::body::Body::empty())
                            .unwrap()
                    };
                    match fault {
                        Fault::ErrorBefore => return Ok(status(500)),
                        Fault::Throttled => return Ok(retry_after(429)),
                        Fault::Unavailable => return Ok(retry_after(503)),
                        Fault::Down => return Ok(status(503)),
                        _ => {}
                    }
                    let response = app
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e| match e {});
                    // Read the body so the idempotency layer finishes storing.
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    match fault {
                        Fault::ErrorAfter => Ok(status(500)),
                        Fault::HangupAfter => Err(std::io::Error::other(Dropped)),
                        _ => {
                            api.answered(parts.status);
                            Ok(Response::from_parts(parts, axum::body::Body::from(body)))
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, api)
}

fn status(code: u16) -> Response<axum::body::Body> {
    Response::builder()
        .status(code)
        .body(axum::body::Body::empty())
        .unwrap()
}

// ---------------------------------------------------------------------------
// The three clients
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    NoRetry,
    Naive,
    Reissue,
    /// The same stack with a circuit breaker under the retry layer.
    Breaker,
    /// An API without key support: ambiguous failures are looked up.
    Reconcile,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::NoRetry => "no retries",
            Kind::Naive => "naive loop (10x, fixed delay)",
            Kind::Reissue => "tower-reissue",
            Kind::Breaker => "tower-reissue + breaker",
            Kind::Reconcile => "tower-reissue + reconcile",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Kind::NoRetry => "#7f7f7f",
            Kind::Naive => "#d62728",
            Kind::Reissue => "#1f77b4",
            Kind::Breaker => "#2ca02c",
            Kind::Reconcile => "#9467bd",
        }
    }
}

/// The retry settings of both tower-reissue clients.
fn reissue_retries() -> RetryLayer {
    RetryLayer::new()
        .max_attempts(10)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .budget(RetryBudget::new(0.2))
}

fn op_request(addr: SocketAddr, op: u64) -> Request<Full<Bytes>> {
    let path = if op % 2 == 0 { "emails" } else { "payments" };
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/{path}"))
        .header("x-op-id", op.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"op\":{op},\"amount\":100}}"
        ))))
        .unwrap()
}

/// What one client saw.
#[derive(Default)]
struct Outcomes {
    succeeded: u64,
    failed: u64,
    latencies: Vec<Duration>,
    /// Give-ups the retry layer parked in the dead-letter queue.
    parked: u64,
    attempts: u64,
    /// When the breaker opened, from the start (breaker client only).
    opened: Vec<Duration>,
    /// Attempts the API received from this client before any replay.
    received: u64,
    /// Reconcile probes made (reconcile client only).
    probes: u64,
    /// What the reconcile client gave up on: (operation, reference).
    unreconciled: Vec<(u64, String)>,
}

type BoxError = tower_reissue::BoxError;

async fn naive_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    op: u64,
) -> (bool, u64) {
    let mut attempts = 0;
    for _ in 0..10 {
        attempts += 1;
        match client.request(op_request(addr, op)).await {
            Ok(response) if response.status().is_success() => return (true, attempts),
            Ok(response) if response.status().is_client_error() && response.status() != 429 => {
                return (false, attempts);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    (false, attempts)
}

async fn run_client(
    kind: Kind,
    args: Args,
    addr: SocketAddr,
    start: Instant,
    bar: ProgressBar,
    queue: SqliteQueue,
) -> Outcomes {
    let plain: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let parked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = parked.clone();
    let opened: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let breaker = (kind == Kind::Breaker).then(|| demo_breaker(start, opened.clone()));
    // An API that ignores keys gets none: they would make the layer repeat
    // calls the API does not deduplicate.
    let reissue = ServiceBuilder::new()
        .option_layer((!args.api_without_keys).then(IdempotencyKeyLayer::new))
        .layer(
            reissue_retries()
                // Parked with key and body, to replay once the API is back.
                .dead_letters(queue)
                .on_give_up(move |event| {
                    if event.reason != GiveUpReason::Permanent {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }),
        )
        .option_layer(breaker)
        // One error type with or without the breaker.
        .map_err(boxed)
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    let probes: Arc<AtomicU64> = Arc::default();
    let unreconciled: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let reconciling = reconciling_client(addr, unreconciled.clone(), probes.clone());
    let results: Arc<Mutex<Outcomes>> = Arc::default();
    let mut tasks = Vec::with_capacity(args.ops);
    let spacing = Duration::from_secs_f64(args.total() / args.ops as f64);
    for op in 0..args.ops as u64 {
        tokio::time::sleep_until(start + spacing * op as u32).await;
        let (plain, reissue, results, bar) =
            (plain.clone(), reissue.clone(), results.clone(), bar.clone());
        let reconciling = reconciling.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let (ok, attempts) = match kind {
                Kind::NoRetry => (
                    matches!(plain.request(op_request(addr, op)).await, Ok(r) if r.status().is_success()),
                    1,
                ),
                Kind::Naive => naive_call(&plain, addr, op).await,
                Kind::Reconcile => reconciled_call(reconciling, op_request(addr, op)).await,
                Kind::Reissue | Kind::Breaker => {
                    let result: Result<Response<Incoming>, BoxError> = reissue.oneshot(op_request(addr, op)).await;
                    match result {
                        Ok(r) => {
                            let attempts = r.extensions().get::<Attempts>().map_or(1, |a| u64::from(a.get()));
                            (r.status().is_success(), attempts)
                        }
                        Err(_) => (false, 0),
                    }
                }
            };
            let mut results = results.lock().unwrap();
            results.latencies.push(began.elapsed());
            results.attempts += attempts;
            if ok { results.succeeded += 1 } else { results.failed += 1 }
            bar.set_message(format!("ok {:>5}  failed {:>5}", results.succeeded, results.failed));
            bar.inc(1);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    bar.finish();
    let mut outcomes = std::mem::take(&mut *results.lock().unwrap());
    outcomes.parked = parked.load(std::sync::atomic::Ordering::Relaxed);
    outcomes.opened = std::mem::take(&mut *opened.lock().unwrap());
    outcomes.probes = probes.load(Ordering::Relaxed);
    outcomes.unreconciled = std::mem::take(&mut *unreconciled.lock().unwrap());
    outcomes
}

fn boxed(error: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(error)
}

/// The breaker of the demo, on the demo's compressed time scale (a second
/// here stands for minutes of a real incident): opens at half the calls
/// failing over 5 s, breaks for 1 s, then 2 s after a failed probe.
fn demo_breaker(start: Instant, opened: Arc<Mutex<Vec<Duration>>>) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .failure_ratio(0.5)
        .min_throughput(20)
        .window(Duration::from_secs(5))
        .break_duration(DEMO_BREAK)
        .max_break_duration(DEMO_MAX_BREAK)
        .on_state_change(move |change| {
            if change.to == BreakerState::Open {
                opened.lock().unwrap().push(start.elapsed());
            }
        })
        .build()
}

const DEMO_BREAK: Duration = Duration::from_secs(1);
const DEMO_MAX_BREAK: Duration = Duration::from_secs(2);

/// What the hard outage did to one client.
struct HardOutage {
    /// Attempts that reached the API during the hard outage.
    attempts: u64,
    /// Of those, the ones after the breaker had opened (breaker client).
    after_open: Option<u64>,
    /// Longest breaks the time after opening spans: the probe budget.
    break_intervals: Option<u64>,
    /// From the end of the hard outage to the first 2xx.
    recovered_after: Option<Duration>,
}

fn hard_outage(args: &Args, api: &Api, outcome: &Outcomes, kind: Kind) -> HardOutage {
    let hard = api.hard_attempts.lock().unwrap();
    let (from, to) = args.hard_window();
    let (from, to) = (Duration::from_secs_f64(from), Duration::from_secs_f64(to));
    // The breaker is open from its last opening before the outage (it may
    // still be open from the incident) or its first opening within it.
    let opened_at = (kind == Kind::Breaker)
        .then(|| {
            let before = outcome.opened.iter().rev().find(|t| **t <= from);
            let within = outcome.opened.iter().find(|t| **t > from && **t < to);
            before.map(|_| from).or(within.copied())
        })
        .flatten();
    HardOutage {
        attempts: hard.len() as u64,
        after_open: opened_at.map(|at| hard.iter().filter(|t| **t > at).count() as u64),
        break_intervals: opened_at.map(|at| {
            (to - at)
                .as_secs_f64()
                .div_euclid(DEMO_MAX_BREAK.as_secs_f64()) as u64
                + 1
        }),
        recovered_after: *api.recovered_after.lock().unwrap(),
    }
}

/// One client's figures, as `--json` prints them.
fn client_json(
    kind: Kind,
    args: &Args,
    api: &Api,
    outcome: &Outcomes,
    lost: usize,
) -> serde_json::Value {
    let received = outcome.received;
    let mut json = serde_json::json!({
        "client": kind.label(),
        "ops": args.ops,
        "succeeded": outcome.succeeded,
        "failed": outcome.failed,
        "duplicates": api.duplicates(),
        "lost": lost,
        "attempts_per_op": received as f64 / args.ops as f64,
        "probes": outcome.probes,
    });
    if args.hard_outage > 0.0 {
        let hard = hard_outage(args, api, outcome, kind);
        json["attempts_during_hard_outage"] = hard.attempts.into();
        json["attempts_after_breaker_opened"] = hard.after_open.into();
        json["break_intervals_after_opening"] = hard.break_intervals.into();
        json["recovered_after_ms"] = hard.recovered_after.map(|d| d.as_millis() as u64).into();
    }
    json
}

/// Opens a dead-letter queue on a fresh file.
async fn fresh_queue(path: &std::path::Path) -> Result<SqliteQueue, BoxError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    Ok(SqliteQueue::open(path).await?)
}

/// The queue file of one client: the breaker client's sits beside the
/// plain client's, so that each replays and counts only its own.
fn queue_path(args: &Args, kind: Kind) -> PathBuf {
    match kind {
        Kind::Breaker => {
            let stem = args
                .dead_letters
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy();
            args.dead_letters
                .with_file_name(format!("{stem}-breaker.sqlite"))
        }
        _ => args.dead_letters.clone(),
    }
}

/// Replays the parked operations through the same client stack, keys and
/// bodies as stored; returns (replayed, still failing).
async fn replay_dead_letters(
    queue: &SqliteQueue,
    parked: u64,
    verbose: bool,
) -> Result<(u64, u64), BoxError> {
    // The pushes run on tasks of their own; wait until every one has landed.
    while queue.counts().await?.total() < parked {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if verbose {
        println!(
            "dead-letter queue {}: {}",
            queue.path().display(),
            queue.counts().await?
        );
    }
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(RetryLayer::new().max_attempts(5))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let report = Replayer::new(queue.clone(), client)
        .concurrency(8)
        .rate(500, Duration::from_secs(1))
        .drain(std::future::pending())
        .await?;
    if verbose {
        println!("after the replay:  {}", queue.counts().await?);
    }
    Ok((report.replayed, report.failed + report.not_replayable))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn svg_chart(
    series: &[(Kind, Vec<u32>)],
    duration: f64,
    incident_rate: f64,
    hard: Option<(f64, f64)>,
) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 20.0, 40.0, 60.0);
    let per_sec = |n: u32| f64::from(n) / BUCKET.as_secs_f64();
    let buckets = series
        .iter()
        .map(|(_, s)| s.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let t_max = (buckets as f64 * BUCKET.as_secs_f64()).max(hard.map_or(duration, |(_, to)| to));
    let peak = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied().map(per_sec))
        .fold(1.0, f64::max);
    // A round tick step (1, 2 or 5 times a power of ten), at most six ticks.
    let base = 10f64.powf((peak / 6.0).log10().floor());
    let y_step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|step| peak / step <= 6.0)
        .unwrap_or(base * 10.0);
    let y_max = (peak / y_step).ceil() * y_step;
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / y_max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = write!(
        svg,
        r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#fde0dd"/><text x="{:.1}" y="{:.1}" fill="#a50f15">incident ({}% failures)</text>"##,
        x(duration * 0.25),
        x(duration * 0.75) - x(duration * 0.25),
        h - top - bottom,
        x(duration * 0.25) + 6.0,
        top + 16.0,
        (incident_rate * 100.0).round()
    );
    if let Some((from, to)) = hard {
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#fcbba1"/><text x="{:.1}" y="{:.1}" fill="#a50f15">hard outage (503)</text>"##,
            x(from),
            x(to) - x(from),
            h - top - bottom,
            x(from) + 6.0,
            top + 32.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="24" font-size="16">Attempts per second reaching the API</text>"##,
        left
    );
    // Axes with ticks.
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000"/>"##,
        h - bottom,
        w - right,
        h - bottom
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#000"/>"##,
        h - bottom
    );
    let step = (t_max / 8.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"##,
            x(t),
            h - bottom + 18.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"##,
        x(t_max / 2.0),
        h - 12.0
    );
    for i in 0..=((y_max / y_step).round() as u32) {
        let v = y_step * f64::from(i);
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            left - 6.0,
            y(v) + 4.0,
            y(v),
            w - right,
            y(v)
        );
    }
    for (i, (kind, counts)) in series.iter().enumerate() {
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(b, &n)| {
                format!(
                    "{:.1},{:.1}",
                    x((b as f64 + 0.5) * BUCKET.as_secs_f64()),
                    y(per_sec(n))
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            kind.color(),
            points.join(" ")
        );
        let ly = top + 36.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            w - right - 250.0,
            w - right - 225.0,
            kind.color(),
            w - right - 218.0,
            ly + 4.0,
            kind.label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.ops == 0 {
        return Err("--ops must be at least 1".into());
    }
    if !args.duration.is_finite() || args.duration <= 0.0 || args.duration > 3600.0 {
        return Err("--duration must be a number of seconds in (0, 3600]".into());
    }
    for (flag, rate) in [
        ("--normal-failure-rate", args.normal_failure_rate),
        ("--incident-failure-rate", args.incident_failure_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{flag} must be between 0 and 1, got {rate}").into());
        }
    }
    if !args.hard_outage.is_finite() || !(0.0..=600.0).contains(&args.hard_outage) {
        return Err(format!(
            "--hard-outage must be a number of seconds in [0, 600], got {}",
            args.hard_outage
        )
        .into());
    }
    let mut kinds = vec![Kind::NoRetry, Kind::Naive, Kind::Reissue];
    if args.hard_outage > 0.0 {
        kinds.push(Kind::Breaker);
    }
    if args.api_without_keys {
        kinds.push(Kind::Reconcile);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let mut apis = Vec::new();
    for (salt, _) in kinds.iter().enumerate() {
        apis.push(start_api(&args, salt as u64, start).await);
    }

    if !args.json {
        println!(
            "{} operations per client over {:.0} s: normal ({:.1}% failures), incident ({:.0}% failures), recovery.",
            args.ops,
            args.duration,
            args.normal_failure_rate * 100.0,
            args.incident_failure_rate * 100.0
        );
    }
    let bars = MultiProgress::with_draw_target(if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>30} [{bar:40}] {pos:>5}/{len:5} {msg}")
        .unwrap()
        .progress_chars("=> ");
    let mut queues = Vec::new();
    for kind in &kinds {
        queues.push(fresh_queue(&queue_path(&args, *kind)).await?);
    }
    let mut handles = Vec::new();
    for ((kind, (addr, _)), queue) in kinds.iter().zip(&apis).zip(&queues) {
        let bar = bars.add(ProgressBar::new(args.ops as u64));
        bar.set_style(style.clone());
        bar.set_prefix(kind.label());
        handles.push(tokio::spawn(run_client(
            *kind,
            args.clone(),
            *addr,
            start,
            bar,
            queue.clone(),
        )));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await?);
    }

    // The run's own attempts, before the replay adds its own.
    let series: Vec<_> = kinds
        .iter()
        .zip(&apis)
        .map(|(kind, (_, api))| (*kind, api.attempts.lock().unwrap().clone()))
        .collect();
    for (outcome, (_, api)) in outcomes.iter_mut().zip(&apis) {
        outcome.received = api.received();
    }
    // Dead letters are replayed before anything is counted as lost.
    let mut replays = Vec::new();
    for ((kind, queue), outcome) in kinds.iter().zip(&queues).zip(&outcomes) {
        replays.push(match kind {
            Kind::Reissue | Kind::Breaker => {
                Some(replay_dead_letters(queue, outcome.parked, !args.json).await?)
            }
            // Keyless: each is looked up before it is sent again.
            Kind::Reconcile => {
                let addr = apis[replays.len()].0;
                Some(replay_reconciled(addr, &outcome.unreconciled).await)
            }
            _ => None,
        });
    }
    let lost = |api: &Api| (0..args.ops as u64).filter(|op| !api.executed(*op)).count();

    if args.json {
        let rows = kinds.iter().zip(&apis).zip(&outcomes);
        let rows = rows
            .map(|((kind, (_, api)), outcome)| client_json(*kind, &args, api, outcome, lost(api)));
        println!(
            "{}",
            serde_json::to_string_pretty(&rows.collect::<Vec<_>>())?
        );
    } else {
        report(&args, &kinds, &apis, &mut outcomes, &replays);
    }

    if let Some(dir) = args.svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.svg,
        svg_chart(
            &series,
            args.duration,
            args.incident_failure_rate,
            (args.hard_outage > 0.0).then(|| args.hard_window()),
        ),
    )?;
    if !args.json {
        println!("\nChart of attempts per second: {}", args.svg.display());
    }
    if let Some(addr) = args.admin {
        // The plain tower-reissue client's queue: the incident's dead letters.
        serve_admin(queues[2].clone(), addr).await?;
    }
    Ok(())
}
/// Serves the admin page over the incident's dead letters until Ctrl-C.
#[cfg(feature = "admin")]
async fn serve_admin(queue: SqliteQueue, addr: std::net::SocketAddr) -> Result<(), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let replayer = Replayer::new(queue.clone(), client);
    let app = axum::Router::new().nest(
        "/dead-letters",
        tower_reissue::dead_letter::admin::router(queue, replayer),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "Dead-letter admin page: http://{}/dead-letters (Ctrl-C to stop)",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(not(feature = "admin"))]
async fn serve_admin(_: SqliteQueue, _: std::net::SocketAddr) -> Result<(), BoxError> {
    Err("--admin needs the admin page: run with `--features admin`".into())
}

/// The table and the story under it.
fn report(
    args: &Args,
    kinds: &[Kind],
    apis: &[(SocketAddr, Arc<Api>)],
    outcomes: &mut [Outcomes],
    replays: &[Option<(u64, u64)>],
) {
    println!();
    println!(
        "{:<30} {:>6} {:>10} {:>7} {:>11} {:>13} {:>8} {:>8}",
        "client", "ops", "succeeded", "failed", "duplicates", "attempts/op", "p50", "p99"
    );
    for ((kind, (_, api)), outcome) in kinds.iter().zip(apis).zip(outcomes.iter_mut()) {
        outcome.latencies.sort();
        let received = outcome.received;
        println!(
            "{:<30} {:>6} {:>10} {:>7} {:>11} {:>13.2} {:>6}ms {:>6}ms",
            kind.label(),
            args.ops,
            outcome.succeeded,
            outcome.failed,
            api.duplicates(),
            received as f64 / args.ops as f64,
            percentile(&outcome.latencies, 0.5).as_millis(),
            percentile(&outcome.latencies, 0.99).as_millis(),
        );
    }
    let lost = |api: &Api| (0..args.ops as u64).filter(|op| !api.executed(*op)).count();
    println!();
    println!(
        "no retries:    {} operations never took effect (lost work).",
        lost(&apis[0].1)
    );
    println!(
        "naive loop:    {} duplicate side effects (emails sent twice, payments captured twice).",
        apis[1].1.duplicates()
    );
    for (i, kind) in kinds.iter().enumerate() {
        let (Some((recovered, still)), (_, api)) = (replays[i], &apis[i]) else {
            continue;
        };
        if *kind == Kind::Reconcile {
            let outcome = &outcomes[i];
            println!(
                "tower-reissue + reconcile: {} probes; {} operations given up and replayed after the incident, each looked up first: {} done, {} still failing; {} lost, {} duplicates after replay.",
                outcome.probes,
                outcome.unreconciled.len(),
                recovered,
                still,
                lost(api),
                api.duplicates()
            );
            continue;
        }
        let label = kind.label();
        println!(
            "{label}: {} duplicates; {} operations dead-lettered with their key and replayed after the incident: {} succeeded, {} still failing; {} lost, {} duplicates after replay.",
            api.duplicates(),
            outcomes[i].parked,
            recovered,
            still,
            lost(api),
            api.duplicates()
        );
    }
    if args.hard_outage > 0.0 {
        println!();
        println!(
            "hard outage ({} s of 503s): attempts reaching the API, and time from its end to the first success",
            args.hard_outage
        );
        for ((kind, (_, api)), outcome) in kinds.iter().zip(apis).zip(outcomes.iter()) {
            let hard = hard_outage(args, api, outcome, *kind);
            let opened = match (hard.after_open, hard.break_intervals) {
                (Some(n), Some(breaks)) => {
                    format!(" ({n} after the breaker opened, over {breaks} break intervals)")
                }
                _ => String::new(),
            };
            let back = hard
                .recovered_after
                .map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()));
            println!(
                "  {:<28} {:>6} attempts{opened}; back after {back}",
                kind.label(),
                hard.attempts
            );
        }
    }
}

// ---------------------------------------------------------------------------
// An API that ignores keys, and the client that asks instead (--api-without-keys)
// ---------------------------------------------------------------------------

/// The header the API stores with each operation, so it can be found later.
const REFERENCE: http::HeaderName = http::HeaderName::from_static("x-reference");

/// Adds `GET /emails?reference=…` and `GET /payments?reference=…`: 200 if an
/// operation sent with that `X-Reference` took effect, 404 if not. They sit
/// behind the same faults as everything else.
fn with_lookups(app: axum::Router, api: Arc<Api>) -> axum::Router {
    let find = move |uri: http::Uri| {
        let api = api.clone();
        async move {
            let reference = uri.query().and_then(|q| q.strip_prefix("reference="));
            let op = reference.and_then(|r| api.references.lock().unwrap().get(r).copied());
            if op.is_some_and(|op| api.executed(op)) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            }
        }
    };
    app.route("/emails", axum::routing::get(find.clone()))
        .route("/payments", axum::routing::get(find))
}

/// Looks an operation up by its reference, through a retry layer of its own
/// (a lookup is a GET: safe to repeat).
fn lookup(addr: SocketAddr) -> impl Reconcile + Clone {
    let lookups = RetryLayer::new()
        .max_attempts(3)
        .layer(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>());
    move |request: ReconcileRequest| {
        let lookups = lookups.clone();
        let url = request
            .correlation_id()
            .map(|id| format!("http://{addr}{}?reference={id}", request.uri().path()));
        async move {
            let Some(url) = url else {
                return Ok(Reconciled::Unknown);
            };
            let found = lookups
                .oneshot(Request::get(url).body(Empty::new())?)
                .await?;
            Ok::<_, BoxError>(match found.status() {
                StatusCode::OK => Reconciled::Applied,
                StatusCode::NOT_FOUND => Reconciled::NotApplied,
                _ => Reconciled::Unknown,
            })
        }
    }
}

type ReconcilingClient =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;

/// tower-reissue for an API that ignores keys: each operation carries a
/// reference the API stores (a correlation id, not a promise of
/// deduplication), and an ambiguous failure is looked up before any retry.
/// What it gives up on goes to `dead_letters` with its reference.
fn reconciling_client(
    addr: SocketAddr,
    dead_letters: Arc<Mutex<Vec<(u64, String)>>>,
    probes: Arc<AtomicU64>,
) -> ReconcilingClient {
    let client = ServiceBuilder::new()
        .layer(
            IdempotencyKeyLayer::new()
                .header(REFERENCE)
                .correlation_only(),
        )
        .layer(
            reissue_retries()
                .reconcile(lookup(addr))
                .on_reconcile(move |_| {
                    probes.fetch_add(1, Ordering::Relaxed);
                })
                .on_give_up(move |event| {
                    if let (Some(op), Some(reference)) = (
                        op_id(event.request.headers()),
                        event.request.idempotency_key(),
                    ) {
                        dead_letters
                            .lock()
                            .unwrap()
                            .push((op, reference.to_owned()));
                    }
                }),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    tower::util::BoxCloneSyncService::new(client)
}

/// One operation through the reconciling client: (took effect as far as
/// the caller knows, attempts).
async fn reconciled_call(client: ReconcilingClient, request: Request<Full<Bytes>>) -> (bool, u64) {
    match client.oneshot(request).await {
        Ok(response) => {
            let attempts = response
                .extensions()
                .get::<Attempts>()
                .map_or(1, |a| u64::from(a.get()));
            let applied = response.extensions().get::<Reconciliation>().is_some();
            (response.status().is_success() || applied, attempts)
        }
        Err(error) => (error.downcast_ref::<AppliedResponseLost>().is_some(), 0),
    }
}

/// Replays given-up operations of the reconciling client once the API is
/// back: each is looked up first (it may have taken effect), and sent again
/// with its reference only if it did not.
async fn replay_reconciled(addr: SocketAddr, dead: &[(u64, String)]) -> (u64, u64) {
    let lookup = lookup(addr);
    let client = reconciling_client(addr, Arc::default(), Arc::default());
    let (mut done, mut still_failing) = (0, 0);
    for (op, reference) in dead {
        let mut request = op_request(addr, *op);
        let Ok(key) = IdempotencyKey::new(reference) else {
            still_failing += 1;
            continue;
        };
        let question = ReconcileRequest::new(Method::POST, request.uri().clone())
            .with_correlation_id(key.clone());
        let ok = match lookup.reconcile(question).await {
            Ok(Reconciled::Applied) => true,
            Ok(Reconciled::NotApplied) => {
                request
                    .headers_mut()
                    .insert(REFERENCE, key.header_value().clone());
                reconciled_call(client.clone(), request).await.0
            }
            _ => false,
        };
        if ok { done += 1 } else { still_failing += 1 }
    }
    (done, still_failing)
}
