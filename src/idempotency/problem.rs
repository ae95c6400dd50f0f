//! `application/problem+json` (RFC 9457) answers the layer gives itself.

use std::time::Duration;

use super::body::ResponseBody;
use crate::key::KeyError;
use crate::telemetry::ServerOutcome;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

/// Where the problem types are documented: the `idempotency` module page.
const TYPE_BASE: &str =
    "https://docs.rs/tower-reissue/latest/tower_reissue/idempotency/index.html#";

/// An error the layer answers without running the handler.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Problem {
    KeyMissing,
    KeyInvalid(KeyError),
    RequestTooLarge { limit: usize },
    RequestUnreadable,
    InFlight { retry_after: Duration },
    KeyReused,
    ResponseNotStored { status: StatusCode },
    StoreUnavailable { retry_after: Duration },
    QuotaExceeded { retry_after: Duration },
    TransactionEscaped,
}

impl Problem {
    fn status(&self) -> StatusCode {
        match self {
            Problem::KeyMissing | Problem::KeyInvalid(_) | Problem::RequestUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Problem::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::InFlight { .. } => StatusCode::CONFLICT,
            Problem::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::ResponseNotStored { .. } => StatusCode::GONE,
            Problem::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Problem::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::TransactionEscaped => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn outcome(&self) -> ServerOutcome {
        match self {
            Problem::KeyMissing => ServerOutcome::MissingKey,
            Problem::KeyInvalid(_) => ServerOutcome::InvalidKey,
            Problem::RequestTooLarge { .. } => ServerOutcome::RequestTooLarge,
            Problem::RequestUnreadable => ServerOutcome::RequestUnreadable,
            Problem::InFlight { .. } => ServerOutcome::Conflict,
            Problem::KeyReused => ServerOutcome::Mismatch,
            Problem::ResponseNotStored { .. } => ServerOutcome::NotStored,
            Problem::StoreUnavailable { .. } => ServerOutcome::StoreUnavailable,
            Problem::QuotaExceeded { .. } => ServerOutcome::QuotaExceeded,
            Problem::TransactionEscaped => ServerOutcome::StoreUnavailable,
        }
    }

    /// The fragment of the problem type URI; matches a heading in the module docs.
    fn slug(&self) -> &'static str {
        match self {
            Problem::KeyMissing => "idempotency-key-missing",
            Problem::KeyInvalid(_) => "idempotency-key-invalid",
            Problem::RequestTooLarge { .. } => "request-too-large",
            Problem::RequestUnreadable => "request-unreadable",
            Problem::InFlight { .. } => "request-in-flight",
            Problem::KeyReused => "idempotency-key-reused",
            Problem::ResponseNotStored { .. } => "response-not-stored",
            Problem::StoreUnavailable { .. } => "store-unavailable",
            Problem::QuotaExceeded { .. } => "quota-exceeded",
            Problem::TransactionEscaped => "transaction-escaped",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Problem::KeyMissing => "Idempotency-Key is missing",
            Problem::KeyInvalid(_) => "Idempotency-Key is invalid",
            Problem::RequestTooLarge { .. } => "Request body too large",
            Problem::RequestUnreadable => "Request body could not be read",
            Problem::InFlight { .. } => "A request with this Idempotency-Key is in progress",
            Problem::KeyReused => "Idempotency-Key reused for a different request",
            Problem::ResponseNotStored { .. } => "Original response was not stored",
            Problem::StoreUnavailable { .. } => "Idempotency store unavailable",
            Problem::QuotaExceeded { .. } => "Too many idempotency keys",
            Problem::TransactionEscaped => "Transaction kept past the handler",
        }
    }

    fn detail(&self) -> String {
        match self {
            Problem::KeyMissing => {
                "This endpoint requires an Idempotency-Key header on this method.".to_owned()
            }
            Problem::KeyInvalid(err) => err.detail().to_owned(),
            Problem::RequestTooLarge { limit } => format!(
                "A request with an Idempotency-Key may have a body of at most {limit} bytes."
            ),
            Problem::RequestUnreadable => {
                "The request body could not be read to compute its fingerprint.".to_owned()
            }
            Problem::InFlight { .. } => {
                "The first request with this key has not finished; retry later to get its result."
                    .to_owned()
            }
            Problem::KeyReused => "This Idempotency-Key was used for a request with a different \
                method, path, query or body; use a new key for a new request."
                .to_owned(),
            Problem::ResponseNotStored { status } => format!(
                "The request with this Idempotency-Key was already processed (status {}), but its \
                 response was too large or streamed to be stored, so it cannot be replayed. The \
                 request was not executed again.",
                status.as_u16()
            ),
            Problem::StoreUnavailable { .. } => {
                "Idempotency records cannot be checked right now, so the request was not run; retry later."
                    .to_owned()
            }
            Problem::QuotaExceeded { .. } => "This client holds as many idempotency records as it \
                may, so the request was not run; retry after the delay given, and reuse a key for \
                the retries of one request instead of sending new ones."
                .to_owned(),
            Problem::TransactionEscaped => "The handler kept its idempotency transaction past its \
                end (in a spawned task or a streaming body), so its writes were rolled back and \
                the request may be sent again."
                .to_owned(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Problem::InFlight { retry_after }
            | Problem::StoreUnavailable { retry_after }
            | Problem::QuotaExceeded { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The problem as a complete response.
    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let status = self.status();
        crate::telemetry::server_answered(self.outcome(), Some(status));
        let mut body = serde_json::json!({
            "type": format!("{TYPE_BASE}{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        if let Problem::ResponseNotStored { status } = self {
            body["original_status"] = status.as_u16().into();
        }
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(delay) = self.retry_after() {
            // Retry-After takes whole seconds; round up so clients never come back early.
            let secs = delay
                .as_secs()
                .saturating_add(u64::from(delay.subsec_nanos() > 0));
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
