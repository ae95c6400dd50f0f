//! Throughput of a hyper-util client over loopback: POSTs with a 1 KiB body
//! to a hyper server on 127.0.0.1, 32 in flight, through the bare client,
//! `tower::retry` (the policy of the other retry benches), `RetryLayer`, and
//! `RetryLayer` over `IdempotencyKeyLayer`, and `Minimal`: the least a retry
//! layer does on the success path (`retry_peers/mod.rs`), which no retry
//! layer keeping the design's contract can beat.
//!
//! ```text
//! cargo bench --bench client_loopback
//! ```
//!
//! The variants run in interleaved rounds (every variant once per round, in
//! an order that turns each round), so that a slow spell of the machine
//! falls on all of them; it prints each variant's median requests per second
//! and its ratio to the bare client. `ROUNDS` (default 30) and `REQUESTS`
//! per round and variant (default 8,192: long enough that a busy spell of
//! the machine spans every variant of a round) change the run; `VARIANT` runs only
//! the variant named, for a profiler (instructions per request under
//! callgrind: the difference of two `ROUNDS`, over the requests between).

#[path = "common/loopback.rs"]
mod loopback;
mod retry_peers;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};
use tower_reissue::{IdempotencyKeyLayer, RetryLayer};

use retry_peers::{Minimal, TowerPolicy, post_request_to};

const IN_FLIGHT: usize = 32;

/// A variant's round: `requests` requests, `IN_FLIGHT` at a time.
type Round = Box<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Duration>>>>;

fn main() {
    let rounds = setting("ROUNDS", 30);
    // Every task sends as many.
    let requests = setting("REQUESTS", 8192).div_ceil(IN_FLIGHT) * IN_FLIGHT;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = serve().await;
        let uri: &'static str = format!("http://{addr}/items").leak();
        let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let replayable = Client::builder(TokioExecutor::new()).build_http();
        let mut variants: Vec<(&str, Round)> = vec![
            ("bare", variant(plain.clone(), uri)),
            (
                "tower_retry",
                variant(
                    tower::retry::RetryLayer::new(TowerPolicy::new()).layer(plain.clone()),
                    uri,
                ),
            ),
            ("minimal", variant(Minimal::new(plain), uri)),
            (
                "tower_reissue",
                variant(RetryLayer::new().layer(replayable.clone()), uri),
            ),
            (
                "tower_reissue_key",
                variant(
                    RetryLayer::new().layer(IdempotencyKeyLayer::new().layer(replayable)),
                    uri,
                ),
            ),
        ];
        if let Ok(only) = std::env::var("VARIANT") {
            variants.retain(|(name, _)| *name == only);
            assert!(!variants.is_empty(), "no variant {only}");
        }
        // Opens the pools' connections before anything is timed.
        for (_, round) in &variants {
            round(requests).await;
        }
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for r in 0..rounds {
            for i in 0..variants.len() {
                let v = (i + r) % variants.len();
                let took = (variants[v].1)(requests).await;
                rates[v].push(requests as f64 / took.as_secs_f64());
            }
        }
        if rounds == 0 {
            return;
        }
        let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
        println!(
            "POST 1 KiB over loopback, {IN_FLIGHT} in flight, {rounds} rounds x {requests} requests"
        );
        println!("{:<20} {:>12} {:>8}", "variant", "median req/s", "ratio");
        for ((name, _), rate) in variants.iter().zip(&medians) {
            println!("{name:<20} {rate:>12.0} {:>7.3}x", rate / medians[0]);
        }
    });
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A hyper server that reads each request's body and answers 200 `ok`.
async fn serve() -> SocketAddr {
    loopback::serve(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

/// Runs `client` for a round: `IN_FLIGHT` tasks, each sending its share of
/// the requests one after another and reading each answer to the end.
fn variant<S>(client: S, uri: &'static str) -> Round
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    Box::new(move |requests| {
        let client = client.clone();
        Box::pin(async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..IN_FLIGHT)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..requests / IN_FLIGHT {
                            let response = client
                                .clone()
                                .oneshot(post_request_to(uri))
                                .await
                                .expect("the loopback server answers");
                            assert!(response.status().is_success());
                            response.into_body().collect().await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            started.elapsed()
        })
    })
}
