//! Per-request cost of IdempotencyKeyLayer against the bare service, and of
//! the key slot the retry layer gives POSTs, in one run.

mod common;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response};
use http_body_util::Empty;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use tower::{Layer, ServiceExt};
use tower_reissue::{IdempotencyKeyLayer, RetryLayer};

type Answer = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

fn upstream<B>() -> tower::util::ServiceFn<impl FnMut(Request<B>) -> Answer + Clone> {
    tower::service_fn(|_req: Request<B>| ready(Ok(Response::new(Empty::new()))))
}

fn request(method: Method) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri("http://api.example/emails")
        .header("content-type", "application/json")
        .body(Empty::new())
        .unwrap()
}

fn key_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("idempotency_key");

    macro_rules! bench {
        ($name:expr, $service:expr, $method:expr) => {{
            let service = $service;
            group.bench_function($name, |b| {
                b.to_async(&rt).iter(|| {
                    let service = service.clone();
                    async move { black_box(service.oneshot(request($method)).await.unwrap()) }
                })
            });
        }};
    }

    bench!("post/bare", upstream::<Empty<Bytes>>(), Method::POST);
    bench!(
        "post/key_layer_v4",
        IdempotencyKeyLayer::new().layer(upstream::<Empty<Bytes>>()),
        Method::POST
    );
    bench!(
        "post/key_layer_v7",
        IdempotencyKeyLayer::new()
            .uuid_v7()
            .layer(upstream::<Empty<Bytes>>()),
        Method::POST
    );
    bench!(
        "get/key_layer_passthrough",
        IdempotencyKeyLayer::new().layer(upstream::<Empty<Bytes>>()),
        Method::GET
    );
    // The retry layer alone: a GET gets no key slot, a POST gets one.
    bench!(
        "get/retry",
        RetryLayer::new().layer(upstream()),
        Method::GET
    );
    bench!(
        "post/retry",
        RetryLayer::new().layer(upstream()),
        Method::POST
    );
    bench!(
        "post/key_outside_retry",
        IdempotencyKeyLayer::new().layer(RetryLayer::new().layer(upstream())),
        Method::POST
    );
    bench!(
        "post/retry_outside_key",
        RetryLayer::new().layer(IdempotencyKeyLayer::new().layer(upstream())),
        Method::POST
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = key_layer
}
criterion_main!(benches);
