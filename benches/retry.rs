//! Success-path cost of `Retry`: a GET with an empty body whose inner service
//! answers at once, against the bare service and `tower::retry::Retry` with an
//! equivalent policy (attempt limit, budget, request cloning), in one run.

mod common;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, ServiceExt};
use tower_reissue::{Attempts, RetryLayer};

type Answer = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

/// An inner service that answers 200 at once, whatever the body type.
fn upstream<B>() -> tower::util::ServiceFn<impl FnMut(Request<B>) -> Answer + Clone> {
    tower::service_fn(|_req: Request<B>| ready(Ok(Response::new(Empty::new()))))
}

fn request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/items/42")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap()
}

/// The policy `tower::retry` needs to do what `RetryLayer` does by default:
/// up to 3 attempts on 5xx, a 20% budget, requests cloned for replay, and
/// the number of attempts reported in the response's extensions.
#[derive(Clone)]
struct TowerPolicy {
    attempts_left: usize,
    budget: Arc<TpsBudget>,
}

impl tower::retry::Policy<Request<Empty<Bytes>>, Response<Empty<Bytes>>, Infallible>
    for TowerPolicy
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<Empty<Bytes>>,
        result: &mut Result<Response<Empty<Bytes>>, Infallible>,
    ) -> Option<Self::Future> {
        match result {
            Ok(res) if res.status().is_server_error() => {
                if self.attempts_left == 0 || !self.budget.withdraw() {
                    res.extensions_mut()
                        .insert(Attempts(3 - self.attempts_left as u32));
                    return None;
                }
                self.attempts_left -= 1;
                Some(tokio::time::sleep(Duration::from_millis(100)))
            }
            Ok(res) => {
                self.budget.deposit();
                res.extensions_mut()
                    .insert(Attempts(3 - self.attempts_left as u32));
                None
            }
            Err(never) => match *never {},
        }
    }

    fn clone_request(&mut self, req: &Request<Empty<Bytes>>) -> Option<Request<Empty<Bytes>>> {
        let mut clone = Request::new(Empty::new());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

fn success_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("success_path");

    let bare = upstream::<Empty<Bytes>>();
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let svc = bare.clone();
            async move { black_box(svc.oneshot(request()).await.unwrap()) }
        })
    });

    let tower_retry = tower::retry::RetryLayer::new(TowerPolicy {
        attempts_left: 2,
        budget: Arc::new(TpsBudget::default()),
    })
    .layer(upstream::<Empty<Bytes>>());
    group.bench_function("tower_retry", |b| {
        b.to_async(&rt).iter(|| {
            let svc = tower_retry.clone();
            async move { black_box(svc.oneshot(request()).await.unwrap()) }
        })
    });

    let reissue = RetryLayer::new().layer(upstream());
    group.bench_function("tower_reissue", |b| {
        b.to_async(&rt).iter(|| {
            let svc = reissue.clone();
            async move { black_box(svc.oneshot(request()).await.unwrap()) }
        })
    });

    let reissue_no_budget = RetryLayer::new().no_budget().layer(upstream());
    group.bench_function("tower_reissue_no_budget", |b| {
        b.to_async(&rt).iter(|| {
            let svc = reissue_no_budget.clone();
            async move { black_box(svc.oneshot(request()).await.unwrap()) }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = success_path
}
criterion_main!(benches);
