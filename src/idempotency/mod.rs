//! Server-side idempotency: run each `Idempotency-Key` once, replay its result.
//!
//! [`IdempotencyLayer`] sits in front of an HTTP service (an axum `Router`, or
//! any tower service taking `http::Request`). For a request that carries an
//! `Idempotency-Key` header (an RFC 8941 sf-string such as `"abc"`, or the bare
//! value; 1 to 255 visible ASCII characters):
//!
//! 1. The request body is read (up to `max_request_body`) and a
//!    [fingerprint](store::Fingerprint) of method, path, query and body is
//!    taken.
//! 2. The record for (principal, key) is claimed in the
//!    [store](IdempotencyStore). The principal (by default a hash of the
//!    `Authorization` header, see [`PrincipalExtractor`]) keeps clients from
//!    ever seeing each other's results.
//! 3. If nobody held the key, the handler runs while the claim's lease is
//!    renewed. Its response is stored (status, headers, body) for `ttl` and
//!    returned. Duplicates then get the stored response with
//!    `Idempotent-Replayed: true`, and the handler does not run again.
//!
//! Which results are stored: 2xx, 3xx and 4xx, except 408, 409, 425 and 429.
//! A 5xx, a service error or a panic releases the claim, so a retry runs the
//! handler again. With [`store_server_errors`](IdempotencyLayer::store_server_errors)
//! a 5xx is stored and replayed instead (Stripe's rule): pick it when a
//! handler may fail after its effect took place, so that a retry can never
//! repeat the effect. A handler overrides either rule with the
//! [`StoreDecision`] response extension. A response body over `max_body` is sent but not stored; the key
//! is marked, so duplicates get a clear error rather than a second execution.
//!
//! Requests without a key pass through untouched, unless their method is
//! listed in [`required_for`](IdempotencyLayer::required_for).
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post};
//! use http::Method;
//! use tower_reissue::{IdempotencyLayer, MemoryStore};
//!
//! async fn send_email() -> &'static str {
//!     "sent"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/emails", post(send_email))
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
//! ```
//!
//! # Problem types
//!
//! The layer's own answers are `application/problem+json` (RFC 9457) bodies
//! with `type`, `title`, `status` and `detail`. Each `type` is this page's
//! address with one of these fragments:
//!
//! ## idempotency-key-missing
//! `400`: the method requires an `Idempotency-Key` and the request has none.
//!
//! ## idempotency-key-invalid
//! `400`: the key is empty, longer than 255 characters, not visible ASCII, a
//! malformed quoted string, or sent in more than one header.
//!
//! ## request-too-large
//! `413`: a request with a key has a body over `max_request_body`.
//!
//! ## request-unreadable
//! `400`: reading the request body failed.
//!
//! ## request-in-flight
//! `409` with `Retry-After`: the first request with this key is still
//! running. Retrying later returns its result.
//!
//! ## idempotency-key-reused
//! `422`: the key was first used with a different method, path, query or body.
//!
//! ## response-not-stored
//! `410`: the key's request already ran, but its response was over `max_body`
//! (or streamed trailers) and could not be stored. The member
//! `original_status` gives the first response's status. The handler does not
//! run again.
//!
//! ## quota-exceeded
//! `429` with `Retry-After`: the client (its principal) holds as many
//! records as the store's quota allows (see
//! [`MemoryStore`'s quotas](MemoryStore#quotas)). The request did not run,
//! and nobody else's records were dropped for it.
//!
//! ## store-unavailable
//! `503` with `Retry-After`: the store failed, and the layer fails closed (see
//! [`fail_open`](IdempotencyLayer::fail_open)).

mod body;
mod buffer;
mod future;
mod keyed;
mod layer;
mod policy;
mod principal;
mod problem;
mod service;
pub mod store;

pub use body::{BoxError, ResponseBody};
pub use future::ResponseFuture;
pub use layer::IdempotencyLayer;
pub use policy::StoreDecision;
pub use principal::{AuthorizationPrincipal, Principal, PrincipalExtractor};
pub use service::Idempotency;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::PgTransaction;
pub use store::{IdempotencyStore, MemoryStore};
