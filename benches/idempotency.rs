//! Requests per second of an axum handler, bare and behind IdempotencyLayer
//! (new keys, replays, and requests without a key), in one run.
//!
//! The Router is called in process with `tower::ServiceExt::oneshot`, so the
//! figures are the layer's own cost without socket noise.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_reissue::{IdempotencyLayer, MemoryStore};

const PAYLOAD: &str =
    r#"{"to":"someone@example.com","subject":"Your receipt","template":"receipt-v2"}"#;

async fn send_email(body: String) -> (StatusCode, String) {
    (
        StatusCode::CREATED,
        format!(r#"{{"id":"msg_1","bytes":{}}}"#, body.len()),
    )
}

fn app() -> Router {
    Router::new().route("/emails", post(send_email))
}

fn request(key: Option<String>) -> Request<Body> {
    let mut request = Request::post("/emails").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Body::from(PAYLOAD)).unwrap()
}

async fn call(app: &Router, request: Request<Body>) {
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = app();
    let layered = app().layer(IdempotencyLayer::new(MemoryStore::new()));
    let next_key = AtomicU64::new(0);

    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare", |b| {
        b.to_async(&runtime).iter(|| call(&bare, request(None)))
    });
    group.bench_function("layer_no_key", |b| {
        b.to_async(&runtime).iter(|| call(&layered, request(None)))
    });
    group.bench_function("layer_new_keys", |b| {
        b.to_async(&runtime).iter(|| {
            let key = format!("key-{}", next_key.fetch_add(1, Ordering::Relaxed));
            call(&layered, request(Some(key)))
        })
    });
    runtime.block_on(call(&layered, request(Some("replayed".to_owned()))));
    group.bench_function("layer_replay", |b| {
        b.to_async(&runtime)
            .iter(|| call(&layered, request(Some("replayed".to_owned()))))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench
}
criterion_main!(benches);
