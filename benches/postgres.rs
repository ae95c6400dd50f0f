//! `PostgresStore` over loopback HTTP against a real PostgreSQL (started here
//! by `tests/pg_server`, or `DATABASE_URL`), in the same run as its floors:
//! axum apps on 127.0.0.1 whose handler INSERTs one row into `payments`.
//!
//! ```text
//! cargo bench --features postgres --bench postgres
//! ```
//!
//! Variants:
//!
//! * `bare`: no idempotency layer, the INSERT autocommitted on a `PgPool`;
//! * `minimal`: [`MinimalLayer`], the least a layer that commits its key
//!   with the handler's writes does (claim, BEGIN, the INSERT, a fenced
//!   UPDATE, COMMIT): the floor no transactional layer can beat;
//! * `store_new`: `IdempotencyLayer` on a `PostgresStore`, a fresh key on
//!   every request;
//! * `store_replay`: the same, replaying a few keys already completed.
//!
//! Criterion measures each at 1 and at 32 requests in flight (32 senders,
//! each waiting for its answer before sending the next, over keep-alive
//! connections of a hyper-util legacy client). Then, for the summary, the
//! variants run at 32 in flight in interleaved rounds (`ROUNDS`, default 5,
//! of `REQUESTS`, default 2,048, requests each; the median of the rounds,
//! and of each round's own ratio of the store to the floor), since on a
//! shared machine one long measurement per variant mostly measures what
//! else ran at the time. The summary also gives the CPU time of this
//! process (client and apps, not PostgreSQL) per request.
//! `PROFILE=VARIANT` runs only that variant, for a profiler.
//!
//! Round trips to PostgreSQL are counted by a proxy ([`proxy`]) between a
//! second copy of each app's pools and the server, which reads the frontend
//! protocol: a Sync ('S') or a simple Query ('Q') is one round trip. A Sync
//! with no extended-protocol message before it is sqlx's ping on releasing
//! a connection to its pool (sqlx 0.8 pings every connection it takes
//! back, in a spawned task, off the request's path): those are counted
//! apart. The timed runs go straight to PostgreSQL.
#![allow(clippy::print_stderr)]

#[path = "../tests/pg_server/mod.rs"]
mod pg_server;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tower_reissue::idempotency::PgTransaction;
use tower_reissue::{IdempotencyLayer, PostgresStore};

const IN_FLIGHT: u64 = 32;
/// Connections per pool: more than `IN_FLIGHT`, so no request waits for one.
const CONNECTIONS: u32 = 64;
/// Keys completed before the replay runs; sender `i` replays key `i % REPLAYED`.
const REPLAYED: u64 = 8;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

// ---------------------------------------------------------------- handlers

async fn bare_pay(State(pool): State<PgPool>, body: String) -> (StatusCode, &'static str) {
    sqlx::query("INSERT INTO payments (reference) VALUES ($1)")
        .bind(&body)
        .execute(&pool)
        .await
        .expect("insert");
    (StatusCode::CREATED, "paid")
}

async fn minimal_pay(Extension(tx): Extension<MinimalTx>, body: String) -> impl IntoResponse {
    let mut slot = tx.0.lock().await;
    let conn = slot.as_mut().expect("the minimal layer's transaction");
    sqlx::query("INSERT INTO payments (reference) VALUES ($1)")
        .bind(&body)
        .execute(&mut **conn)
        .await
        .expect("insert");
    (StatusCode::CREATED, "paid")
}

async fn store_pay(tx: PgTransaction, body: String) -> (StatusCode, &'static str) {
    let mut conn = tx.acquire().await.unwrap();
    sqlx::query("INSERT INTO payments (reference) VALUES ($1)")
        .bind(&body)
        .execute(&mut *conn)
        .await
        .expect("insert");
    (StatusCode::CREATED, "paid")
}

// ------------------------------------------------------------ the floor

