//! Requests per second over loopback: axum servers on 127.0.0.1 (the handler
//! bare, behind `IdempotencyLayer` with a `MemoryStore`, and behind the peer
//! `axum-idempotent`) called by a hyper-util legacy client.
//!
//! ```text
//! cargo bench --bench server_loopback
//! ```
//!
//! Workloads: new keys with 32 requests in flight (the handler runs and its
//! result is stored), replays of one key one at a time, and replays with 32
//! in flight. The bare server gets the same requests (it ignores the key).
//! The servers run on a runtime of their own (one worker thread) and the
//! client on another (the main thread), as two processes would: a sequential
//! client then measures the server's latency rather than how two tasks
//! share a worker. Timings on a shared machine drift, so the variants run in
//! interleaved rounds, each running every variant for a fixed number of
//! requests; the figure is the median over the rounds, and the ratio is to
//! the bare server under the same workload. `minimal` is the handler behind
//! `Minimal`, the least an idempotency layer does: no layer that keeps the
//! contract can be faster. What it leaves out, and what axum-idempotent
//! needs to run, are described in `common/server_app.rs`.

#[path = "common/server_app.rs"]
mod server_app;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

const ROUNDS: usize = 21;
const IN_FLIGHT: usize = 32;
/// Requests per variant and round with `IN_FLIGHT` in flight.
const CONCURRENT_REQUESTS: usize = 2_048;
/// Requests per variant and round one at a time.
const SEQUENTIAL_REQUESTS: usize = 600;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    NewKeys,
    ReplaySequential,
    ReplayConcurrent,
}

impl Workload {
    const ALL: [Workload; 3] = [
        Workload::NewKeys,
        Workload::ReplaySequential,
        Workload::ReplayConcurrent,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::NewKeys => "new keys, 32 in flight",
            Workload::ReplaySequential => "replays, sequential",
            Workload::ReplayConcurrent => "replays, 32 in flight",
        }
    }
}

/// One server under test and what its requests carry.
struct Variant {
    name: &'static str,
    url: String,
    cookie: Option<HeaderValue>,
    /// The header marking a replayed answer, checked on replays.
    replayed_header: Option<&'static str>,
}

fn serve(servers: &tokio::runtime::Runtime, app: Router) -> String {
    let listener = servers
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    servers.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/emails")
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

async fn send(client: &HttpClient, variant: &Variant, key: String) -> Response<Incoming> {
    let mut request = Request::post(&variant.url)
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    if let Some(cookie) = &variant.cookie {
        request = request.header("cookie", cookie);
    }
    let request = request
        .body(Full::new(Bytes::from_static(
            server_app::PAYLOAD.as_bytes(),
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
}

async fn call(client: &HttpClient, variant: &Variant, workload: Workload) {
    let key = match workload {
        Workload::NewKeys => format!("key-{}", NEXT_KEY.fetch_add(1, Ordering::Relaxed)),
        _ => "replayed".to_owned(),
    };
    let response = send(client, variant, key).await;
    if workload != Workload::NewKeys {
        if let Some(name) = variant.replayed_header {
            assert!(response.headers().contains_key(name), "not a replay");
        }
    }
    std::hint::black_box(response.into_body().collect().await.unwrap().to_bytes());
}

/// Requests per second of `variant` under `workload`.
async fn measure(client: &HttpClient, variant: &Arc<Variant>, workload: Workload) -> f64 {
    if workload != Workload::NewKeys {
        // New keys may have pushed the replayed result out of a full store:
        // this stores it again.
        let response = send(client, variant, "replayed".to_owned()).await;
        response.into_body().collect().await.unwrap();
    }
    let started = Instant::now();
    let requests = match workload {
        Workload::ReplaySequential => {
            for _ in 0..SEQUENTIAL_REQUESTS {
                call(client, variant, workload).await;
            }
            SEQUENTIAL_REQUESTS
        }
        Workload::NewKeys | Workload::ReplayConcurrent => {
            let mut tasks = JoinSet::new();
            for _ in 0..IN_FLIGHT {
                let (client, variant) = (client.clone(), variant.clone());
                tasks.spawn(async move {
                    for _ in 0..CONCURRENT_REQUESTS / IN_FLIGHT {
                        call(&client, &variant, workload).await;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            CONCURRENT_REQUESTS / IN_FLIGHT * IN_FLIGHT
        }
    };
    requests as f64 / started.elapsed().as_secs_f64()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (peer, cookie) = servers.block_on(server_app::axum_idempotent());
    let variants = [
        Variant {
            name: "bare axum",
            url: serve(&servers, server_app::bare()),
            cookie: None,
            replayed_header: None,
        },
        Variant {
            name: "tower-reissue",
            url: serve(&servers, server_app::tower_reissue()),
            cookie: None,
            replayed_header: Some("idempotent-replayed"),
        },
        Variant {
            name: "minimal",
            url: serve(&servers, server_app::minimal()),
            cookie: None,
            replayed_header: Some("idempotent-replayed"),
        },
        Variant {
            name: "axum-idempotent",
            url: serve(&servers, peer),
            cookie: Some(cookie),
            replayed_header: Some("idempotency-replayed"),
        },
    ]
    .map(Arc::new);
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_runtime.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        // Warms the connection pools and stores the replayed key's result.
        for variant in &variants {
            measure(&client, variant, Workload::NewKeys).await;
            let first = send(&client, variant, "replayed".to_owned()).await;
            let first_length = first.headers().get(CONTENT_LENGTH).cloned();
            first.into_body().collect().await.unwrap();
            // A replay is framed as the original was (a length, no chunks):
            // the two differ only by the work behind them.
            let again = send(&client, variant, "replayed".to_owned()).await;
            assert!(first_length.is_some());
            assert_eq!(again.headers().get(CONTENT_LENGTH), first_length.as_ref());
            assert!(!again.headers().contains_key(TRANSFER_ENCODING));
            again.into_body().collect().await.unwrap();
        }
        let mut samples = vec![vec![Vec::new(); Workload::ALL.len()]; variants.len()];
        for _ in 0..ROUNDS {
            for (w, workload) in Workload::ALL.into_iter().enumerate() {
                for (v, variant) in variants.iter().enumerate() {
                    samples[v][w].push(measure(&client, variant, workload).await);
                }
            }
        }
        println!(
            "median of {ROUNDS} interleaved rounds ({CONCURRENT_REQUESTS} requests with {IN_FLIGHT} in flight, {SEQUENTIAL_REQUESTS} sequential, per variant and round)"
        );
        println!("{:<24} {:<18} {:>10} {:>8}", "workload", "server", "req/s", "ratio");
        for (w, workload) in Workload::ALL.into_iter().enumerate() {
            let bare = median(samples[0][w].clone());
            for (v, variant) in variants.iter().enumerate() {
                let rate = median(samples[v][w].clone());
                println!(
                    "{:<24} {:<18} {:>10.0} {:>7.3}x",
                    workload.name(),
                    variant.name,
                    rate,
                    rate / bare
                );
            }
        }
    });
}
