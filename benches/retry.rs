//! Success-path cost of `Retry`, against the bare service, `tower::retry`
//! with an equivalent policy (attempt limit, budget, request cloning) and
//! `tower-resilience-retry`, in one run: a GET with an empty body whose inner
//! service answers at once, and a POST with a 1 KiB body that the inner
//! service reads to the end.

mod common;
mod retry_peers;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use http::Request;
use std::hint::black_box;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_reissue::RetryLayer;

use retry_peers::{
    TowerPolicy, get_request, post_request, reading_upstream, tower_resilience, upstream,
};

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let group = &mut c.benchmark_group("success_path");
    let tower_retry = tower::retry::RetryLayer::new(TowerPolicy::new());

    bench(group, &rt, "bare", upstream(), get_request);
    bench(
        group,
        &rt,
        "tower_retry",
        tower_retry.layer(upstream()),
        get_request,
    );
    let resilience = tower_resilience().layer(upstream());
    bench(group, &rt, "tower_resilience", resilience, get_request);
    let reissue = RetryLayer::new().layer(upstream());
    bench(group, &rt, "tower_reissue", reissue, get_request);
    let no_budget = RetryLayer::new().no_budget().layer(upstream());
    bench(
        group,
        &rt,
        "tower_reissue_no_budget",
        no_budget,
        get_request,
    );

    bench(group, &rt, "bare_post", reading_upstream(), post_request);
    let tower_retry_post = tower_retry.layer(reading_upstream());
    bench(
        group,
        &rt,
        "tower_retry_post",
        tower_retry_post,
        post_request,
    );
    let reissue_post = RetryLayer::new().layer(reading_upstream());
    bench(group, &rt, "tower_reissue_post", reissue_post, post_request);
}

/// One request made by `request` through a clone of `client` per iteration,
/// as a caller sharing the client would.
fn bench<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    client: S,
    request: fn() -> Request<B>,
) where
    S: Service<Request<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let svc = client.clone();
            async move { black_box(svc.oneshot(request()).await.unwrap()) }
        })
    });
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = success_path
}
criterion_main!(benches);
