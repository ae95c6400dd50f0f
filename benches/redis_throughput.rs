//! Throughput of an axum handler over loopback HTTP with 64 requests in
//! flight: bare, behind `IdempotencyLayer` with `MemoryStore`, behind
//! `IdempotencyLayer` with `RedisStore` (one multiplexed connection to a
//! `redis-server` on loopback, started here unless `REDIS_URL` is set), and
//! with `RedisStore` on a Redis Cluster (three masters and three replicas on
//! loopback, started here unless `REDIS_CLUSTER_URLS` is set), in the same
//! run.
//!
//! ```text
//! cargo bench --features redis --bench redis_throughput
//! ```
//!
//! On a shared machine a single long measurement of each variant mostly
//! measures what else ran at the time, so the variants are run in
//! interleaved rounds (`ROUNDS`, default 9, of `REQUESTS`, default 4,096,
//! requests each) and each is reported as its median requests per second and
//! the ratio of that median to bare's. For the Redis variants the bench also
//! reports the store's round trips to Redis per request, counted on the
//! connection: 2 for a new key (claim, complete), 1 for a replay.

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;
#[path = "common/server_app.rs"]
mod server_app;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_reissue::{IdempotencyLayer, MemoryStore, RedisStore};

const IN_FLIGHT: u64 = 64;
const TTL: Duration = Duration::from_secs(300);

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone, Copy, PartialEq)]
enum Keys {
    None,
    /// A key never sent before on every request.
    New,
    /// One stored key per sender, sent again and again.
    Replayed,
}

struct Variant {
    name: &'static str,
    uri: String,
    keys: Keys,
    /// Whether redis-server's command count is reported.
    redis: bool,
    rates: Vec<f64>,
    round_trips_per_request: Vec<f64>,
}

/// Sends `requests` requests from `IN_FLIGHT` concurrent senders, each
/// waiting for its answer (body included) before sending the next; returns
/// requests per second.
async fn round(
    client: &HttpClient,
    variant: &Variant,
    requests: u64,
    next: &Arc<AtomicU64>,
) -> f64 {
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..IN_FLIGHT {
        let (client, uri, keys, next) = (
            client.clone(),
            variant.uri.clone(),
            variant.keys,
            next.clone(),
        );
        senders.spawn(async move {
            for _ in 0..requests / IN_FLIGHT {
                let key = match keys {
                    Keys::None => None,
                    Keys::New => Some(format!("key-{}", next.fetch_add(1, Ordering::Relaxed))),
                    Keys::Replayed => Some(format!("replayed-{sender}")),
                };
                send(&client, &uri, key).await;
            }
        });
    }
    while let Some(sender) = senders.join_next().await {
        sender.expect("a sender failed");
    }
    (requests / IN_FLIGHT * IN_FLIGHT) as f64 / started.elapsed().as_secs_f64()
}

