//! Requests per second of an axum handler, bare, behind IdempotencyLayer
//! (new keys, replays, and requests without a key) and behind the peer
//! axum-idempotent (new keys, replays), in one run.
//!
//! The Router is called in process with `tower::ServiceExt::oneshot`, so the
//! figures are the layer's own cost without socket noise. The workload, and
//! what axum-idempotent needs to run, are in `common/server_app.rs`;
//! `benches/idempotency_instructions.rs` counts the instructions of the same
//! requests.

mod common;
#[path = "common/server_app.rs"]
mod server_app;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderValue;
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(app: &Router, key: Option<&str>, cookie: Option<&HeaderValue>) {
    let request = server_app::request("/emails", key, cookie);
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = server_app::bare();
    let layered = server_app::tower_reissue();
    let (peer, cookie) = runtime.block_on(server_app::axum_idempotent());
    let cookie = Some(&cookie);
    let next_key = AtomicU64::new(0);
    let new_key = || format!("key-{}", next_key.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group("idempotency");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare", |b| {
        b.to_async(&runtime).iter(|| call(&bare, None, None))
    });
    group.bench_function("layer_no_key", |b| {
        b.to_async(&runtime).iter(|| call(&layered, None, None))
    });
    group.bench_function("layer_new_keys", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&layered, Some(&new_key()), None).await })
    });
    group.bench_function("axum_idempotent_new_keys", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&peer, Some(&new_key()), cookie).await })
    });
    runtime.block_on(call(&layered, Some("replayed"), None));
    runtime.block_on(call(&peer, Some("replayed"), cookie));
    group.bench_function("layer_replay", |b| {
        b.to_async(&runtime)
            .iter(|| call(&layered, Some("replayed"), None))
    });
    group.bench_function("axum_idempotent_replay", |b| {
        b.to_async(&runtime)
            .iter(|| call(&peer, Some("replayed"), cookie))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench
}
criterion_main!(benches);