/// The floor: the least a layer does that commits its key in the handler's
/// transaction. Claim (one autocommitted `INSERT ... ON CONFLICT DO NOTHING
/// RETURNING`; no row means the key exists: 409), BEGIN, the handler (which
/// writes through [`MinimalTx`]), a fenced `UPDATE ... SET done = true`,
/// COMMIT. Nothing else: no fingerprint, no stored response and no replay,
/// no lease renewal, no release of the key when the handler fails, no
/// body buffering. A layer that keeps the contract does at least this.
#[derive(Clone)]
struct MinimalLayer(PgPool);

#[derive(Clone)]
struct Minimal<S> {
    inner: S,
    pool: PgPool,
}

/// The transaction the handler writes through.
#[derive(Clone)]
struct MinimalTx(Arc<tokio::sync::Mutex<Option<Transaction<'static, Postgres>>>>);

impl<S> tower_layer::Layer<S> for MinimalLayer {
    type Service = Minimal<S>;
    fn layer(&self, inner: S) -> Minimal<S> {
        Minimal {
            inner,
            pool: self.0.clone(),
        }
    }
}

static NEXT_TOKEN: AtomicI64 = AtomicI64::new(1);

impl<S> tower_service::Service<axum::extract::Request> for Minimal<S>
where
    S: tower_service::Service<axum::extract::Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::extract::Request) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let pool = self.pool.clone();
        Box::pin(async move {
            let key = request.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
            let claimed = sqlx::query(
                "INSERT INTO minimal_keys (key, token) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING RETURNING token",
            )
            .bind(&key)
            .bind(token)
            .fetch_optional(&pool)
            .await
            .expect("claim");
            if claimed.is_none() {
                return Ok(StatusCode::CONFLICT.into_response());
            }
            let tx = MinimalTx(Arc::new(tokio::sync::Mutex::new(Some(
                pool.begin().await.expect("begin"),
            ))));
            request.extensions_mut().insert(tx.clone());
            let response = inner.call(request).await?;
            let mut tx = tx.0.lock().await.take().expect("the transaction");
            let fenced =
                sqlx::query("UPDATE minimal_keys SET done = true WHERE key = $1 AND token = $2")
                    .bind(&key)
                    .bind(token)
                    .execute(&mut *tx)
                    .await
                    .expect("fenced update");
            if fenced.rows_affected() != 1 || !response.status().is_success() {
                let _ = tx.rollback().await;
                return Ok(StatusCode::CONFLICT.into_response());
            }
            tx.commit().await.expect("commit");
            Ok(response)
        })
    }
}

// ------------------------------------------------------------- the proxy

/// Round trips seen by [`proxy`].
#[derive(Default)]
struct RoundTrips {
    /// Syncs ending extended-protocol messages, and simple Queries.
    statements: AtomicU64,
    /// Syncs alone: sqlx's ping when a connection goes back to its pool.
    pings: AtomicU64,
}

impl RoundTrips {
    fn read(&self) -> (u64, u64) {
        (
            self.statements.load(Ordering::SeqCst),
            self.pings.load(Ordering::SeqCst),
        )
    }
}

/// A TCP proxy on a free loopback port to `upstream` (PostgreSQL), counting
/// the round trips of the frontend stream into `counts`.
async fn proxy(upstream: SocketAddr, counts: Arc<RoundTrips>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(upstream).await.unwrap();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, mut client_write) = client.into_split();
            let (mut server_read, server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            let counts = counts.clone();
            tokio::spawn(async move {
                let _ = frontend(client_read, server_write, &counts).await;
            });
        }
    });
    addr
}