async fn send(client: &HttpClient, uri: &str, key: Option<String>) {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = client
        .request(request.body(Full::from(server_app::PAYLOAD)).unwrap())
        .await
        .expect("the app answers");
    assert_eq!(response.status(), StatusCode::CREATED);
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

/// A Redis connection that counts its round trips: a command or a pipeline
/// sent and its answer read. (redis-server's own `INFO commandstats` also
/// counts the commands a script runs, so it cannot tell.)
#[derive(Clone)]
struct Counted<C> {
    inner: C,
    round_trips: Arc<AtomicU64>,
}

impl<C: redis::aio::ConnectionLike> redis::aio::ConnectionLike for Counted<C> {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.inner.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` runs every bench binary with `--bench`; a test run
    // (`cargo test --benches`) without it only checks that this builds.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 9);
    let requests = env_or("REQUESTS", 4_096);
    let server = redis_server::RedisServer::shared();
    // One thread runs the client, the apps and the Redis connection, leaving
    // the other core to redis-server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The connection `RedisStore::connect` would open (one multiplexed
        // connection), counting its round trips.
        let redis_client = redis::Client::open(server.url()).expect("a redis URL");
        let round_trips = Arc::new(AtomicU64::new(0));
        let connection = Counted {
            inner: redis::aio::ConnectionManager::new_with_config(
                redis_client,
                RedisStore::manager_config(),
            )
            .await
            .expect("connect to redis"),
            round_trips: round_trips.clone(),
        };
        let store = RedisStore::from_connection(connection)
            .prefix(format!("bench-{}", uuid::Uuid::new_v4()));
        let memory = MemoryStore::with_max_records(10_000_000);
        let bare = serve(server_app::bare()).await;
        let memory = serve(server_app::bare().layer(IdempotencyLayer::new(memory).ttl(TTL))).await;
        let redis = serve(server_app::bare().layer(IdempotencyLayer::new(store).ttl(TTL))).await;
        // The connection `RedisStore::connect_cluster` would open, counted
        // the same way (a redirection the cluster client follows is not
        // counted: after the warm-up there are none).
        let with_cluster = env_or("CLUSTER", 1) == 1;
        let cluster = if with_cluster {
            let cluster = redis_server::cluster::RedisCluster::shared();
            let cluster_connection = Counted {
                inner: RedisStore::cluster_builder(cluster.urls())
                    .build()
                    .expect("cluster URLs")
                    .get_async_connection()
                    .await
                    .expect("connect to the cluster"),
                round_trips: round_trips.clone(),
            };
            let cluster_store = RedisStore::from_connection(cluster_connection)
                .prefix(format!("bench-{}", uuid::Uuid::new_v4()));
            serve(server_app::bare().layer(IdempotencyLayer::new(cluster_store).ttl(TTL))).await
        } else {
            bare
        };
        let variant = |name, addr: SocketAddr, keys, redis| Variant {
            name,
            uri: format!("http://{addr}/emails"),
            keys,
            redis,
            rates: Vec::new(),
            round_trips_per_request: Vec::new(),
        };
        let mut variants = vec![
            variant("bare", bare, Keys::None, false),
            variant("memory_new_keys", memory, Keys::New, false),
            variant("redis_new_keys", redis, Keys::New, true),
            variant("memory_replay", memory, Keys::Replayed, false),
            variant("redis_replay", redis, Keys::Replayed, true),
        ];
        if with_cluster {
            variants.push(variant("cluster_new_keys", cluster, Keys::New, true));
            variants.push(variant("cluster_replay", cluster, Keys::Replayed, true));
        }
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let next = Arc::new(AtomicU64::new(0));
        // Warm up: open the connections, store the replayed keys.
        for variant in &variants {
            round(&client, variant, IN_FLIGHT, &next).await;
        }
        for _ in 0..rounds {
            for variant in &mut variants {
                let before = round_trips.load(Ordering::Relaxed);
                let rate = round(&client, variant, requests, &next).await;
                let after = round_trips.load(Ordering::Relaxed);
                variant.rates.push(rate);
                if variant.redis {
                    let sent = (requests / IN_FLIGHT * IN_FLIGHT) as f64;
                    variant
                        .round_trips_per_request
                        .push((after - before) as f64 / sent);
                }
            }
        }
        let bare_rate = median(&mut variants[0].rates.clone());
        println!("{IN_FLIGHT} in flight, {rounds} rounds of {requests} requests, median of rounds");
        println!(
            "{:<18} {:>10} {:>9} {:>22}",
            "variant", "req/s", "vs bare", "redis round trips/req"
        );
        for variant in &mut variants {
            let rate = median(&mut variant.rates);
            let round_trips = if variant.redis {
                format!("{:.2}", median(&mut variant.round_trips_per_request))
            } else {
                String::new()
            };
            println!(
                "{:<18} {:>10.0} {:>8.3}x {:>22}",
                variant.name,
                rate,
                rate / bare_rate,
                round_trips
            );
        }
    });
}
