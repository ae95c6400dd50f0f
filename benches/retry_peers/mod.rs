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
