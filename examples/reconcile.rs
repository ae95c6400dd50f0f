//! A third-party email API that ignores `Idempotency-Key` and sometimes
//! answers 500 *after* sending. The client cannot retry blindly, so it asks:
//! `GET /emails?reference=…` finds an email by the reference the client gave
//! it (`X-Reference`, a correlation id set by `IdempotencyKeyLayer`).
//!
//! Run: `cargo run --example reconcile`

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderName, Request};
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_reissue::reconcile::{ReconcileRequest, Reconciled, Reconciliation};
use tower_reissue::{Attempts, BoxError, IdempotencyKeyLayer, ReplayBody, RetryLayer};

const REFERENCE: HeaderName = HeaderName::from_static("x-reference");

/// The third party: it keeps each email's reference, and fails the first
/// send after sending and the second before sending.
#[derive(Clone, Default)]
struct Mailer {
    sent: Arc<Mutex<HashMap<String, u32>>>,
    calls: Arc<AtomicU32>,
}

async fn send(State(mailer): State<Mailer>, headers: HeaderMap) -> StatusCode {
    let call = mailer.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if call == 2 {
        return StatusCode::INTERNAL_SERVER_ERROR; // before sending
    }
    let reference = headers
        .get(&REFERENCE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    *mailer.sent.lock().unwrap().entry(reference).or_default() += 1;
    if call == 1 {
        return StatusCode::INTERNAL_SERVER_ERROR; // after sending
    }
    StatusCode::CREATED
}

async fn find(State(mailer): State<Mailer>, uri: Uri) -> StatusCode {
    let reference = uri.query().and_then(|q| q.strip_prefix("reference="));
    let sent = mailer.sent.lock().unwrap();
    match reference.and_then(|r| sent.get(r)) {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mailer = Mailer::default();
    let app = axum::Router::new()
        .route("/emails", get(find).post(send))
        .with_state(mailer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The probe: a GET, so its own retry layer may repeat it.
    let lookups = RetryLayer::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>());
    let lookup_base = base.clone();
    let lookup = move |request: ReconcileRequest| {
        let (lookups, base) = (lookups.clone(), lookup_base.clone());
        async move {
            let Some(reference) = request.correlation_id() else {
                return Ok(Reconciled::Unknown);
            };
            let url = format!("{base}/emails?reference={reference}");
            let found = lookups
                .oneshot(Request::get(url).body(Empty::new())?)
                .await?;
            Ok::<_, BoxError>(match found.status() {
                StatusCode::OK => Reconciled::Applied,
                StatusCode::NOT_FOUND => Reconciled::NotApplied,
                _ => Reconciled::Unknown,
            })
        }
    };

    // The client: a reference the API stores but does not deduplicate on,
    // and retries that ask before repeating an ambiguous send.
    let client = ServiceBuilder::new()
        .layer(
            IdempotencyKeyLayer::new()
                .header(REFERENCE)
                .correlation_only(),
        )
        .layer(RetryLayer::new().max_attempts(5).reconcile(lookup))
        .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());

    for to in ["ada@example.com", "grace@example.com"] {
        let request = Request::post(format!("{base}/emails"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"to":"{to}"}}"#))))?;
        let response = client.clone().oneshot(request).await?;
        let attempts = response
            .extensions()
            .get::<Attempts>()
            .map_or(1, |a| a.get());
        let verdict = match response.extensions().get::<Reconciliation>() {
            Some(Reconciliation::Applied) => "sent (the lookup found it)",
            _ if response.status().is_success() => "sent",
            _ => "not sent",
        };
        println!(
            "email to {to}: {} after {attempts} attempt(s): {verdict}",
            response.status()
        );
    }
    let sent: u32 = mailer.sent.lock().unwrap().values().sum();
    println!("emails actually sent: {sent}");
    Ok(())
}
