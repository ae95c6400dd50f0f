//! tower-reissue around a hyper-util client.
//!
//! A local flaky server answers: `GET /items/42` with two 503s then 200;
//! `POST /emails` with a 500 *after* sending the email; `POST /payments` with
//! a 503 (before any work) then 201. The client retries the GET, refuses to
//! repeat the keyless email, and retries the payment (sent through
//! `IdempotencyKeyLayer`) under one idempotency key.
//!
//! Run: `cargo run --example hyper_client`

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::{
    Attempts, Backoff, IdempotencyKey, IdempotencyKeyLayer, ReplayBody, RetryLayer,
};

type Log = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Answers by path and by how many times the path was hit; logs each
/// request's idempotency key.
async fn start_server(log: Log) -> std::net::SocketAddr {
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
                    .unwrap_or("-")
                    .to_owned();
                let hits = {
                    let mut log = log.lock().unwrap();
                    let entry = log.entry(path.clone()).or_default();
                    entry.push(key);
                    entry.len()
                };
                let status = match (path.as_str(), hits) {
                    ("/items/42", 1 | 2) => 503,
                    ("/items/42", _) => 200,
                    ("/emails", _) => 500,
                    ("/payments", 1) => 503,
                    ("/payments", _) => 201,
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
    let addr = start_server(log.clone()).await;

    // The hyper-util client sends `ReplayBody<B>`, so retries can resend bodies.
    let hyper_client =
        Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let retry = RetryLayer::new()
        .max_attempts(4)
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_secs(1),
        ))
        .on_give_up(|event| {
            println!(
                "  gave up after {} attempt(s): {}",
                event.attempts, event.reason
            )
        });
    // Plain retries: idempotent methods, and anything the server provably
    // did not process.
    let client = retry.clone().layer(hyper_client.clone());
    // For an API that deduplicates by `Idempotency-Key`: every POST gets a
    // key, reused on each retry, so its retries are safe too.
    let keyed = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry)
        .service(hyper_client);

    for (method, path) in [
        ("GET", "/items/42"),
        ("POST", "/emails"),
        ("POST", "/payments"),
    ] {
        println!("{method} {path}");
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from_static(b"{\"amount\":100}")))?;
        let response = if path == "/payments" {
            keyed.clone().oneshot(request).await?
        } else {
            client.clone().oneshot(request).await?
        };
        let attempts = response
            .extensions()
            .get::<Attempts>()
            .map_or(1, |a| a.get());
        let key = response
            .extensions()
            .get::<IdempotencyKey>()
            .map(|k| k.to_string());
        println!(
            "  -> {} after {attempts} attempt(s), key {}",
            response.status(),
            key.as_deref().unwrap_or("none")
        );
    }

    let log = log.lock().unwrap();
    println!("server saw: {log:#?}");
    assert_eq!(
        log["/items/42"].len(),
        3,
        "the GET is retried through two 503s"
    );
    assert_eq!(
        log["/emails"].len(),
        1,
        "a 500 on a non-idempotent POST is not repeated"
    );
    let payment_keys = &log["/payments"];
    assert_eq!(payment_keys.len(), 2);
    assert_eq!(
        payment_keys[0], payment_keys[1],
        "one key for every attempt of one payment"
    );
    Ok(())
}
