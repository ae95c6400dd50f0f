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
//! Run: `cargo run --example outage` (add `-- --help` for the knobs).

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_reissue::dead_letter::{DeadLetterQueue, Replayer, SqliteQueue};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{
    Attempts, Backoff, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody, RetryBudget,
    RetryLayer,
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
    /// The SQLite file of tower-reissue's dead-letter queue (started afresh).
    #[arg(long, default_value = "target/outage-dead-letters.sqlite")]
    dead_letters: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// After the run, serve the dead-letter admin page on this address (for
    /// example 127.0.0.1:8080) until Ctrl-C; needs `--features admin`.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
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
}

struct Api {
    args: Args,
    start: Instant,
    rng: Mutex<StdRng>,
    /// Side effects per operation id.
    effects: Mutex<HashMap<u64, u32>>,
    /// Attempts received per 250 ms bucket, for the chart.
    attempts: Mutex<Vec<u32>>,
}

const BUCKET: Duration = Duration::from_millis(250);

impl Api {
    fn in_incident(&self) -> bool {
        let t = self.start.elapsed().as_secs_f64() / self.args.duration;
        (0.25..0.75).contains(&t)
    }

    fn draw(&self) -> Fault {
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
        attempts: Mutex::default(),
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
            axum::routing::post(move |req| perform(handler_api.clone(), req)),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()));
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
                        _ => Ok(Response::from_parts(parts, axum::body::Body::from(body))),
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
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::NoRetry => "no retries",
            Kind::Naive => "naive loop (10x, fixed delay)",
            Kind::Reissue => "tower-reissue",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Kind::NoRetry => "#7f7f7f",
            Kind::Naive => "#d62728",
            Kind::Reissue => "#1f77b4",
        }
    }
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
    let reissue = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(
            RetryLayer::new()
                .max_attempts(10)
                .backoff(Backoff::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                ))
                .budget(RetryBudget::new(0.2))
                // Parked with key and body, to replay once the API is back.
                .dead_letters(queue)
                .on_give_up(move |event| {
                    if event.reason != GiveUpReason::Permanent {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    let results: Arc<Mutex<Outcomes>> = Arc::default();
    let mut tasks = Vec::with_capacity(args.ops);
    let spacing = Duration::from_secs_f64(args.duration / args.ops as f64);
    for op in 0..args.ops as u64 {
        tokio::time::sleep_until(start + spacing * op as u32).await;
        let (plain, reissue, results, bar) =
            (plain.clone(), reissue.clone(), results.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let (ok, attempts) = match kind {
                Kind::NoRetry => (
                    matches!(plain.request(op_request(addr, op)).await, Ok(r) if r.status().is_success()),
                    1,
                ),
                Kind::Naive => naive_call(&plain, addr, op).await,
                Kind::Reissue => {
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
    outcomes
}

/// Opens the demo's dead-letter queue on a fresh file.
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

/// Replays the parked operations through the same client stack, keys and
/// bodies as stored; returns (replayed, still failing).
async fn replay_dead_letters(queue: &SqliteQueue, parked: u64) -> Result<(u64, u64), BoxError> {
    // The pushes run on tasks of their own; wait until every one has landed.
    while queue.counts().await?.total() < parked {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "dead-letter queue {}: {}",
        queue.path().display(),
        queue.counts().await?
    );
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(RetryLayer::new().max_attempts(5))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
    let report = Replayer::new(queue.clone(), client)
        .concurrency(8)
        .rate(500, Duration::from_secs(1))
        .drain(std::future::pending())
        .await?;
    println!("after the replay:  {}", queue.counts().await?);
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

fn svg_chart(series: &[(Kind, Vec<u32>)], duration: f64, incident_rate: f64) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 20.0, 40.0, 60.0);
    let per_sec = |n: u32| f64::from(n) / BUCKET.as_secs_f64();
    let buckets = series
        .iter()
        .map(|(_, s)| s.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let t_max = (buckets as f64 * BUCKET.as_secs_f64()).max(duration);
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
    let kinds = [Kind::NoRetry, Kind::Naive, Kind::Reissue];
    let queue = fresh_queue(&args.dead_letters).await?;
    let start = Instant::now() + Duration::from_millis(200);
    let mut apis = Vec::new();
    for (salt, _) in kinds.iter().enumerate() {
        apis.push(start_api(&args, salt as u64, start).await);
    }

    println!(
        "{} operations per client over {:.0} s: normal ({:.1}% failures), incident ({:.0}% failures), recovery.",
        args.ops,
        args.duration,
        args.normal_failure_rate * 100.0,
        args.incident_failure_rate * 100.0
    );
    let bars = MultiProgress::with_draw_target(if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>30} [{bar:40}] {pos:>5}/{len:5} {msg}")
        .unwrap()
        .progress_chars("=> ");
    let mut handles = Vec::new();
    for (kind, (addr, _)) in kinds.iter().zip(&apis) {
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

    // Report.
    println!();
    println!(
        "{:<30} {:>6} {:>10} {:>7} {:>11} {:>13} {:>8} {:>8}",
        "client", "ops", "succeeded", "failed", "duplicates", "attempts/op", "p50", "p99"
    );
    let mut series = Vec::new();
    for ((kind, (addr, api)), outcome) in kinds.iter().zip(&apis).zip(&mut outcomes) {
        outcome.latencies.sort();
        let received: u64 = api
            .attempts
            .lock()
            .unwrap()
            .iter()
            .map(|&n| u64::from(n))
            .sum();
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
        series.push((*kind, api.attempts.lock().unwrap().clone()));
        let _ = addr;
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

    let (_, api) = &apis[2];
    let parked = outcomes[2].parked;
    let (recovered, still) = replay_dead_letters(&queue, parked).await?;
    println!(
        "tower-reissue: {} duplicates; {} operations dead-lettered with their key and replayed after the incident: {} succeeded, {} still failing; {} lost, {} duplicates after replay.",
        api.duplicates(),
        parked,
        recovered,
        still,
        lost(api),
        api.duplicates()
    );

    if let Some(dir) = args.svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.svg,
        svg_chart(&series, args.duration, args.incident_failure_rate),
    )?;
    println!("\nChart of attempts per second: {}", args.svg.display());
    if let Some(addr) = args.admin {
        serve_admin(queue, addr).await?;
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
