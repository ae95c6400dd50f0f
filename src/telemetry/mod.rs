//! Traces and metrics.
//!
//! # Spans
//!
//! [`RetryLayer`](crate::RetryLayer) opens one `tracing` span per attempt
//! (target `tower_reissue::attempt`, level `INFO`), a child of the span the
//! caller is in, and [`HedgeLayer`](crate::HedgeLayer) one per hedge (a
//! child of the span it is sent from: under a retry layer, the attempt's;
//! `http.request.resend_count` 1 for the first hedge), named and attributed
//! after the OpenTelemetry HTTP client span conventions, so that
//! `tracing-opentelemetry` exports conforming client spans with no mapping:
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | the method (`GET`, `POST`, ... or `_OTHER`) |
//! | `otel.kind` | `client` |
//! | `http.request.method` | the method, or `_OTHER` with `http.request.method_original` |
//! | `url.full` | the URL without userinfo (`user:password@`) |
//! | `server.address`, `server.port` | the host and port (80/443 by default) |
//! | `http.request.resend_count` | on attempts after the first: 1, 2, ... |
//! | `http.response.status_code` | when the server answered |
//! | `error.type` | on a failed attempt, as the classifier saw it: the status code (`503`), or the transport cause (`connect`, `timeout`, `connection_reset`, `connection_closed`, `canceled`, `refused_stream`, `goaway`, `stream_reset`, `deadline_exceeded`, `circuit_open`, or `_OTHER`) |
//! | `otel.status_code` | `error` on a failed attempt |
//!
//! The span covers the attempt (the inner service's future) and ends when
//! its outcome is decided; the `retrying` and `giving up` events (target
//! `tower_reissue::retry`) are emitted inside the span of the attempt they
//! follow. Without a subscriber that wants these spans, `tracing` gives a
//! disabled span before any field is formatted.
//!
//! [`IdempotencyLayer`](crate::IdempotencyLayer) opens a span `idempotency`
//! (target `tower_reissue::idempotency`) per request that carries a key or
//! lacks a required one, with `http.request.method`, the
//! `idempotency.outcome` (the labels of [`metrics::SERVER_REQUESTS`]) and
//! `http.response.status_code`.
//!
//! # Metrics
//!
//! With feature `metrics`, counters and histograms go through the `metrics`
//! facade; their names and labels are listed in [`metrics`].
//!
//! ```
//! use tracing::Instrument;
//! # use std::convert::Infallible;
//! # use bytes::Bytes;
//! # use http::{Request, Response};
//! # use http_body_util::Empty;
//! # use tower::{ServiceBuilder, ServiceExt};
//! # use tower_reissue::{ReplayBody, RetryLayer};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let upstream = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
//! #     Ok::<_, Infallible>(Response::new(()))
//! # });
//! let client = ServiceBuilder::new().layer(RetryLayer::new()).service(upstream);
//! // Each attempt's span is a child of the span the call runs in.
//! let request = Request::get("http://api.example/").body(Empty::new()).unwrap();
//! let response = client
//!     .oneshot(request)
//!     .instrument(tracing::info_span!("checkout"))
//!     .await
//!     .unwrap();
//! # let _ = response;
//! # }
//! ```

pub mod metrics;
mod span;

pub(crate) use span::{AttemptSpan, ErrorType, server_span};

use std::time::Duration;

