//! Idempotency keys on the client side.
//!
//! [`IdempotencyKeyLayer`] gives every POST and PATCH request that lacks one
//! an `Idempotency-Key: <UUID v4>` header, so that a server deduplicating on
//! it (such as one behind [`IdempotencyLayer`](crate::IdempotencyLayer)) can
//! run the request once however often it is sent, and so that
//! [`RetryLayer`](crate::RetryLayer) may retry it after failures that leave
//! its fate unknown.
//!
//! The key is generated once per logical request and reused on every retry,
//! whichever order the two layers are stacked in:
//!
//! - `IdempotencyKeyLayer` outside `RetryLayer`: the key is set on the request
//!   before the retry layer copies it for each attempt.
//! - `RetryLayer` outside `IdempotencyKeyLayer`: the retry layer hands each
//!   logical request with an unsafe method (anything but GET, HEAD, OPTIONS
//!   and TRACE) a slot in its extensions; the key layer fills it on the first
//!   attempt and reads it back on the next ones, and the retry layer then
//!   counts the request as keyed. Requests with a safe method, and requests
//!   that already carry a key, get no slot and pay nothing.
//!
//! A key the caller set (the header, or an [`IdempotencyKey`] extension) is
//! never replaced. The key is put in the request's and the response's
//! extensions as an [`IdempotencyKey`].

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::IdempotencyKeyLayer;
pub use service::SetIdempotencyKey;

pub(crate) use crate::key::KeySlot;
pub use crate::key::{IDEMPOTENCY_KEY, IdempotencyKey, InvalidIdempotencyKey};
