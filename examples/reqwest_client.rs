//! tower-reissue around `reqwest::Client` (feature `reqwest`).
//!
//! A local flaky API answers `POST /payments` with a 503 (before any work),
//! then 201; `POST /emails` with a 500 after sending. The payment is retried
//! under one idempotency key; the keyless email is not resent.
//!
//! Run: `cargo run --example reqwest_client --features reqwest`

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::{Attempts, Backoff, IdempotencyKey, IdempotencyKeyLayer, RetryLayer};

/// Records (path, idempotency key) of every request.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn start_api(log: Log) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let path = req.uri().path().to_owned();
                let key = req
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let seen = {
                    let mut log = log.lock().unwrap();
                    log.push((path.clone(), key));
                    log.iter().filter(|(p, _)| *p == path).count()
                };
                let status = match (path.as_str(), seen) {
                    ("/payments", 1) => 503,
                    ("/payments", _) => 201,
                    ("/emails", _) => 500,
                    _ => 404,
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
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
    let log: Log = Arc::default();
    let addr = start_api(log.clone()).await;

    let http = reqwest::Client::builder().no_proxy().build()?;
    let retry = RetryLayer::new().backoff(Backoff::exponential(
        Duration::from_millis(20),
        Duration::from_secs(1),
    ));
    // The payment API deduplicates by `Idempotency-Key`: give every payment a
    // key, and its retries are safe.
    let payments = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry.clone())
        .service(http.clone());
    // The email API knows nothing of keys: a POST that may have been
    // processed is never repeated.
    let emails = retry.layer(http.clone());

    let request = http
        .post(format!("http://{addr}/payments"))
        .body("{\"amount\":100}")
        .build()?;
    let response = payments.oneshot(request).await?;
    let attempts = response
        .extensions()
        .get::<Attempts>()
        .map_or(1, |a| a.get());
    let key = response
        .extensions()
        .get::<IdempotencyKey>()
        .map(|k| k.to_string())
        .unwrap_or_default();
    println!(
        "POST /payments -> {} after {attempts} attempt(s), key {key}",
        response.status()
    );

    let request = http
        .post(format!("http://{addr}/emails"))
        .body("{\"to\":\"ada@example.com\"}")
        .build()?;
    let response = emails.oneshot(request).await?;
    let attempts = response
        .extensions()
        .get::<Attempts>()
        .map_or(1, |a| a.get());
    println!(
        "POST /emails   -> {} after {attempts} attempt(s), not repeated",
        response.status()
    );

    let log = log.lock().unwrap();
    let payments: Vec<_> = log.iter().filter(|(p, _)| p == "/payments").collect();
    let emails = log.iter().filter(|(p, _)| p == "/emails").count();
    println!(
        "the API saw {} payment attempts (one key: {}) and {emails} email attempt(s)",
        payments.len(),
        payments[0].1 == payments[1].1
    );
    assert_eq!(payments.len(), 2);
    assert_eq!(payments[0].1, payments[1].1);
    assert_eq!(emails, 1);
    Ok(())
}
