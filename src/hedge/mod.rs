//! Hedged requests: another copy of a slow request that is safe to repeat,
//! and the first success wins.
//!
//! A request that takes far longer than most is usually unlucky (a slow
//! replica, a lost packet, a pause), not hard. [`HedgeLayer`] sends another
//! copy of it after a delay and keeps whichever copy succeeds first; the
//! copies still running are then dropped, which cancels them. One slow
//! answer in a hundred no longer sets the p99.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tokio::time::Instant;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_reissue::{HedgeLayer, ReplayBody, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // An upstream whose first answer takes 10 s and every other one 10 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let counted = calls.clone();
//! let upstream = tower::service_fn(move |_req: Request<ReplayBody<Full<Bytes>>>| {
//!     let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
//!     async move {
//!         let slow = n == 1;
//!         tokio::time::sleep(Duration::from_millis(if slow { 10_000 } else { 10 })).await;
//!         Ok::<_, Infallible>(Response::new(format!("copy {n}")))
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .layer(HedgeLayer::new(Duration::from_millis(100)))
//!     .service(upstream);
//!
//! let started = Instant::now();
//! let get = Request::get("http://api.example/report").body(Full::new(Bytes::new())).unwrap();
//! let response = client.clone().oneshot(get).await.unwrap();
//! // The hedge, sent after 100 ms, answered 10 ms later.
//! assert_eq!(response.body(), "copy 2");
//! assert!(started.elapsed() < Duration::from_millis(200));
//!
//! // A POST without an idempotency key is never copied: it waits.
//! calls.store(0, Ordering::SeqCst);
//! let post = Request::post("http://api.example/emails").body(Full::new(Bytes::new())).unwrap();
//! let response = client.oneshot(post).await.unwrap();
//! assert_eq!(response.body(), "copy 1");
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # Which requests get hedges
//!
//! Only requests that are safe to repeat before any answer is known: the
//! retry layer's rule without the part an answer tells.
//!
//! - the method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or
//! - the request carries an idempotency key the server deduplicates on (an
//!   [`IdempotencyKey`](crate::IdempotencyKey) extension not marked
//!   correlation-only, or an `Idempotency-Key` header); every hedge carries
//!   the same key, since a hedge copies the first copy's headers and
//!   extensions;
//! - a [`Retryable`](crate::retry::Retryable) extension decides instead:
//!   `Yes` allows hedges whatever the method, `No` forbids them.
//!
//! A POST without a key is never hedged: a copy would be a duplicate by
//! construction. A precondition (`If-Match`) is not enough on its own
//! either: it stops a repeat once the first took effect, not two copies
//! racing on a server that checks and writes in two steps.
//!
//! A hedge replays the body the first copy keeps ([`ReplayBody`]), so the
//! layer takes `http::Request<ReplayBody<B>>`: the requests a
//! [`RetryLayer`](crate::RetryLayer) above it sends. A body held whole
//! (`Full`, `Bytes`, `String`, `Empty`: any body of known length within the
//! replay limit that is ready when wrapped) is copied at any time. A
//! streamed body can be copied only once the first copy has read it to the
//! end and within the limit: while the first copy is still streaming it,
//! [`ReplayBody`] answers [`NotReplayable::InUse`](crate::request::NotReplayable)
//! and no hedge is sent.
//!
//! # Which answer wins
//!
//! The layer's [`Classifier`](crate::Classifier) ([`DefaultClassifier`]
//! unless [`classifier`](HedgeLayer::classifier) says otherwise) judges each
//! copy's answer as it comes.
//!
//! - The first `Success`, from whichever copy, wins; the other copies are
//!   dropped (cancelled).
//! - A failure never wins while another copy is in flight. A 409 from a
//!   deduplicating server (its answer to a hedge under a key whose first
//!   copy is still running) is dropped, and the layer waits for the first
//!   copy.
//! - When no copy succeeds, the caller gets **the first copy's** result,
//!   response or error: the answer of the copy the server ran, for the retry
//!   layer above to judge. A hedge's failure is never handed on.
//! - Once a copy has failed, no further hedge is sent: failures are for the
//!   retry layer above, with its backoff and budget, and a failed hedge
//!   (409) says the first copy is still at work.
//!
//! # When
//!
//! A hedge is sent [`delay`](HedgeLayer::new) after the copy before it, up
//! to [`max_hedges`](HedgeLayer::max_hedges) (default 1, at most
//! [`MAX_HEDGES`]). With [`latency_percentile`](HedgeLayer::latency_percentile),
//! the delay follows the service: the larger of the fixed delay and that
//! percentile of recent successes, so a service that slows down as a whole
//! is not sent a copy of everything.
//!
//! The delay is a Tokio timer, armed when a request that may be hedged is
//! called: the layer runs inside a Tokio runtime with its time driver on
//! (as hyper-util's client does), and tests can move it with Tokio's paused
//! clock.
//!
//! # Extra load
//!
//! - **Budget.** Each hedge withdraws from a [`RetryBudget`](crate::RetryBudget)
//!   and is not sent when the budget refuses. By default the layer has a
//!   budget of its own (20% of the requests it may hedge, plus 10/s);
//!   [`shared_budget`](HedgeLayer::shared_budget) draws on the retry layer's
//!   instead, so that retries and hedges together stay within one ratio.
//! - **Breaker.** With [`breaker`](HedgeLayer::breaker), no hedge is sent to
//!   a host whose circuit breaker is open or half-open.
//!
//! # Where it goes in a stack
//!
//! ```text
//! IdempotencyKeyLayer -> RetryLayer -> HedgeLayer -> CircuitBreakerLayer -> client
//! ```
//!
//! - **Below the key layer**, so that a POST arrives with its key and its
//!   hedges carry the same one. Above it, the hedge layer would see an
//!   unkeyed POST and not hedge it.
//! - **Below the retry layer**: each attempt is hedged on its own, and what
//!   fails goes up to the retry layer's rules (backoff, budget, deadline).
//!   Above it, each copy would run a retry loop of its own. The retry layer
//!   also wraps bodies in [`ReplayBody`], which the hedge layer copies from.
//!   Its `attempt_timeout` bounds an attempt with its hedges: a timeout
//!   shorter than the hedge delay leaves no room for a hedge.
//! - **Above the breaker**, so that every copy is counted and refused like
//!   any call; pass the same breaker to [`breaker`](HedgeLayer::breaker) so
//!   that a hedge it would refuse is not even made.
//! - Give both layers the same classifier and budget.
//!
//! # Telemetry
//!
//! Each hedge gets an attempt span (see [`telemetry`](crate::telemetry)), a
//! child of the span it is sent from (under a retry layer, the attempt's),
//! with `http.request.resend_count` 1 for the first hedge, 2 for the second.
//! The first copy runs in the caller's span and gets none of its own, so
//! that a request under a retry layer is not traced twice. `tracing` events
//! (target `tower_reissue::hedge`, `DEBUG`) say when a hedge is sent and
//! why one was not; with feature `metrics`, `tower_reissue_hedges_total`
//! counts them by `event`.
//!
//! The response carries [`Attempts`](crate::Attempts): the copies sent,
//! the first included. A [`RetryLayer`](crate::RetryLayer) above replaces it
//! with its own count of attempts (an attempt and its hedges count once
//! there); the hedges are in the spans and the metric.
//!
//! # Compared with `tower::hedge`
//!
//! `tower::hedge` copies every request its policy can clone, a POST
//! included, draws on no budget, and hands back whichever copy answers
//! first, a 409 or a 500 included; it waits for a latency percentile only.
//! This layer copies only what is safe to repeat, within a budget, and
//! keeps a failure back while another copy may still succeed. The tail
//! latency of both, on a loopback server with one slow answer in a hundred,
//! is measured in `benches/hedge_tail.rs`.
//!
//! [`DefaultClassifier`]: crate::DefaultClassifier
//! [`ReplayBody`]: crate::ReplayBody

mod future;
mod latency;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{HedgeLayer, MAX_HEDGES};
pub use service::Hedge;