/// A retry is about to be made after a failure of `error_type`.
#[inline]
pub(crate) fn retrying(error_type: Option<&ErrorType>, delay: Duration) {
    #[cfg(feature = "metrics")]
    {
        let reason = match error_type {
            Some(ErrorType::Status(status)) => {
                ::metrics::SharedString::from(status.as_str().to_owned())
            }
            Some(ErrorType::Cause(cause)) => ::metrics::SharedString::const_str(cause),
            // A classifier may call a success transient; it has no error type.
            None => ::metrics::SharedString::const_str("_OTHER"),
        };
        ::metrics::counter!(metrics::RETRIES, metrics::LABEL_REASON => reason).increment(1);
        ::metrics::histogram!(metrics::RETRY_DELAY).record(delay.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (error_type, delay);
}

/// The request succeeded after `attempts` attempts.
#[inline(always)]
pub(crate) fn succeeded(attempts: u32) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(metrics::ATTEMPTS).record(attempts);
    #[cfg(not(feature = "metrics"))]
    let _ = attempts;
}

/// The layer gave up after `attempts` attempts.
#[inline]
pub(crate) fn gave_up(reason: &'static str, attempts: u32) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!(metrics::GIVE_UPS, metrics::LABEL_REASON => reason).increment(1);
        if reason == "budget_exhausted" {
            ::metrics::counter!(metrics::BUDGET_REFUSALS).increment(1);
        }
        ::metrics::histogram!(metrics::ATTEMPTS).record(attempts);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (reason, attempts);
}

/// A reconciler answered `answer` (a closed set: see the metrics table).
#[inline]
pub(crate) fn reconciled(answer: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(metrics::RECONCILE_ANSWERS, metrics::LABEL_ANSWER => answer).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = answer;
}

/// A dead letter was pushed, lost, or settled by a replayer (`event` is a
/// closed set: see the metrics table).
#[inline]
pub(crate) fn dead_letter(event: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(metrics::DEAD_LETTERS, metrics::LABEL_EVENT => event).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = event;
}

/// A hedge was sent, won, or was due and not sent (`event` is a closed set:
/// see the metrics table).
#[inline]
pub(crate) fn hedge(event: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(metrics::HEDGES, metrics::LABEL_EVENT => event).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = event;
}

/// A circuit breaker went from `from` to `to` (the states' labels:
/// `closed`, `open`, `half_open`).
pub(crate) fn breaker_changed(from: &'static str, to: &'static str) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!(
            metrics::BREAKER_TRANSITIONS,
            metrics::LABEL_FROM => from,
            metrics::LABEL_TO => to,
        )
        .increment(1);
        // Closed breakers are not counted: with one breaker per host, their
        // number is however many hosts were ever called.
        if from != "closed" {
            ::metrics::gauge!(metrics::BREAKERS, metrics::LABEL_STATE => from).decrement(1);
        }
        if to != "closed" {
            ::metrics::gauge!(metrics::BREAKERS, metrics::LABEL_STATE => to).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (from, to);
}

/// What the idempotency layer did with a request: the `outcome` label of
/// [`metrics::SERVER_REQUESTS`] and the server span's `idempotency.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerOutcome {
    Executed,
    ExecutedUnprotected,
    Replayed,
    Conflict,
    Mismatch,
    MissingKey,
    InvalidKey,
    RequestTooLarge,
    RequestUnreadable,
    NotStored,
    StoreUnavailable,
    QuotaExceeded,
}

impl ServerOutcome {
    const fn as_str(self) -> &'static str {
        match self {
            ServerOutcome::Executed => "executed",
            ServerOutcome::ExecutedUnprotected => "executed_unprotected",
            ServerOutcome::Replayed => "replayed",
            ServerOutcome::Conflict => "conflict",
            ServerOutcome::Mismatch => "mismatch",
            ServerOutcome::MissingKey => "missing_key",
            ServerOutcome::InvalidKey => "invalid_key",
            ServerOutcome::RequestTooLarge => "request_too_large",
            ServerOutcome::RequestUnreadable => "request_unreadable",
            ServerOutcome::NotStored => "not_stored",
            ServerOutcome::StoreUnavailable => "store_unavailable",
            ServerOutcome::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// Records the idempotency layer's answer on the current span (the
/// request's server span) and in the server counter.
/// `status` is `None` when the handler failed without a response.
pub(crate) fn server_answered(outcome: ServerOutcome, status: Option<http::StatusCode>) {
    // Without a subscriber at INFO there is no server span to record on.
    let span = if tracing::level_enabled!(tracing::Level::INFO) {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    };
    if !span.is_disabled() {
        span.record("idempotency.outcome", outcome.as_str());
        if let Some(status) = status {
            span.record("http.response.status_code", i64::from(status.as_u16()));
        }
    }
    #[cfg(feature = "metrics")]
    {
        static METADATA: ::metrics::Metadata<'static> =
            ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));
        ::metrics::with_recorder(|recorder| {
            recorder.register_counter(outcome.metric_key(), &METADATA)
        })
        .increment(1);
    }
}

#[cfg(feature = "metrics")]
impl ServerOutcome {
    /// This outcome's key of [`metrics::SERVER_REQUESTS`], made once: every
    /// keyed request counts one, and a key made per call (as `counter!`
    /// makes one for a label it cannot see is constant) allocates its
    /// labels, recorder or not.
    fn metric_key(self) -> &'static ::metrics::Key {
        macro_rules! key {
            ($outcome:ident) => {{
                static LABELS: [::metrics::Label; 1] = [::metrics::Label::from_static_parts(
                    metrics::LABEL_OUTCOME,
                    ServerOutcome::$outcome.as_str(),
                )];
                static KEY: ::metrics::Key =
                    ::metrics::Key::from_static_parts(metrics::SERVER_REQUESTS, &LABELS);
                &KEY
            }};
        }
        match self {
            ServerOutcome::Executed => key!(Executed),
            ServerOutcome::ExecutedUnprotected => key!(ExecutedUnprotected),
            ServerOutcome::Replayed => key!(Replayed),
            ServerOutcome::Conflict => key!(Conflict),
            ServerOutcome::Mismatch => key!(Mismatch),
            ServerOutcome::MissingKey => key!(MissingKey),
            ServerOutcome::InvalidKey => key!(InvalidKey),
            ServerOutcome::RequestTooLarge => key!(RequestTooLarge),
            ServerOutcome::RequestUnreadable => key!(RequestUnreadable),
            ServerOutcome::NotStored => key!(NotStored),
            ServerOutcome::StoreUnavailable => key!(StoreUnavailable),
            ServerOutcome::QuotaExceeded => key!(QuotaExceeded),
        }
    }
}
