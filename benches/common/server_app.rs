//! The workload of the idempotency benches: an axum handler that reads a JSON
//! payload and answers `201` with a small JSON body, bare, behind
//! `IdempotencyLayer` with a `MemoryStore`, and behind the peer
//! `axum-idempotent`.
//!
//! axum-idempotent keeps its results in a ruts session: it needs ruts'
//! `SessionLayer` (here over ruts' in-memory `MokaStore`, feature
//! `moka-store`) inside tower-cookies' `CookieManagerLayer`, and caches only
//! for a request that already carries a session cookie, so a client first
//! calls a route that writes a session field and sends its cookie from then
//! on. It runs in its `Idempotency-Key` header mode (the key is the cache key,
//! the body is not hashed), the closest to how tower-reissue is used.

// Each bench uses the part it measures.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::post;
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use ruts::store::Ttl;
use ruts::store::moka::MokaStore;
use ruts::{CookieOptions, Session, SessionLayer};
use tower::ServiceExt;
use tower_cookies::CookieManagerLayer;
use tower_reissue::{IdempotencyLayer, MemoryStore};

pub const PAYLOAD: &str =
    r#"{"to":"someone@example.com","subject":"Your receipt","template":"receipt-v2"}"#;

async fn send_email(body: String) -> (StatusCode, String) {
    (
        StatusCode::CREATED,
        format!(r#"{{"id":"msg_1","bytes":{}}}"#, body.len()),
    )
}

/// The handler alone.
pub fn bare() -> Router {
    Router::new().route("/emails", post(send_email))
}

/// The handler behind `IdempotencyLayer`, with a `MemoryStore` of the
/// default size (10,000 records): once full, each new key drops the oldest
/// result, as on a busy server. Its per-principal quota is off, since every
/// request of a bench comes from one client.
pub fn tower_reissue() -> Router {
    let store = MemoryStore::new().max_records_per_principal(usize::MAX);
    bare().layer(IdempotencyLayer::new(store))
}

/// The handler behind axum-idempotent, and the session cookie its requests
/// must carry.
pub async fn axum_idempotent() -> (Router, HeaderValue) {
    let sessions = Arc::new(MokaStore::builder().build());
    let options = IdempotentOptions::default()
        .use_idempotency_key_header(Some("idempotency-key"), false)
        .expire_after(24 * 60 * 60);
    let app = bare()
        .route(
            "/session",
            post(|session: Session<MokaStore>| async move {
                session
                    .set("user", &"alice".to_owned(), Ttl::new(3600).unwrap(), None)
                    .await
                    .unwrap();
                "session started"
            }),
        )
        .layer(IdempotentLayer::<MokaStore>::new(options))
        .layer(
            SessionLayer::new(sessions)
                .with_cookie_options(CookieOptions::build().name("session").path("/")),
        )
        .layer(CookieManagerLayer::new());
    let response = app
        .clone()
        .oneshot(Request::post("/session").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .find(|cookie| cookie.as_bytes().starts_with(b"session="))
        .expect("the session route sets the session cookie");
    let cookie = cookie.to_str().unwrap().split(';').next().unwrap();
    (app, HeaderValue::from_str(cookie).unwrap())
}

/// A request of the workload to `uri`, with `key` as its `Idempotency-Key`
/// and `cookie` as its session cookie.
pub fn request(uri: &str, key: Option<&str>, cookie: Option<&HeaderValue>) -> Request<Body> {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.body(Body::from(PAYLOAD)).unwrap()
}

/// The handler behind [`Minimal`]: the least any idempotency layer does.
pub fn minimal() -> Router {
    // One table for every service the router makes of the layer.
    let results = Arc::default();
    bare().layer(tower::layer::layer_fn(move |inner| Minimal {
        inner,
        results: Arc::clone(&results),
    }))
}

/// How many results [`Minimal`] keeps: as many as `MemoryStore` by default.
const MINIMAL_CAPACITY: usize = 10_000;

/// The least an idempotency layer can do and keep the contract a client
/// sees: the first result stored under its key and replayed, a concurrent
/// duplicate answered 409, a key reused for another payload 422. So it reads
/// the key, buffers the request body and fingerprints it, claims the key,
/// runs the handler, buffers its response and stores it. It does nothing
/// else a real layer must: no expiry or lease (a claim whose request was
/// cancelled stays until the table is full), memory bounded only by
/// forgetting everything when the table is full, no principal (clients share
/// one key space), no store behind a trait (a shared store is impossible),
/// no result stored once the client is gone. It is not offered for use: it is
/// the baseline the benches measure tower-reissue against, and a layer that
/// does more cannot cost less than this one does.
#[derive(Clone)]
pub struct Minimal<S> {
    inner: S,
    results: Arc<std::sync::Mutex<std::collections::HashMap<Box<[u8]>, MinimalEntry>>>,
}

pub enum MinimalEntry {
    InFlight,
    Done {
        fingerprint: blake3::Hash,
        status: StatusCode,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    },
}

impl<S> tower::Service<Request<Body>> for Minimal<S>
where
    S: tower::Service<Request<Body>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was made ready is the one called (tower's rule).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let Some(key) = request.headers().get("idempotency-key") else {
            return Box::pin(inner.call(request));
        };
        let key: Box<[u8]> = key.as_bytes().into();
        let results = self.results.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let Ok(body) = body.collect().await.map(|body| body.to_bytes()) else {
                return Ok(StatusCode::BAD_REQUEST.into_response());
            };
            let fingerprint = blake3::hash(&body);
            {
                let mut results = results.lock().unwrap();
                match results.get(&key) {
                    Some(MinimalEntry::Done {
                        fingerprint: stored,
                        status,
                        headers,
                        body,
                    }) => {
                        if *stored != fingerprint {
                            return Ok(StatusCode::UNPROCESSABLE_ENTITY.into_response());
                        }
                        let mut response = Response::new(Body::from(body.clone()));
                        *response.status_mut() = *status;
                        *response.headers_mut() = headers.clone();
                        response
                            .headers_mut()
                            .insert("idempotent-replayed", HeaderValue::from_static("true"));
                        return Ok(response);
                    }
                    Some(MinimalEntry::InFlight) => {
                        return Ok(StatusCode::CONFLICT.into_response());
                    }
                    None => {
                        // The cheapest bound on memory: forget everything
                        // at once, as often as a store of the same size
                        // would have to drop one result per new key.
                        if results.len() >= MINIMAL_CAPACITY {
                            results.clear();
                        }
                        results.insert(key.clone(), MinimalEntry::InFlight);
                    }
                }
            }
            let response = inner
                .call(Request::from_parts(parts, Body::from(body)))
                .await?;
            let (parts, body) = response.into_parts();
            let Ok(body) = body.collect().await.map(|body| body.to_bytes()) else {
                results.lock().unwrap().remove(&key);
                return Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response());
            };
            results.lock().unwrap().insert(
                key,
                MinimalEntry::Done {
                    fingerprint,
                    status: parts.status,
                    headers: parts.headers.clone(),
                    body: body.clone(),
                },
            );
            Ok(Response::from_parts(parts, Body::from(body)))
        })
    }
}
