//! Tower middleware that makes HTTP retries safe.
//!
//! - [`RetryLayer`]: retries driven by a pluggable [`Classifier`] (status,
//!   `Retry-After`, pushback headers, transport errors), exponential backoff
//!   with full jitter, a [`RetryBudget`] that caps retry amplification,
//!   deadlines, and replay of request bodies. Requests that are not idempotent
//!   are retried only when the server provably never acted on them or when
//!   they carry an idempotency key.
//! - [`IdempotencyKeyLayer`]: gives POST and PATCH requests an
//!   `Idempotency-Key`, one per logical request whichever side of the
//!   [`RetryLayer`] it sits on, so that they may be retried after failures
//!   that leave their fate unknown.
//! - [`IdempotencyLayer`]: the server side. It stores the first result under
//!   the request's `Idempotency-Key` and replays it, rejects concurrent
//!   duplicates (409) and a key reused for another payload (422), with a
//!   pluggable [`IdempotencyStore`] ([`MemoryStore`] by default).
//! - [`Once`]: the same stores for work outside HTTP (a queue consumer, a
//!   job): a closure runs at most once per key, and duplicates get its
//!   stored value.
//! - [`CircuitBreakerLayer`]: stops sending to a host that is down, judged by
//!   the same [`Classifier`] as the retry layer, and lets probes find out
//!   when it is back; under [`RetryLayer`], a refused call waits for the probe
//!   when its deadline allows.
//! - [`dead_letter`]: what the retry layer gives up on, parked with its body
//!   and key in a [`DeadLetterQueue`]
//!   (in memory, or SQLite with the `sqlite` feature) and sent again later
//!   by a [`Replayer`].
//!
//! Both client layers work with `http::Request`/`http::Response` services
//! (hyper-util's client, axum, any tower service) and, with the `reqwest`
//! feature, with `reqwest::Client`.
//!
//! # Quick start
//!
//! A server whose `POST /emails` runs once per key, and a client that retries
//! it safely: the key is generated once and reused on every attempt.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::post};
//! use bytes::Bytes;
//! use http::{Method, Request, StatusCode};
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_reissue::{
//!     Attempts, IdempotencyKey, IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody,
//!     RetryBudget, RetryLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_reissue::BoxError> {
//! // The server: the first result under a key is stored and replayed.
//! let app = Router::new()
//!     .route("/emails", post(|| async { (StatusCode::ACCEPTED, "queued") }))
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! // The client: keys on POST/PATCH, classified retries with a budget. The
//! // hyper-util client sends `ReplayBody<B>`, which keeps a copy for retries.
//! let client = ServiceBuilder::new()
//!     .layer(IdempotencyKeyLayer::new())
//!     .layer(
//!         RetryLayer::new()
//!             .max_attempts(5)
//!             .budget(RetryBudget::new(0.2))
//!             .deadline(Duration::from_secs(30)),
//!     )
//!     .service(Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>());
//!
//! let request = Request::post(format!("http://{addr}/emails"))
//!     .body(Full::new(Bytes::from(r#"{"to":"ada@example.com"}"#)))?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::ACCEPTED);
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
//! assert!(response.extensions().get::<IdempotencyKey>().is_some());
//! # Ok(()) }
//! ```
//!
//! Any tower service taking `http::Request<ReplayBody<B>>` can sit under the
//! retry layer, a `service_fn` included:
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_reissue::{Attempts, ReplayBody, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
//!     Ok::<_, Infallible>(Response::new(()))
//! });
//! let client = ServiceBuilder::new().layer(RetryLayer::new()).service(upstream);
//! let response = client
//!     .oneshot(Request::get("http://api.example/").body(Empty::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The foundation: every folder may use these, and they use none of them.
mod error;
mod hosts;
mod key;
#[cfg(feature = "redis")]
mod redis_conn;
pub mod request;
mod time;
mod window;

pub mod backoff;
pub mod budget;
pub mod circuit;
pub mod classify;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod dead_letter;
pub mod hedge;
pub mod idempotency;
pub mod idempotency_key;
pub mod once;
// The exactly-once core under `idempotency` and `once`.
pub mod retry;
mod store;
pub use retry::reconcile;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub mod telemetry;

/// Guides longer than a module's docs: how the crate was measured, the
/// Redis settings, the admin API, the metrics, the server half in depth.
pub mod docs {
    #[doc = include_str!("docs/performance.md")]
    pub mod performance {}
    #[doc = include_str!("docs/server.md")]
    pub mod server {}
    #[doc = include_str!("docs/redis.md")]
    pub mod redis {}
    #[doc = include_str!("docs/admin_api.md")]
    pub mod admin_api {}
    #[doc = include_str!("docs/metrics.md")]
    pub mod metrics {}
    #[doc = include_str!("docs/outage_demo.md")]
    pub mod outage_demo {}
    #[doc = include_str!("docs/comparison.md")]
    pub mod comparison {}
}

// The README's snippets compile as written: they run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use circuit::{BreakerState, CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
pub use classify::{Classifier, DefaultClassifier, Processed, Verdict};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use dead_letter::RedisQueue;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use dead_letter::SqliteQueue;
pub use dead_letter::{DeadLetter, DeadLetterQueue, MemoryQueue, Replayer};
pub use hedge::HedgeLayer;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use idempotency::store::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use idempotency::store::RedisStore;
pub use idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore};
pub use idempotency_key::{IdempotencyKey, IdempotencyKeyLayer};
pub use once::{Once, OnceError, Ran};
pub use reconcile::{Reconcile, Reconciled, Reconciliation};
pub use retry::{Attempts, ReplayBody, Retry, RetryLayer};

pub use error::BoxError;
