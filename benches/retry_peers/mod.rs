//! What the retry benches share: the requests, the inner services, and the
//! peers configured to do what `RetryLayer` does by default.
// Each bench uses the part of this module it compares.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;
use tower::Service;
use tower::retry::budget::{Budget, TpsBudget};
use tower_reissue::Attempts;

/// The body of every POST: 1 KiB.
pub static POST_BODY: [u8; 1024] = [b'x'; 1024];

/// The GET of every bench.
pub fn get_request() -> Request<Empty<Bytes>> {
    Request::get("http://api.example/items/42")
        .header("accept", "application/json")
        .body(Empty::new())
        .unwrap()
}

/// A POST with a 1 KiB body, to `uri`.
pub fn post_request_to(uri: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(&POST_BODY)))
        .unwrap()
}

/// The POST of the in-process benches.
pub fn post_request() -> Request<Full<Bytes>> {
    post_request_to("http://api.example/items")
}

type Answer = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

/// An inner service that answers 200 at once, whatever the body type.
pub fn upstream<B>() -> tower::util::ServiceFn<impl FnMut(Request<B>) -> Answer + Clone> {
    tower::service_fn(|_req: Request<B>| ready(Ok(Response::new(Empty::new()))))
}

/// An inner service that reads the request body to the end, then answers
/// 200 (400 if the body fails).
pub fn reading_upstream<B: Body>()
-> impl Service<Request<B>, Response = Response<Empty<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(read_then_answer::<B>)
}

async fn read_then_answer<B: Body>(req: Request<B>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut response = Response::new(Empty::new());
    if req.into_body().collect().await.is_err() {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// The policy `tower::retry` needs to do what `RetryLayer` does by default:
/// up to 3 attempts on 5xx or an error, a 20% budget, requests cloned for
/// replay (body included), and the number of attempts reported in the
/// response's extensions.
#[derive(Clone)]
pub struct TowerPolicy {
    attempts_left: usize,
    budget: Arc<TpsBudget>,
}

impl TowerPolicy {
    pub fn new() -> Self {
        TowerPolicy {
            attempts_left: 2,
            budget: Arc::new(TpsBudget::default()),
        }
    }

    fn attempts(&self) -> Attempts {
        Attempts(3 - self.attempts_left as u32)
    }
}

impl<B: Clone, RB, E> tower::retry::Policy<Request<B>, Response<RB>, E> for TowerPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(res) if !res.status().is_server_error() => {
                self.budget.deposit();
                res.extensions_mut().insert(self.attempts());
                None
            }
            failed => {
                if self.attempts_left == 0 || !self.budget.withdraw() {
                    if let Ok(res) = failed {
                        res.extensions_mut().insert(self.attempts());
                    }
                    return None;
                }
                self.attempts_left -= 1;
                Some(tokio::time::sleep(Duration::from_millis(100)))
            }
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// `tower-resilience-retry` doing what `RetryLayer` does by default: 3
/// attempts, a retry on 5xx.
pub fn tower_resilience<Req, RB, E>() -> tower_resilience_retry::RetryLayer<Req, Response<RB>, E> {
    tower_resilience_retry::RetryLayer::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(100))
        .retry_on_response(|res: &Response<RB>| res.status().is_server_error())
        .build()
}

/// The least a retry layer does on the success path and keeps the design's
/// contract: a copy of the request (body included) kept until the attempt
/// ends, so that it could be sent again; a clone of the inner service to
/// send it with; a deposit in the retry budget; the status looked at; and
/// the `Attempts` extension on the response. It never retries (there is no
/// classifier, backoff, deadline or span), so it is not a retry layer: it is
/// the baseline the benches measure retry layers against, and one that does
/// this much cannot cost less.
#[derive(Clone)]
pub struct Minimal<S> {
    inner: S,
    budget: tower_reissue::RetryBudget,
}

impl<S> Minimal<S> {
    pub fn new(inner: S) -> Self {
        Minimal {
            inner,
            budget: tower_reissue::RetryBudget::new(0.2),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Minimal<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    B: Clone,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = MinimalFuture<S::Future, S, Request<B>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        let service = self.inner.clone();
        MinimalFuture {
            future: self.inner.call(request),
            _kept: (service, copy),
            budget: self.budget.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Minimal`].
    pub struct MinimalFuture<F, S, R> {
        #[pin]
        future: F,
        // What a retry would need: the service and the request's copy.
        _kept: (S, R),
        budget: tower_reissue::RetryBudget,
    }
}

impl<F, S, R, RB, E> std::future::Future for MinimalFuture<F, S, R>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.future.poll(cx));
        if let Ok(response) = &mut result {
            if !response.status().is_server_error() {
                this.budget.deposit();
            }
            response.extensions_mut().insert(Attempts(1));
        }
        std::task::Poll::Ready(result)
    }
}
