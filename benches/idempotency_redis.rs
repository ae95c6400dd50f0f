//! An axum handler bare, behind IdempotencyLayer with MemoryStore, and behind
//! IdempotencyLayer with RedisStore (a `redis-server` on loopback, started
//! here unless `REDIS_URL` is set), in one run.
//!
//! Two groups: `in_process` calls the Router with `oneshot` (the layer's cost
//! with the store's), `loopback_http` sends real HTTP/1.1 requests over
//! keep-alive connections to the same apps served on 127.0.0.1 (what a
//! client sees).

mod common;

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_reissue::{IdempotencyLayer, MemoryStore, RedisStore};

const PAYLOAD: &str =
    r#"{"to":"someone@example.com","subject":"Your receipt","template":"receipt-v2"}"#;
const TTL: Duration = Duration::from_secs(300);

async fn send_email(body: String) -> (StatusCode, String) {
    (
        StatusCode::CREATED,
        format!(r#"{{"id":"msg_1","bytes":{}}}"#, body.len()),
    )
}

fn app() -> Router {
    Router::new().route("/emails", post(send_email))
}

fn request<B: From<&'static str>>(uri: &str, key: Option<String>) -> Request<B> {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(B::from(PAYLOAD)).unwrap()
}

async fn call(app: &Router, key: Option<String>) {
    let response = app
        .clone()
        .oneshot(request::<Body>("/emails", key))
        .await
        .unwrap();
    assert!(response.status().is_success());
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn send(client: &Client<HttpConnector, Full<Bytes>>, uri: &str, key: Option<String>) {
    let response = client.request(request(uri, key)).await.unwrap();
    assert!(response.status().is_success());
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

fn bench(c: &mut Criterion) {
    let redis = redis_server::RedisServer::shared();
    // One thread runs the client, the apps and the Redis connection, leaving
    // the other core to redis-server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("bench-{}", uuid::Uuid::new_v4());
    let redis_store = runtime
        .block_on(RedisStore::connect(redis.url()))
        .expect("connect to redis")
        .prefix(prefix);
    let apps = [
        ("bare", app()),
        (
            "memory",
            app().layer(IdempotencyLayer::new(MemoryStore::with_max_records(1_000_000)).ttl(TTL)),
        ),
        (
            "redis",
            app().layer(IdempotencyLayer::new(redis_store).ttl(TTL)),
        ),
    ];
    let next_key = AtomicU64::new(0);
    let new_key = || Some(format!("key-{}", next_key.fetch_add(1, Ordering::Relaxed)));
    let replayed = || Some("replayed".to_owned());

    let mut group = c.benchmark_group("in_process");
    group.throughput(Throughput::Elements(1));
    for (name, app) in &apps {
        if *name == "bare" {
            group.bench_function("bare", |b| b.to_async(&runtime).iter(|| call(app, None)));
            continue;
        }
        group.bench_function(format!("{name}_new_keys"), |b| {
            b.to_async(&runtime).iter(|| call(app, new_key()))
        });
        runtime.block_on(call(app, replayed()));
        group.bench_function(format!("{name}_replay"), |b| {
            b.to_async(&runtime).iter(|| call(app, replayed()))
        });
    }
    group.finish();

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut group = c.benchmark_group("loopback_http");
    group.throughput(Throughput::Elements(1));
    for (name, app) in &apps {
        let addr = runtime.block_on(serve(app.clone()));
        let uri = format!("http://{addr}/emails");
        let (client, uri) = (&client, uri.as_str());
        if *name == "bare" {
            group.bench_function("bare", |b| {
                b.to_async(&runtime).iter(|| send(client, uri, None))
            });
            continue;
        }
        group.bench_function(format!("{name}_new_keys"), |b| {
            b.to_async(&runtime).iter(|| send(client, uri, new_key()))
        });
        group.bench_function(format!("{name}_replay"), |b| {
            b.to_async(&runtime).iter(|| send(client, uri, replayed()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench
}
criterion_main!(benches);
