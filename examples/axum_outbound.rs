//! An axum handler that calls a flaky upstream through the client stack.
//!
//! `POST /orders` on our service charges the customer through a payment
//! provider that fails now and then. The handler's client retries under one
//! idempotency key; the provider (behind `IdempotencyLayer`) charges once.
//!
//! Run: `cargo run --example axum_outbound`

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_reissue::{
    Backoff, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody, RetryLayer,
};

type Upstream = BoxCloneSyncService<
    Request<Full<Bytes>>,
    http::Response<hyper::body::Incoming>,
    tower_reissue::BoxError,
>;

#[derive(Clone)]
struct AppState {
    payments: Upstream,
    provider: SocketAddr,
}

/// Our handler: one outbound call, retried safely by the stack.
async fn create_order(State(state): State<AppState>, body: Bytes) -> (StatusCode, String) {
    let request = Request::post(format!("http://{}/charges", state.provider))
        .body(Full::new(body))
        .expect("a valid request");
    match state.payments.oneshot(request).await {
        Ok(response) if response.status().is_success() => {
            (StatusCode::CREATED, "order placed".into())
        }
        Ok(response) => (
            StatusCode::BAD_GATEWAY,
            format!("provider said {}", response.status()),
        ),
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("provider unreachable: {error}"),
        ),
    }
}

/// The payment provider: charges once per key, but its gateway answers 502
/// to the first two calls *after* the charge went through.
async fn start_provider(charges: Arc<AtomicUsize>) -> SocketAddr {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/charges",
            post(move || {
                let charges = charges.clone();
                async move {
                    charges.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::CREATED, "charged")
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .layer(axum::middleware::from_fn(
            move |req, next: axum::middleware::Next| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let response = next.run(req).await;
                    if n <= 2 {
                        StatusCode::BAD_GATEWAY.into_response()
                    } else {
                        response
                    }
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::main]
async fn main() -> Result<(), tower_reissue::BoxError> {
    let charges = Arc::new(AtomicUsize::new(0));
    let provider = start_provider(charges.clone()).await;

    let hyper_client: Client<HttpConnector, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let payments = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(RetryLayer::new().backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_secs(1),
        )))
        .service(hyper_client);
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(AppState {
            payments: BoxCloneSyncService::new(payments),
            provider,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::post(format!("http://{addr}/orders"))
                .body(Full::new(Bytes::from("{\"sku\":\"tea\"}")))?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "POST /orders -> {status} {}",
        String::from_utf8_lossy(&body)
    );
    println!(
        "charges made by the provider: {}",
        charges.load(Ordering::SeqCst)
    );
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(charges.load(Ordering::SeqCst), 1);
    Ok(())
}
