//! What a request says about itself being sent more than once, before any
//! answer is known: the part of the safety rule shared by the retry layer
//! (which adds what the answer tells) and the hedge layer (which has no
//! answer yet when it sends a copy).

use super::{RequestView, RetryResponse};
use crate::error::BoxError;

/// How many attempts (or copies) a response took, in its extensions.
///
/// [`RetryLayer`](crate::RetryLayer) counts its attempts;
/// [`HedgeLayer`](crate::HedgeLayer) counts the copies it sent.
///
/// ```
/// use tower_reissue::Attempts;
/// let attempts = Attempts(2);
/// assert_eq!(attempts.get(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempts(pub u32);

/// Puts `attempts` into a response's extensions; an error goes through.
pub(crate) fn with_attempts<R: RetryResponse>(
    mut result: Result<R, BoxError>,
    attempts: u32,
) -> Result<R, BoxError> {
    if let Ok(response) = &mut result {
        response.extensions_mut().insert(Attempts(attempts));
    }
    result
}

impl Attempts {
    /// The number of attempts, counting the first.
    ///
    /// ```
    /// assert_eq!(tower_reissue::Attempts(3).get(), 3);
    /// ```
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A per-request override of the safety rule, set as a request extension.
///
/// It decides for the retry layer (whether a failed attempt may be sent
/// again) and for the hedge layer (whether a slow one may be copied).
///
/// ```
/// use http::Request;
/// use tower_reissue::retry::Retryable;
///
/// // This POST is an upsert keyed by its URL: repeating it is harmless.
/// let mut request = Request::post("http://api.example/users/7").body(()).unwrap();
/// request.extensions_mut().insert(Retryable::Yes);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retryable {
    /// Treat the request as safe to repeat, whatever its method. Only
    /// `Transient` verdicts are retried all the same.
    Yes,
    /// Never retry this request, nor send a hedge of it.
    No,
}

/// What the request alone says about repeating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// A [`Retryable::No`] extension forbids it.
    Forbidden,
    /// A [`Retryable::Yes`] extension allows it, whatever the method.
    Forced,
    /// The method is idempotent, or the request carries an idempotency key
    /// the server deduplicates on: a repeat cannot act twice.
    Safe,
    /// Nothing in the request makes a repeat safe; only what an answer
    /// tells (the server never acted on it) can.
    Unsafe,
}

impl RequestView<'_> {
    /// Whether the request, by itself, may be sent again.
    pub(crate) fn repeat(&self) -> Repeat {
        match self.extensions().and_then(|e| e.get::<Retryable>()) {
            Some(Retryable::No) => Repeat::Forbidden,
            Some(Retryable::Yes) => Repeat::Forced,
            None if self.is_idempotent_method() || self.has_idempotency_key() => Repeat::Safe,
            None => Repeat::Unsafe,
        }
    }
}