/// Copies the frontend stream message by message, counting Syncs and Queries.
async fn frontend(
    from: impl tokio::io::AsyncRead + Unpin,
    to: impl tokio::io::AsyncWrite + Unpin,
    counts: &RoundTrips,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    let (mut from, mut to) = (BufReader::new(from), BufWriter::new(to));
    let mut body = Vec::new();
    // The startup packet has no type byte: length (counting itself), then
    // the protocol version or a request code. An SSL or GSS encryption
    // request is answered 'N' (no TLS here) and followed by the startup.
    loop {
        let length = from.read_u32().await?;
        body.resize(length as usize - 4, 0);
        from.read_exact(&mut body).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
        to.flush().await?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code != SSL_REQUEST && code != GSSENC_REQUEST {
            break;
        }
    }
    // Whether an extended-protocol message (Parse, Bind, Execute, ...) came
    // since the last Sync.
    let mut extended = false;
    loop {
        let tag = from.read_u8().await?;
        let length = from.read_u32().await?;
        body.resize(length as usize - 4, 0);
        from.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                counts.statements.fetch_add(1, Ordering::SeqCst);
            }
            b'S' if extended => {
                counts.statements.fetch_add(1, Ordering::SeqCst);
                extended = false;
            }
            b'S' => {
                counts.pings.fetch_add(1, Ordering::SeqCst);
            }
            _ => extended = true,
        }
        to.write_u8(tag).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
        if from.buffer().is_empty() {
            to.flush().await?;
        }
    }
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").map_or(0, |at| at + 3);
    let end = url[start..].find('/').map_or(url.len(), |at| start + at);
    let host_start = url[start..end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    format!("{}{addr}{}", &url[..host_start], &url[end..])
}

// ------------------------------------------------------------- the apps

#[derive(Clone, Copy, PartialEq)]
enum Keys {
    New,
    Replayed,
}

struct Variant {
    name: &'static str,
    uri: String,
    keys: Keys,
    rates: Vec<f64>,
    // CPU time of this process (client and app, not PostgreSQL) per
    // request, in microseconds, per round.
    cpu: Vec<f64>,
}

/// CPU time this process has used, user and system, in microseconds.
fn cpu_micros() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/payments")
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(CONNECTIONS)
        // As `PostgresStore`'s pools: no ping before each use.
        .test_before_acquire(false)
        .connect(url)
        .await
        .expect("connect")
}

/// The apps on the database at `url`: bare, minimal, and the store's (new
/// keys and replays share it); and their pools, to close them (the
/// server's `max_connections` does not fit two copies).
async fn apps(url: &str) -> ([String; 3], Vec<PgPool>) {
    let (bare_pool, minimal_pool) = (pool(url).await, pool(url).await);
    let store = PostgresStore::builder(url)
        .work_connections(CONNECTIONS)
        .connect()
        .await
        .expect("connect the store");
    let pools = vec![
        bare_pool.clone(),
        minimal_pool.clone(),
        store.pool().clone(),
    ];
    let bare = Router::new()
        .route("/payments", post(bare_pay))
        .with_state(bare_pool);
    let minimal = Router::new()
        .route("/payments", post(minimal_pay))
        .layer(MinimalLayer(minimal_pool));
    let store = Router::new()
        .route("/payments", post(store_pay))
        .layer(IdempotencyLayer::new(store));
    let uris = [serve(bare).await, serve(minimal).await, serve(store).await];
    (uris, pools)
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

async fn send(client: &HttpClient, uri: &str, keys: Keys, sender: u64) {
    let key = match keys {
        Keys::New => format!("key-{}", NEXT_KEY.fetch_add(1, Ordering::Relaxed)),
        Keys::Replayed => format!("replayed-{}", sender % REPLAYED),
    };
    let replayed = send_key(client, uri, key).await;
    // Only the store's app is sent replays.
    assert_eq!(replayed, keys == Keys::Replayed);
}

/// Sends one request with `key`; returns whether it was a replay.
async fn send_key(client: &HttpClient, uri: &str, key: String) -> bool {
    let request = Request::post(uri)
        .header("idempotency-key", key)
        .body(Full::from("order-17"))
        .unwrap();
    let response = client.request(request).await.expect("the app answers");
    assert_eq!(response.status(), StatusCode::CREATED);
    let replayed = response.headers().contains_key("idempotent-replayed");
    black_box(response.into_body().collect().await.unwrap().to_bytes());
    replayed
}

/// Sends `requests` requests from `IN_FLIGHT` senders, each waiting for its
/// answer before sending the next; returns how long they took.
async fn run(client: &HttpClient, uri: &str, keys: Keys, requests: u64) -> Duration {
    let left = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..IN_FLIGHT.min(requests) {
        let (client, uri, left) = (client.clone(), uri.to_owned(), left.clone());
        senders.spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                send(&client, &uri, keys, sender).await;
            }
        });
    }
    while let Some(sender) = senders.join_next().await {
        sender.expect("a sender failed");
    }
    started.elapsed()
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

