//! A classifier for a vendor that says more in a header than in its status.
//!
//! Some AWS services answer `400` for both "you sent garbage" and "slow
//! down", and tell them apart in `x-amzn-ErrorType`. This classifier retries
//! throttling and internal errors by that header and leaves everything else
//! to `DefaultClassifier`.
//!
//! Run: `cargo run --example custom_classifier`

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_reissue::classify::{Outcome, RequestView};
use tower_reissue::{
    Attempts, Classifier, DefaultClassifier, Processed, ReplayBody, RetryLayer, Verdict,
};

/// Reads `x-amzn-ErrorType` first, then falls back to the default table.
#[derive(Clone, Default)]
struct AwsErrorType {
    fallback: DefaultClassifier,
}

impl Classifier for AwsErrorType {
    fn classify(&self, request: &RequestView<'_>, outcome: &Outcome<'_>) -> Verdict {
        let error_type = outcome
            .headers()
            .and_then(|h| h.get("x-amzn-errortype"))
            .and_then(|v| v.to_str().ok())
            // The value may carry a suffix such as `:http://internal.amazon.com/...`.
            .map(|v| v.split(':').next().unwrap_or(v));
        match error_type {
            // Rejected before any work was done, to pace clients: throttling
            // is safe to repeat for any method, waits on the longer
            // throttling backoff (from 1 s) and costs the budget less.
            Some("ThrottlingException" | "TooManyRequestsException") => Verdict::throttled(None),
            Some("ServiceException" | "InternalFailure") => Verdict::transient(Processed::Maybe),
            Some("ValidationException" | "AccessDeniedException") => Verdict::Permanent,
            _ => self.fallback.classify(request, outcome),
        }
    }
}

/// A vendor API that throttles the first two calls with a 400.
async fn start_vendor(calls: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let response = if n <= 2 {
                        Response::builder()
                            .status(400)
                            .header(
                                "x-amzn-ErrorType",
                                "ThrottlingException:http://internal.amazon.com/coral/",
                            )
                            .body(Full::new(Bytes::from("{\"message\":\"Rate exceeded\"}")))
                    } else {
                        Response::builder()
                            .status(200)
                            .body(Full::new(Bytes::from("{\"ok\":true}")))
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::main]
async fn main() -> Result<(), tower_reissue::BoxError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let addr = start_vendor(calls.clone()).await;

    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::new()
                .max_attempts(5)
                .classifier(AwsErrorType::default()),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    // A POST: the default table would never retry a 400, and a POST without
    // a key only when the server provably did not act. Throttling says so.
    let request = Request::post(format!("http://{addr}/2015-03-31/functions/f/invocations"))
        .body(Full::new(Bytes::from("{}")))?;
    let response = client.oneshot(request).await?;
    let attempts = response
        .extensions()
        .get::<Attempts>()
        .map_or(1, |a| a.get());
    println!(
        "status {} after {attempts} attempts ({} calls reached the vendor)",
        response.status(),
        calls.load(Ordering::SeqCst)
    );
    assert!(response.status().is_success());
    assert_eq!(attempts, 3);
    Ok(())
}
