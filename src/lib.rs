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
//!
//! Both client layers work with `http::Request`/`http::Response` services
//! (hyper-util's client, axum, any tower service) and, with the `reqwest`
//! feature, with `reqwest::Client`.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_reissue::{Attempts, ReplayBody, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any tower service taking `http::Request<ReplayBody<B>>` works: a
//! // hyper-util `Client<_, ReplayBody<B>>`, an axum router, a service_fn.
//! let upstream = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
//!     Ok::<_, Infallible>(Response::new(()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().max_attempts(5).deadline(Duration::from_secs(30)))
//!     .service(upstream);
//!
//! let response = client
//!     .oneshot(Request::get("http://api.example/").body(Empty::new()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod budget;
pub mod classify;
pub mod idempotency;
pub mod idempotency_key;
pub mod request;
pub mod retry;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use classify::{Classifier, DefaultClassifier, Processed, Verdict};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use idempotency::store::RedisStore;
pub use idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore};
pub use idempotency_key::{IdempotencyKey, IdempotencyKeyLayer};
pub use retry::{Attempts, ReplayBody, Retry, RetryLayer};

/// The error type of the middleware: the wrapped service's error, boxed, or
/// one of this crate's (such as [`retry::AttemptTimedOut`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
