//! Which handler responses the layer stores, and which release the claim.

use http::{Response, StatusCode};

/// A response extension overriding whether the layer stores a response.
///
/// Without it, 2xx, 3xx and 4xx responses (except 408, 409, 425 and 429)
/// are stored and replayed, and others release the claim.
///
/// ```
/// use axum::{Extension, http::StatusCode, response::IntoResponse};
/// use tower_reissue::idempotency::StoreDecision;
///
/// // The charge went through even though a later step failed: a retry must
/// // not charge again, so this 500 is stored and replayed.
/// async fn charge() -> impl IntoResponse {
///     (StatusCode::INTERNAL_SERVER_ERROR, Extension(StoreDecision::Store), "charged, receipt failed")
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDecision {
    /// Store the response and replay it, whatever its status.
    Store,
    /// Do not store it: release the claim so a retry runs the handler again.
    Release,
}

/// Whether `response` is stored. The handler's [`StoreDecision`] comes first:
/// only the handler knows whether its effect took place before it failed.
#[inline]
pub(super) fn stores<B>(response: &Response<B>, store_server_errors: bool) -> bool {
    match response.extensions().get::<StoreDecision>() {
        Some(StoreDecision::Store) => true,
        Some(StoreDecision::Release) => false,
        None => stored_by_default(response.status(), store_server_errors),
    }
}

/// Results a retry could change (a timeout, a conflict, rate limiting, a
/// server error unless the layer stores those) are not stored, so the key
/// can run again.
fn stored_by_default(status: StatusCode, store_server_errors: bool) -> bool {
    if status.is_server_error() {
        return store_server_errors;
    }
    !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}
