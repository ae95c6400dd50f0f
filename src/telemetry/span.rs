//! The per-attempt client span and the server span, named and attributed
//! after the OpenTelemetry HTTP semantic conventions.

use std::fmt;

use http::{Method, Uri};
use tracing::Span;
use tracing::field::Empty;

use crate::Verdict;
use crate::classify::{Outcome, RequestView};

/// The span of one attempt, or nothing when no subscriber wants it.
///
/// Boxed so that a disabled span costs the retry future one null pointer to
/// carry, move and drop, not a whole `Span`: with no subscriber, the success
/// path stays as cheap as without telemetry.
#[derive(Default)]
pub(crate) struct AttemptSpan(Option<Box<Span>>);

impl Drop for AttemptSpan {
    // Inline, so that dropping the retry future checks one pointer rather
    // than calling out to drop a span that is not there.
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            drop_span(span);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_span(span: Box<Span>) {
    drop(span);
}

impl AttemptSpan {
    /// Opens the span of one attempt (1-based) as a child of the current span.
    #[inline(always)]
    pub(crate) fn open(request: &RequestView<'_>, attempt: u32) -> Self {
        // The one check the success path pays when nobody listens.
        if !tracing::level_enabled!(tracing::Level::INFO) {
            return AttemptSpan(None);
        }
        let span = attempt_span(request, attempt);
        if span.is_disabled() {
            AttemptSpan(None)
        } else {
            AttemptSpan(Some(Box::new(span)))
        }
    }

    /// Enters the span for as long as the guard lives.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_deref().map(Span::enter)
    }

    /// Ends the span (if no one else holds it).
    #[inline]
    pub(crate) fn close(&mut self) {
        self.0 = None;
    }

    /// Records how the attempt ended, as the classifier saw it, and returns
    /// the `error.type` of a failed one (`None` on success).
    #[inline(always)]
    pub(crate) fn ended(
        &self,
        request: &RequestView<'_>,
        outcome: &Outcome<'_>,
        verdict: Verdict,
    ) -> Option<ErrorType> {
        if verdict == Verdict::Success && self.0.is_none() {
            return None;
        }
        record_end(self.0.as_deref(), request, outcome, verdict)
    }
}

/// Opens the span of one attempt. Fields known only later are declared
/// `Empty` and recorded when the attempt ends; `http.request.resend_count`
/// is left out of the first attempt, as the conventions ask.
///
/// Without a subscriber interested in it, `tracing` hands back a disabled
/// span before evaluating any field, so the URL is never formatted.
#[inline]
fn attempt_span(request: &RequestView<'_>, attempt: u32) -> Span {
    let uri = request.uri();
    let method = known_method(request.method());
    // Integers as i64: OpenTelemetry's attributes have no unsigned type, and
    // `tracing-opentelemetry` would turn other widths into strings.
    let resend_count = attempt.checked_sub(1).filter(|&n| n > 0).map(i64::from);
    tracing::info_span!(
        target: "tower_reissue::attempt",
        "HTTP",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        http.request.method_original = Empty,
        url.full = %FullUrl(uri),
        server.address = uri.host(),
        server.port = port(uri),
        http.request.resend_count = resend_count,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

fn record_end(
    span: Option<&Span>,
    request: &RequestView<'_>,
    outcome: &Outcome<'_>,
    verdict: Verdict,
) -> Option<ErrorType> {
    let error_type = match verdict {
        Verdict::Success => None,
        _ => Some(ErrorType::of(outcome)),
    };
    let Some(span) = span else {
        return error_type;
    };
    if known_method(request.method()) == OTHER {
        span.record("http.request.method_original", request.method().as_str());
    }
    if let Some(status) = outcome.status() {
        span.record("http.response.status_code", i64::from(status.as_u16()));
    }
    if let Some(error_type) = &error_type {
        span.record("error.type", error_type.as_str());
        span.record("otel.status_code", "error");
    }
    error_type
}

/// What failed in an attempt, from the classifier's view: the status code
/// for an answer (as OpenTelemetry asks), or a recognised transport cause
/// (`connect`, `timeout`, `connection_reset`, ...; `_OTHER` otherwise).
/// Both come from closed sets, so they serve as metric labels too.
#[derive(Debug, Clone)]
pub(crate) enum ErrorType {
    Status(http::StatusCode),
    Cause(&'static str),
}

impl ErrorType {
    pub(crate) fn of(outcome: &Outcome<'_>) -> Self {
        match outcome {
            Outcome::Response { status, .. } => ErrorType::Status(*status),
            Outcome::Error(error) => ErrorType::Cause(crate::classify::error_type(*error)),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            ErrorType::Status(status) => status.as_str(),
            ErrorType::Cause(cause) => cause,
        }
    }
}

const OTHER: &str = "_OTHER";

/// The method as the conventions name it: one of the RFC 9110 methods (and
/// PATCH), or `_OTHER`, which keeps span names and labels bounded.
pub(crate) fn known_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER,
    }
}

fn port(uri: &Uri) -> Option<i64> {
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    });
    port.map(i64::from)
}

/// `url.full` without the userinfo (`user:password@`), which the conventions
/// forbid recording.
struct FullUrl<'a>(&'a Uri);

impl fmt::Display for FullUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            let host_port = authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, rest)| rest);
            f.write_str(host_port)?;
        }
        match uri.path_and_query() {
            Some(path_and_query) => f.write_str(path_and_query.as_str()),
            None => Ok(()),
        }
    }
}

/// Opens the span of one keyed request on the server; its outcome is
/// recorded by [`server_answered`](super::server_answered).
///
/// `None` when no subscriber wants it, like an attempt's span: a disabled
/// span still costs its enter and exit on every poll, and with `tracing`'s
/// `log` feature (which axum's default features turn on) a few hundred
/// instructions of a keyed request.
pub(crate) fn server_span(method: &Method) -> Option<Span> {
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return None;
    }
    let span = tracing::info_span!(
        target: "tower_reissue::idempotency",
        "idempotency",
        http.request.method = known_method(method),
        idempotency.outcome = Empty,
        http.response.status_code = Empty,
    );
    (!span.is_disabled()).then_some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url_drops_userinfo() {
        let uri: Uri = "https://ada:secret@api.example:8443/emails?x=1"
            .parse()
            .unwrap();
        assert_eq!(
            FullUrl(&uri).to_string(),
            "https://api.example:8443/emails?x=1"
        );
        let plain: Uri = "http://api.example/".parse().unwrap();
        assert_eq!(FullUrl(&plain).to_string(), "http://api.example/");
        assert_eq!(port(&plain), Some(80));
    }
}
