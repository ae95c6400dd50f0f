//! Tail latency with hedging: a hyper server on 127.0.0.1 whose answers take
//! 5 ms, except one in a hundred that takes 500 ms, called with GETs by a
//! hyper-util client, 32 in flight, through:
//!
//! - `none`: the bare client;
//! - `tower::hedge p95`: `tower::hedge::Hedge`, a hedge at the p95 of the
//!   latencies it recorded (at least 100 of them, over a 10 s period;
//!   seeded with the latencies of the warm-up run of `none`, which tower
//!   offers for tests, so that it hedges from its first timed run rather
//!   than after its first period);
//! - `HedgeLayer p95`: this crate's layer, a hedge at the p95 of recent
//!   successes (`latency_percentile(0.95)` over a 1 ms floor), its default
//!   budget on;
//! - `HedgeLayer 10 ms`: this crate's layer with a fixed 10 ms delay, about
//!   twice a normal answer, its default budget on.
//!
//! ```text
//! cargo bench --bench hedge_tail
//! ```
//!
//! The slow answers are chosen by the server's request number (every
//! hundredth request it receives, hedges included), not by chance, so every
//! run meets the same tail. Each configuration runs once to warm up (pools
//! open, percentiles learnt), then `ROUNDS` times (default 5), interleaved
//! in an order that turns each round, so that a slow spell of the machine
//! falls on all of them. Each run sends `REQUESTS` GETs (default 2,048).
//!
//! This is a plain `main` (`harness = false`), not criterion: the figures
//! are percentiles within a run, and the spread that matters is between
//! runs. It prints, per configuration, p50, p99, p99.5 and p99.9 of the
//! latency the caller saw (nearest rank), and the load (requests the server
//! received per request sent), each as the median over the runs and its
//! spread (min..max). With exactly one slow answer in a hundred, the p99
//! sits on the edge of the slow hundredth: without hedging it is the
//! slowest of the fast answers, so p99.5 is printed too, well inside it.
//! `VERBOSE=1` prints every run.

#[path = "common/loopback.rs"]
mod loopback;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_reissue::{BoxError, HedgeLayer, ReplayBody};

const IN_FLIGHT: usize = 32;
const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(500);
/// One request in this many is slow.
const SLOW_EVERY: u64 = 100;

type Answer = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;
/// Sends one request through a configuration.
type Send_ = Arc<dyn Fn(Request<Full<Bytes>>) -> Answer + Send + Sync>;

fn main() {
    let rounds = setting("ROUNDS", 5);
    let verbose = std::env::var_os("VERBOSE").is_some();
    // Every task sends as many.
    let requests = setting("REQUESTS", 2048).div_ceil(IN_FLIGHT) * IN_FLIGHT;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let received = Arc::new(AtomicU64::new(0));
        let addr = serve(received.clone()).await;
        let uri: &'static str = format!("http://{addr}/report").leak();
        let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let replayable =
            Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();

        let none = cloned(plain.clone());
        // The warm-up of `none` gives tower's hedge its first latencies.
        let (_, warm) = run(&none, uri, requests, &received).await;
        let seed: Vec<u64> = warm.iter().map(|d| d.as_millis().max(1) as u64).collect();
        let tower_hedge = tower::hedge::Hedge::new_with_mock_latencies(
            plain.clone(),
            CloneGets,
            100,
            0.95,
            Duration::from_secs(10),
            &seed,
        );
        let ours = |layer: HedgeLayer| {
            cloned(
                ServiceBuilder::new()
                    // What a retry layer above would send: replayable bodies.
                    .map_request(|request: Request<Full<Bytes>>| {
                        request.map(|body| ReplayBody::new(body, 64 * 1024).0)
                    })
                    .layer(layer)
                    .service(replayable.clone()),
            )
        };
        let configs: Vec<(&str, Send_)> = vec![
            ("none", none),
            ("tower::hedge p95", locked(tower_hedge)),
            (
                "HedgeLayer p95",
                ours(HedgeLayer::new(Duration::from_millis(1)).latency_percentile(0.95)),
            ),
            (
                "HedgeLayer 10 ms",
                ours(HedgeLayer::new(Duration::from_millis(10))),
            ),
        ];

        let started = Instant::now();
        for (_, send) in &configs {
            run(send, uri, requests, &received).await;
        }
        let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); configs.len()];
        for r in 0..rounds {
            for i in 0..configs.len() {
                let c = (i + r) % configs.len();
                let (load, latencies) = run(&configs[c].1, uri, requests, &received).await;
                let run = Figures::of(load, latencies);
                if verbose {
                    println!(
                        "round {r} {:<18} p50 {:.1} p99 {:.1} p99.5 {:.1} p99.9 {:.1} load {:.3}",
                        configs[c].0, run.p50, run.p99, run.p995, run.p999, run.load
                    );
                }
                figures[c].push(run);
            }
        }
        if rounds == 0 {
            return;
        }
        println!(
            "GET over loopback, answers 5 ms, every {SLOW_EVERY}th 500 ms; {IN_FLIGHT} in flight, \
             {rounds} interleaved rounds x {requests} requests ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        println!("median over the rounds, [min..max]");
        println!(
            "{:<18} {:>18} {:>20} {:>22} {:>22} {:>20}",
            "configuration", "p50 ms", "p99 ms", "p99.5 ms", "p99.9 ms", "load"
        );
        for ((name, _), runs) in configs.iter().zip(&figures) {
            let column = |pick: fn(&Figures) -> f64, digits: usize| {
                let mut values: Vec<f64> = runs.iter().map(pick).collect();
                values.sort_by(f64::total_cmp);
                format!(
                    "{:.digits$} [{:.digits$}..{:.digits$}]",
                    values[values.len() / 2],
                    values[0],
                    values[values.len() - 1],
                )
            };
            println!(
                "{name:<18} {:>18} {:>20} {:>22} {:>22} {:>20}",
                column(|f| f.p50, 1),
                column(|f| f.p99, 1),
                column(|f| f.p995, 1),
                column(|f| f.p999, 1),
                column(|f| f.load, 3),
            );
        }
    });
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run's figures, latencies in milliseconds.
#[derive(Clone)]
struct Figures {
    p50: f64,
    p99: f64,
    p995: f64,
    p999: f64,
    load: f64,
}

