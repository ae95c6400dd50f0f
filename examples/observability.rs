//! Traces and metrics of a client and a server talking through tower-reissue.
//!
//! The server's `POST /emails` (behind `IdempotencyLayer`) answers 503 twice,
//! then sends the email. The client retries under one idempotency key; the
//! same key sent again is replayed; a call to a port nobody listens on fails
//! to connect and is given up. Every attempt is an OpenTelemetry client span
//! (exported by `tracing-opentelemetry` to an SDK exporter that prints it),
//! every keyed request a server span; at the end the `metrics` counters are
//! rendered as Prometheus text.
//!
//! Run: `cargo run --example observability --features metrics`

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tower::{ServiceBuilder, ServiceExt};
use tower_reissue::{
    Backoff, BoxError, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody, RetryLayer,
};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Prints each finished span on one line: name, kind and the HTTP attributes.
#[derive(Debug)]
struct PrintSpans;

impl SpanExporter for PrintSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in batch {
            let mut line = format!("span {} ({:?})", span.name, span.span_kind);
            for kv in &span.attributes {
                let key = kv.key.as_str();
                if key.starts_with("http.")
                    || key.starts_with("url.")
                    || key.starts_with("server.")
                    || key.starts_with("error.")
                    || key.starts_with("idempotency.")
                {
                    let _ = write!(line, " {key}={}", kv.value);
                }
            }
            println!("{line}");
        }
        Ok(())
    }
}

async fn start_server() -> Result<std::net::SocketAddr, BoxError> {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/emails",
            post(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n <= 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy")
                    } else {
                        (StatusCode::CREATED, "sent")
                    }
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(PrintSpans)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observability")));
    tracing::subscriber::set_global_default(subscriber)?;
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let addr = start_server().await?;
    let client = ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(
            RetryLayer::new()
                .max_attempts(3)
                .backoff(Backoff::fixed(Duration::from_millis(20))),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    let email = |key: &str| {
        Request::post(format!("http://{addr}/emails"))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(r#"{"to":"ada@example.com"}"#)))
    };
    println!("-- POST /emails: 503, 503, then sent");
    let response = client
        .clone()
        .oneshot(email("welcome-ada")?)
        .instrument(tracing::info_span!("signup"))
        .await?;
    println!("   -> {}", response.status());
    println!("-- the same key again: replayed");
    let response = client.clone().oneshot(email("welcome-ada")?).await?;
    println!(
        "   -> {} (replayed: {:?})",
        response.status(),
        response.headers().get("idempotent-replayed")
    );
    println!("-- a host that refuses connections");
    // Bound but not listening: connections are refused, and the port stays
    // reserved while the socket lives.
    let closed = tokio::net::TcpSocket::new_v4()?;
    closed.bind("127.0.0.1:0".parse()?)?;
    let refused = closed.local_addr()?;
    let request = Request::get(format!("http://{refused}/health")).body(Full::new(Bytes::new()))?;
    match client.clone().oneshot(request).await {
        Ok(response) => println!("   -> {}", response.status()),
        Err(error) => println!("   -> error: {error}"),
    }

    provider.shutdown()?;
    println!("-- metrics (Prometheus text)");
    print!("{}", prometheus.render());
    Ok(())
}
