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
//! # Crashes
//!
//! A claim's lease (60 s by default, renewed while the handler runs) ends a
//! crashed instance's hold on a key, but that is all it does: when an
//! instance dies after its handler's effect and before the result is
//! stored (a deploy, an OOM kill, a lost node), the key runs again once the
//! lease is over, and the client's keyed retry makes that second run all but
//! certain. No store kept apart from the effect can close this. A
//! transactional `PostgresStore` (feature `postgres`) does: the handler
//! writes through the layer's transaction (`PgTransaction`), and the record
//! commits in that same transaction.
//!
//! | the instance dies or stalls | transactional `PostgresStore` | any other store |
//! |---|---|---|
//! | before its transaction commits | effect rolled back; after the lease the key runs once | runs again: twice if the effect was written |
//! | after the commit, before the response is sent | effect and result committed together: a retry replays | runs again: twice |
//! | paused past its lease, then resumes and commits | its commit is fenced out and rolled back: once | twice |
//! | the handler answers 5xx, panics or is dropped | rolled back, then the key is released: the retry runs at once, once | the retry runs again |
//!
//! What remains:
//!
//! * Writes the handler makes outside the transaction (another connection,
//!   a third party's API) are outside the guarantee; a handler that keeps
//!   the transaction past its end (a spawned task, a streaming body) is
//!   rolled back and answered 500 ([transaction-escaped](#transaction-escaped)).
//! * A duplicate that arrives between the fenced write and the commit waits
//!   on the record's row lock and replays the committed result; past the
//!   store's `lock_timeout` it gets 409.
//! * A statement of the handler's own that fails aborts the transaction:
//!   nothing it wrote commits, its answer goes out unstored and its key is
//!   released (run a statement that may fail under a savepoint).
//! * A commit whose answer is lost is answered 503: the record tells the
//!   retry what happened (a replay if it committed, a run if not).
//! * A handler idle inside its transaction for twice the lease loses it
//!   (the database ends the session), so that a stopped instance cannot
//!   hold rows for hours.
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
//! running. Retrying later returns its result. With a transactional store,
//! also: this request's claim was taken over before its commit (its lease
//! ran out while it was paused), and its writes were rolled back.
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
//! [`fail_open`](IdempotencyLayer::fail_open)). With a transactional store,
//! also: the handler's transaction could not be opened, or its commit failed
//! or went unanswered (the handler's writes were rolled back, or committed
//! with the record, which the retry then replays).
//!
//! ## transaction-escaped
//! `500`: with a transactional store, the handler kept its transaction
//! handle past its end (moved into a spawned task or a streaming body).
//! Its writes were rolled back and the key released.

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