const SCHEMA: &str = "CREATE TABLE payments (id bigserial PRIMARY KEY, reference text NOT NULL);
    CREATE TABLE minimal_keys (key text PRIMARY KEY, token bigint NOT NULL,
        done boolean NOT NULL DEFAULT false)";

fn main() {
    // `cargo bench` runs every bench binary with `--bench`; a test run
    // (`cargo test --benches`) without it only checks that this builds.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 5);
    let requests = env_or("REQUESTS", 2_048);
    // The apps and their pools on a runtime of their own, the client (and
    // criterion) on another, as two processes would.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(RoundTrips::default());
    let (proxied, (direct, direct_pools)) = servers.block_on(async {
        let url = pg_server::create_database(&pg_server::database_url(), "bench").await;
        let setup = PostgresStore::connect(&url).await.expect("connect");
        setup.migrate().await.expect("migrate");
        sqlx::raw_sql(SCHEMA).execute(setup.pool()).await.unwrap();
        let options = PgConnectOptions::from_str(&url).unwrap();
        let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .unwrap()
            .next()
            .expect("PostgreSQL's address");
        let proxied = via(&url, proxy(upstream, counts.clone()).await);
        let direct = apps(&url).await;
        (proxied, direct)
    });
    let variant = |name, at: usize, keys| Variant {
        name,
        uri: direct[at].clone(),
        keys,
        rates: Vec::new(),
        cpu: Vec::new(),
    };
    let mut variants = [
        variant("bare", 0, Keys::New),
        variant("minimal", 1, Keys::New),
        variant("store_new", 2, Keys::New),
        variant("store_replay", 2, Keys::Replayed),
    ];
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // Warm-up: open the connections (and prepare the statements on each),
    // and complete the replayed keys, on both copies of each app.
    client_runtime.block_on(async {
        for variant in &variants {
            if variant.keys == Keys::Replayed {
                // One at a time: a duplicate of a key in flight gets 409.
                for sender in 0..REPLAYED {
                    send_key(&client, &variant.uri, format!("replayed-{sender}")).await;
                }
            }
            run(
                &client,
                &variant.uri,
                variant.keys,
                4 * u64::from(CONNECTIONS),
            )
            .await;
        }
    });

    // `PROFILE=VARIANT`: only that variant, at 32 in flight, for a
    // profiler to sample; no criterion, no summary.
    if let Ok(only) = std::env::var("PROFILE") {
        let variant = variants.iter().find(|v| v.name == only).expect("a variant");
        client_runtime.block_on(run(&client, &variant.uri, variant.keys, 32 * 1024));
        return;
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    for in_flight in [1, IN_FLIGHT] {
        let mut group = criterion.benchmark_group(format!("postgres/{in_flight}_in_flight"));
        group.throughput(Throughput::Elements(1));
        for variant in &variants {
            group.bench_function(variant.name, |b| {
                b.to_async(&client_runtime).iter_custom(|iters| {
                    let (client, uri, keys) = (&client, &variant.uri, variant.keys);
                    async move {
                        if in_flight == 1 {
                            let started = Instant::now();
                            for _ in 0..iters {
                                send(client, uri, keys, 0).await;
                            }
                            started.elapsed()
                        } else {
                            run(client, uri, keys, iters).await
                        }
                    }
                });
            });
        }
        group.finish();
    }

    // Interleaved rounds for the summary.
    let sent = requests / IN_FLIGHT * IN_FLIGHT;
    client_runtime.block_on(async {
        for _ in 0..rounds {
            for variant in &mut variants {
                let cpu = cpu_micros();
                let took = run(&client, &variant.uri, variant.keys, sent).await;
                variant.cpu.push((cpu_micros() - cpu) / sent as f64);
                variant.rates.push(sent as f64 / took.as_secs_f64());
            }
        }
    });

    // Round trips: the same requests to the apps behind the proxy. The
    // pings run in tasks spawned as connections are released, after the
    // answers: wait for them before reading the counts.
    let counted_requests = 1_024;
    let round_trips: Vec<(f64, f64)> = client_runtime.block_on(async {
        for pool in direct_pools {
            pool.close().await;
        }
        let counted = servers.spawn(async move { apps(&proxied).await.0 });
        let counted = counted.await.unwrap();
        let mut out = Vec::new();
        for (variant, at) in variants.iter().zip([0, 1, 2, 2]) {
            // Open the connections and prepare the statements on each.
            run(
                &client,
                &counted[at],
                variant.keys,
                4 * u64::from(CONNECTIONS),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (statements, pings) = counts.read();
            run(&client, &counted[at], variant.keys, counted_requests).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (statements_after, pings_after) = counts.read();
            let per = |before: u64, after: u64| (after - before) as f64 / counted_requests as f64;
            out.push((per(statements, statements_after), per(pings, pings_after)));
        }
        out
    });

    criterion.final_summary();
    let rate = |at: usize| median(&mut variants[at].rates.clone());
    let (bare, minimal, store_new, replay) = (rate(0), rate(1), rate(2), rate(3));
    // The ratio within each round, whose variants ran back to back on the
    // same machine load: steadier than the ratio of two medians.
    let mut paired: Vec<f64> = variants[2]
        .rates
        .iter()
        .zip(&variants[1].rates)
        .map(|(store, floor)| store / floor)
        .collect();
    let paired = median(&mut paired);
    eprintln!();
    eprintln!(
        "PostgreSQL over loopback, {IN_FLIGHT} in flight: median of {rounds} interleaved rounds of {sent} requests"
    );
    eprintln!(
        "{:<14} {:>9} {:>9} {:>24} {:>11} {:>8} {:>14}",
        "variant",
        "req/s",
        "vs bare",
        "round trips/req (total)",
        "statements",
        "pings",
        "app CPU µs/req"
    );
    for (variant, (statements, pings)) in variants.iter_mut().zip(&round_trips) {
        eprintln!(
            "{:<14} {:>9.0} {:>8.3}x {:>24.2} {:>11.2} {:>8.2} {:>14.1}",
            variant.name,
            median(&mut variant.rates),
            median(&mut variant.rates) / bare,
            statements + pings,
            statements,
            pings,
            median(&mut variant.cpu)
        );
    }
    let extra = |at: usize| round_trips[at].0 - round_trips[0].0;
    eprintln!();
    eprintln!(
        "store_new / minimal  {:.3}x (median of the rounds' own ratios: {paired:.3}x; goal >= 0.9x)",
        store_new / minimal
    );
    eprintln!("store_new / bare     {:.3}x", store_new / bare);
    eprintln!("store_replay / bare  {:.3}x", replay / bare);
    eprintln!(
        "round trips on the request's path beyond bare: minimal {:+.2}, store_new {:+.2} (goal <= +4), store_replay {:+.2} (goal <= +1)",
        extra(1),
        extra(2),
        extra(3)
    );
}