impl Figures {
    fn of(load: f64, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        // Nearest rank.
        let at = |q: f64| {
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_secs_f64() * 1000.0
        };
        Figures {
            p50: at(0.5),
            p99: at(0.99),
            p995: at(0.995),
            p999: at(0.999),
            load,
        }
    }
}

/// A server whose every `SLOW_EVERY`th request (counted in `received`, over
/// all connections) answers after `SLOW`, every other after `FAST`.
async fn serve(received: Arc<AtomicU64>) -> SocketAddr {
    loopback::serve(move |_req| {
        let n = received.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let took = if n % SLOW_EVERY == 0 { SLOW } else { FAST };
            tokio::time::sleep(took).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await
}

/// One run: `requests` GETs, `IN_FLIGHT` tasks each sending its share one
/// after another and reading each answer to the end. Returns the load (what
/// the server received per request sent) and every request's latency.
async fn run(
    send: &Send_,
    uri: &'static str,
    requests: usize,
    received: &AtomicU64,
) -> (f64, Vec<Duration>) {
    let before = received.load(Ordering::Relaxed);
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests / IN_FLIGHT);
                for _ in 0..requests / IN_FLIGHT {
                    let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    let started = Instant::now();
                    let response = send(request).await.expect("the loopback server answers");
                    assert!(response.status().is_success());
                    response.into_body().collect().await.unwrap();
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    // Hedges sent just before the last answers came are on their way; the
    // next run waits for them before it counts, this one counts them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let load = (received.load(Ordering::Relaxed) - before) as f64 / requests as f64;
    (load, latencies)
}

/// A configuration whose service clones (one clone per request).
fn cloned<S>(service: S) -> Send_
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    Arc::new(move |request| {
        let service = service.clone();
        Box::pin(async move { service.oneshot(request).await.map_err(Into::into) })
    })
}

/// A configuration whose service does not clone (`tower::hedge::Hedge`):
/// shared behind a lock held only to make it ready and call it; the answer
/// is awaited outside the lock.
fn locked<S>(service: S) -> Send_
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let service = Arc::new(tokio::sync::Mutex::new(service));
    Arc::new(move |request| {
        let service = service.clone();
        Box::pin(async move {
            let future = {
                let mut service = service.lock().await;
                service.ready().await.map_err(Into::into)?;
                service.call(request)
            };
            future.await.map_err(Into::into)
        })
    })
}

/// tower's hedge policy for the bench's GETs: every request may be copied.
#[derive(Clone)]
struct CloneGets;

impl tower::hedge::Policy<Request<Full<Bytes>>> for CloneGets {
    fn clone_request(&self, request: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        Some(request.clone())
    }

    fn can_retry(&self, _request: &Request<Full<Bytes>>) -> bool {
        true
    }
}
