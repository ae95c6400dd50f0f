//! The server half: an axum API whose `POST /emails` runs once per
//! `Idempotency-Key`, however often a client retries.
//!
//! Run: `cargo run --example axum_server`

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower_reissue::{IdempotencyLayer, MemoryStore};

async fn send_email(State(sent): State<Arc<AtomicUsize>>, body: Bytes) -> (StatusCode, String) {
    let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::ACCEPTED,
        format!("{{\"email\":{n},\"bytes\":{}}}", body.len()),
    )
}

#[tokio::main]
async fn main() -> Result<(), tower_reissue::BoxError> {
    let sent = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/emails", post(send_email))
        .with_state(sent.clone())
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |key: Option<&str>, body: &'static str| {
        let mut request = Request::post(format!("http://{addr}/emails"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await?;
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, tower_reissue::BoxError>((
                status,
                replayed,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    };

    let first = post(Some("welcome-42"), "{\"to\":\"ada@example.com\"}").await?;
    println!("first call:        {} {}", first.0, first.2);
    let retry = post(Some("welcome-42"), "{\"to\":\"ada@example.com\"}").await?;
    println!(
        "retry, same key:   {} {} (replayed: {})",
        retry.0, retry.2, retry.1
    );
    let reused = post(Some("welcome-42"), "{\"to\":\"bob@example.com\"}").await?;
    println!("same key, new body: {}", reused.0);
    let missing = post(None, "{\"to\":\"ada@example.com\"}").await?;
    println!("no key:            {}", missing.0);
    println!("emails actually sent: {}", sent.load(Ordering::SeqCst));

    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert_eq!(
        (retry.0, retry.1, &retry.2),
        (StatusCode::ACCEPTED, true, &first.2)
    );
    assert_eq!(reused.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.0, StatusCode::BAD_REQUEST);
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    Ok(())
}
