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

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use axum_idempotent::{IdempotentLayer, IdempotentOptions};
use http::{HeaderValue, Request, StatusCode};
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
