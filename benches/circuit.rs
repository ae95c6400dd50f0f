//! The closed path of CircuitBreakerLayer against tower-resilience's circuit
//! breaker, same run: one call through a healthy breaker around a service
//! that answers at once, so the figure is the breaker's own cost.
//! tower-resilience runs twice: with a 30 s time window like ours (it keeps
//! one record per call and scans them, so its cost grows with the traffic in
//! the window), and with its cheapest, count-based window of 100 calls.
//!
//! Measured on a 2-core machine (`benches/callgrind.sh`, instructions per
//! call, the service below costs 401): tower_reissue 1,122 (0.51x
//! tower_resilience_count's 2,183), tower_reissue_per_host 1,708 (0.78x);
//! tower_resilience_time averages 80,558 over 1,000 to 11,000 calls.
//!
//! With `CIRCUIT_CALLS=N CIRCUIT_TARGET=name` set, the bench makes N calls
//! through one target and exits, for instruction counts (see
//! `benches/callgrind.sh`).

mod common;

use criterion::{Criterion, criterion_group};
use http::{Request, Response, StatusCode, Uri};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};
use tower_reissue::circuit::CircuitBreakerLayer;
use tower_resilience_circuitbreaker::SlidingWindowType;

const TARGETS: [&str; 5] = [
    "none",
    "tower_reissue",
    "tower_reissue_per_host",
    "tower_resilience_count",
    "tower_resilience_time",
];

static URI: std::sync::LazyLock<Uri> =
    std::sync::LazyLock::new(|| Uri::from_static("https://api.example/v1/emails"));

/// The service below the breaker: answers 200 at once.
#[derive(Clone, Copy)]
struct Healthy;

impl Service<Request<()>> for Healthy {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// Both breakers with the same terms: 10% over 30 s, at least 100 calls,
/// 5 s break; failure = a 5xx.
fn ours(per_host: bool) -> CircuitBreakerLayer {
    let builder = CircuitBreakerLayer::builder()
        .failure_ratio(0.1)
        .min_throughput(100)
        .window(Duration::from_secs(30))
        .break_duration(Duration::from_secs(5));
    if per_host {
        builder.per_host()
    } else {
        builder
    }
    .build()
}

/// tower-resilience's breaker on the same terms, with `window`.
fn run_peer(rt: &tokio::runtime::Runtime, window: SlidingWindowType, calls: u64) {
    let layer = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.1)
        .sliding_window_type(window)
        .sliding_window_duration(Duration::from_secs(30))
        .sliding_window_size(100)
        .minimum_number_of_calls(100)
        .wait_duration_in_open(Duration::from_secs(5))
        .classify_response(|r: &Response<()>| r.status().is_server_error())
        .build()
        .unwrap();
    rt.block_on(drive(layer.layer(Healthy), calls))
}

async fn drive<S>(mut service: S, calls: u64)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..calls {
        let mut request = Request::new(());
        *request.uri_mut() = URI.clone();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(black_box(response).status(), StatusCode::OK);
    }
}

/// `calls` calls through `target`, on the runtime `rt`.
fn run(rt: &tokio::runtime::Runtime, target: &str, calls: u64) {
    match target {
        "none" => rt.block_on(drive(Healthy, calls)),
        "tower_reissue" => rt.block_on(drive(ours(false).layer(Healthy), calls)),
        "tower_reissue_per_host" => rt.block_on(drive(ours(true).layer(Healthy), calls)),
        "tower_resilience_time" => run_peer(rt, SlidingWindowType::TimeBased, calls),
        "tower_resilience_count" => run_peer(rt, SlidingWindowType::CountBased, calls),
        other => panic!("unknown target {other}; one of {TARGETS:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn closed_call(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("circuit_closed_call");
    for target in TARGETS {
        group.bench_function(target, |b| {
            b.iter_custom(|iters| {
                let began = Instant::now();
                run(&rt, target, iters);
                began.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = closed_call
}

fn main() {
    if let Ok(calls) = std::env::var("CIRCUIT_CALLS") {
        let target = std::env::var("CIRCUIT_TARGET").unwrap_or_else(|_| "tower_reissue".into());
        run(
            &runtime(),
            &target,
            calls.parse().expect("CIRCUIT_CALLS is a number"),
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
