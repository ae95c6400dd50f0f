//! Asking the API whether a request whose fate is unknown took effect.
//!
//! A POST that failed with a 500 or a dropped connection may or may not have
//! been acted on. When the server deduplicates on an idempotency key, the
//! retry layer just repeats it; when the server ignores keys (a third party
//! you cannot change), a blind repeat may send a second email. A
//! [`Reconcile`] implementation answers the question independently, for
//! example with `GET /emails?reference={correlation id}`, and
//! [`RetryLayer::reconcile`](crate::RetryLayer::reconcile) acts on the
//! answer:
//!
//! | answer | what the layer does |
//! |---|---|
//! | [`Reconciled::NotApplied`] | the attempt counts as processed `No`: retried under the usual rules (attempts, budget, deadline) |
//! | [`Reconciled::Applied`] | no retry; the caller gets the last response with a [`Reconciliation::Applied`] extension (or, when the attempt ended without a response, an [`AppliedResponseLost`] error) |
//! | [`Reconciled::Unknown`], an error, or no answer within `reconcile_timeout` | no retry; give-up reason [`Unreconciled`](crate::retry::GiveUpReason::Unreconciled): never guess |
//!
//! The reconciler is asked only for a `Transient` verdict with processed
//! `Maybe` on a request not otherwise safe to repeat: never for a GET, a PUT,
//! a request that carries an idempotency key the server honours, a
//! conditional request, or a failure the server provably did not act on.
//!
//! Probes are requests too. Each one withdraws from the
//! [`RetryBudget`](crate::RetryBudget) like a retry (a refused withdrawal
//! means no probe, and the layer gives up with `BudgetExhausted`), its time
//! counts against the deadline, and each answer is a `tracing` event (target
//! `tower_reissue::reconcile`) and a call to
//! [`on_reconcile`](crate::RetryLayer::on_reconcile).
//!
//! # Correlation ids
//!
//! To be found later, a request must carry a reference the API stores. An
//! [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer) made
//! [`correlation_only`](crate::IdempotencyKeyLayer::correlation_only) gives
//! each logical request one, in a header of your choice (one the API keeps,
//! such as `X-Reference`), without making the request count as safe to
//! repeat. The reconciler finds it in
//! [`ReconcileRequest::correlation_id`]. For an API that takes the reference
//! in the body (a JSON field), make the key yourself and put it in both
//! places:
//!
//! ```
//! use tower_reissue::IdempotencyKey;
//!
//! let reference = IdempotencyKey::new_v4().correlation_only();
//! let body = serde_json::json!({ "to": "ada@example.com", "reference": reference.as_str() });
//! let mut request = http::Request::post("http://api.example/emails")
//!     .body(body.to_string())
//!     .unwrap();
//! request.extensions_mut().insert(reference);
//! ```
//!
//! # Conditional requests prove themselves
//!
//! A request sent with `If-Match`, `If-None-Match: *` or
//! `If-Unmodified-Since` cannot take effect twice: a repeat after the first
//! one took effect fails with 412 Precondition Failed. Such requests are
//! safe to repeat, and a 412 that follows an ambiguous attempt is handed to
//! the caller with [`Reconciliation::Applied`] (most likely by that earlier
//! attempt) rather than as a plain failure.

mod first;
mod layer;

pub use first::{AlreadyApplied, NotSent, ReconcileFirst};
pub(crate) use layer::{Begun, ReconcileConfig, Settled, applied, begin, settle};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::BoxError;
use crate::IdempotencyKey;
use crate::classify::{Outcome, RequestView};

/// What a reconciler found out about a request whose fate was unknown.
///
/// ```
/// use tower_reissue::reconcile::Reconciled;
/// assert_eq!(Reconciled::Applied.to_string(), "applied");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reconciled {
    /// The request took effect: do not send it again.
    Applied,
    /// The request provably did not take effect: it may be sent again.
    NotApplied,
    /// The reconciler cannot tell.
    Unknown,
}

impl fmt::Display for Reconciled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reconciled::Applied => "applied",
            Reconciled::NotApplied => "not applied",
            Reconciled::Unknown => "unknown",
        })
    }
}

/// A response extension: the response was settled by reconciliation rather
/// than by its own status.
///
/// ```
/// use tower_reissue::reconcile::Reconciliation;
/// let mut response = http::Response::builder().status(500).body(()).unwrap();
/// response.extensions_mut().insert(Reconciliation::Applied);
/// assert_eq!(response.extensions().get::<Reconciliation>(), Some(&Reconciliation::Applied));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reconciliation {
    /// The request took effect although this response says it failed: a
    /// reconciler confirmed it, or it is the 412 of a conditional request
    /// repeated after an ambiguous attempt.
    Applied,
}

/// A request whose fate is unknown, as handed to a [`Reconcile`]
/// implementation. It owns what it holds, so a reconciler's future can be
/// `'static`.
///
/// ```
/// use bytes::Bytes;
/// use http::{Method, StatusCode};
/// use tower_reissue::IdempotencyKey;
/// use tower_reissue::reconcile::ReconcileRequest;
///
/// let request = ReconcileRequest::new(Method::POST, "http://api.example/emails".parse().unwrap())
///     .with_body(Bytes::from_static(b"{}"))
///     .with_correlation_id(IdempotencyKey::new("ref-1").unwrap())
///     .with_last_status(StatusCode::INTERNAL_SERVER_ERROR);
/// assert_eq!(request.correlation_id(), Some("ref-1"));
/// assert_eq!(request.last_status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
/// assert_eq!(request.attempt(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct ReconcileRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Bytes>,
    attempt: u32,
    last_status: Option<StatusCode>,
    last_error: Option<String>,
    correlation_id: Option<IdempotencyKey>,
}

impl ReconcileRequest {
    /// A request on its first attempt, with no headers, body or outcome:
    /// for testing a reconciler.
    pub fn new(method: Method, uri: Uri) -> Self {
        ReconcileRequest {
            method,
            uri,
            headers: HeaderMap::new(),
            body: None,
            attempt: 1,
            last_status: None,
            last_error: None,
            correlation_id: None,
        }
    }

    /// Sets the headers.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the kept body bytes.
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    /// Sets the attempt number (1-based).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the last attempt's status.
    pub fn with_last_status(mut self, status: StatusCode) -> Self {
        self.last_status = Some(status);
        self.last_error = None;
        self
    }

    /// Sets the last attempt's error text.
    pub fn with_last_error(mut self, error: impl Into<String>) -> Self {
        self.last_error = Some(error.into());
        self.last_status = None;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: IdempotencyKey) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request headers, as sent.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body bytes the retry layer kept, or `None` when it kept none
    /// (the body was over `replay_limit`, or is still being read).
    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// The attempt whose fate is unknown (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The status the attempt ended with, if the server answered.
    pub fn last_status(&self) -> Option<StatusCode> {
        self.last_status
    }

    /// The error the attempt ended with (with its causes), if the server
    /// did not answer.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The logical request's correlation id: its idempotency key, set by an
    /// [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer) or by the caller.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_ref().map(IdempotencyKey::as_str)
    }

    /// Builds the request for a check before the first send (attempt 0, no
    /// outcome yet).
    pub(crate) fn before_send(request: &RequestView<'_>, body: Option<Bytes>) -> Self {
        let mut check = Self::new(request.method().clone(), request.uri().clone())
            .with_headers(request.headers().clone())
            .with_attempt(0);
        check.body = body;
        check.correlation_id = correlation_id(request);
        check
    }

    /// Builds the request for the attempt that just ended.
    pub(crate) fn from_attempt(
        request: &RequestView<'_>,
        body: Option<Bytes>,
        outcome: &Outcome<'_>,
    ) -> Self {
        let correlation_id = correlation_id(request);
        let (last_status, last_error) = match outcome {
            Outcome::Response { status, .. } => (Some(*status), None),
            Outcome::Error(error) => (None, Some(error_chain(*error))),
        };
        ReconcileRequest {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            body,
            attempt: request.attempt(),
            last_status,
            last_error,
            correlation_id,
        }
    }
}

/// The logical request's correlation id: its key extension, or its header.
fn correlation_id(request: &RequestView<'_>) -> Option<IdempotencyKey> {
    match request.extensions().and_then(|e| e.get::<IdempotencyKey>()) {
        Some(key) => Some(key.clone()),
        None => request
            .idempotency_key()
            .and_then(|k| IdempotencyKey::new(k).ok()),
    }
}

/// `error: cause: cause`, so that a reconciler logging it sees why.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// Finds out whether a request whose fate is unknown took effect.
///
/// Closures taking a [`ReconcileRequest`] and returning a future of
/// [`Reconciled`] (or of `Result<Reconciled, E>`) implement it.
///
/// ```
/// use tower_reissue::RetryLayer;
/// use tower_reissue::reconcile::{ReconcileRequest, Reconciled};
///
/// let layer = RetryLayer::new().reconcile(|request: ReconcileRequest| async move {
///     // Ask the API, e.g. GET /emails?reference={id}; here: nothing known.
///     match request.correlation_id() {
///         Some(_id) => Reconciled::Unknown,
///         None => Reconciled::Unknown,
///     }
/// });
/// # let _ = layer;
/// ```
///
/// A type of its own, holding a client:
///
/// ```
/// use tower_reissue::BoxError;
/// use tower_reissue::reconcile::{Reconcile, ReconcileRequest, Reconciled};
///
/// struct Mailbox { sent: std::collections::HashSet<String> }
///
/// impl Reconcile for Mailbox {
///     fn reconcile(
///         &self,
///         request: ReconcileRequest,
///     ) -> impl Future<Output = Result<Reconciled, BoxError>> + Send {
///         let found = request.correlation_id().map(|id| self.sent.contains(id));
///         async move {
///             Ok(match found {
///                 Some(true) => Reconciled::Applied,
///                 Some(false) => Reconciled::NotApplied,
///                 None => Reconciled::Unknown,
///             })
///         }
///     }
/// }
/// # let _ = tower_reissue::RetryLayer::new().reconcile(Mailbox { sent: Default::default() });
/// ```
pub trait Reconcile: Send + Sync + 'static {
    /// Asks whether `request` took effect. An error counts as
    /// [`Reconciled::Unknown`].
    fn reconcile(
        &self,
        request: ReconcileRequest,
    ) -> impl Future<Output = Result<Reconciled, BoxError>> + Send;
}

/// What a reconciling closure's future may return: [`Reconciled`], or a
/// `Result` of it whose error counts as [`Reconciled::Unknown`].
///
/// ```
/// use tower_reissue::reconcile::{IntoReconciled, Reconciled};
/// assert_eq!(Reconciled::Applied.into_reconciled().unwrap(), Reconciled::Applied);
/// let failed: Result<Reconciled, std::io::Error> = Err(std::io::Error::other("lookup failed"));
/// assert!(failed.into_reconciled().is_err());
/// ```
pub trait IntoReconciled {
    /// The answer, or why there is none.
    fn into_reconciled(self) -> Result<Reconciled, BoxError>;
}

impl IntoReconciled for Reconciled {
    fn into_reconciled(self) -> Result<Reconciled, BoxError> {
        Ok(self)
    }
}

impl<E: Into<BoxError>> IntoReconciled for Result<Reconciled, E> {
    fn into_reconciled(self) -> Result<Reconciled, BoxError> {
        self.map_err(Into::into)
    }
}

impl<F, Fut> Reconcile for F
where
    F: Fn(ReconcileRequest) -> Fut + Send + Sync + 'static,
    Fut: Future + Send,
    Fut::Output: IntoReconciled,
{
    fn reconcile(
        &self,
        request: ReconcileRequest,
    ) -> impl Future<Output = Result<Reconciled, BoxError>> + Send {
        let answer = self(request);
        async move { answer.await.into_reconciled() }
    }
}

/// A reconciler's answer in flight. Boxed: it is made only on the failure
/// path, and its type is the user's.
pub(crate) type Probe = Pin<Box<dyn Future<Output = Result<Reconciled, BoxError>> + Send>>;

/// A reconciler behind one type, so that `RetryLayer` needs no parameter
/// for it.
pub(crate) type SharedReconcile = Arc<dyn Fn(ReconcileRequest) -> Probe + Send + Sync>;

pub(crate) fn share<R: Reconcile>(reconciler: R) -> SharedReconcile {
    let reconciler = Arc::new(reconciler);
    Arc::new(move |request| {
        let reconciler = reconciler.clone();
        Box::pin(async move { reconciler.reconcile(request).await })
    })
}

/// A probe made for one request, as passed to
/// [`RetryLayer::on_reconcile`](crate::RetryLayer::on_reconcile).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReconcileEvent<'a> {
    /// The request (method, URI, headers, correlation id).
    pub request: RequestView<'a>,
    /// The attempt whose fate was unknown (1-based).
    pub attempt: u32,
    /// The reconciler's answer, or why there is none (its error, or
    /// [`ReconcileTimedOut`]).
    pub answer: Result<Reconciled, &'a (dyn StdError + Send + Sync + 'static)>,
}

/// The reconciler gave no answer within `reconcile_timeout` (or before the
/// deadline).
///
/// ```
/// use tower_reissue::reconcile::ReconcileTimedOut;
/// assert_eq!(ReconcileTimedOut.to_string(), "the reconciler did not answer in time");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconcileTimedOut;

impl fmt::Display for ReconcileTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the reconciler did not answer in time")
    }
}

impl StdError for ReconcileTimedOut {}

/// The request took effect, as a reconciler confirmed, but the attempt that
/// made it ended without a response (a dropped connection, a timeout): the
/// caller gets this error in place of the response it will never see.
///
/// ```
/// use tower_reissue::reconcile::AppliedResponseLost;
/// let lost = AppliedResponseLost::new(std::io::Error::other("connection reset").into());
/// assert_eq!(
///     lost.to_string(),
///     "the request took effect (confirmed by reconciliation) but its response was lost",
/// );
/// assert!(std::error::Error::source(&lost).is_some());
/// ```
#[derive(Debug)]
pub struct AppliedResponseLost {
    source: BoxError,
}

impl AppliedResponseLost {
    /// Wraps the error the attempt ended with.
    pub fn new(source: BoxError) -> Self {
        AppliedResponseLost { source }
    }
}

impl fmt::Display for AppliedResponseLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the request took effect (confirmed by reconciliation) but its response was lost",
        )
    }
}

impl StdError for AppliedResponseLost {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Whether a request carries a precondition that makes a repeat fail with
/// 412 once the first took effect: `If-Match`, `If-None-Match: *` or
/// `If-Unmodified-Since`.
///
/// ```
/// use http::HeaderMap;
/// use tower_reissue::reconcile::is_conditional;
///
/// let mut headers = HeaderMap::new();
/// assert!(!is_conditional(&headers));
/// headers.insert("if-none-match", "\"v1\"".parse().unwrap());
/// assert!(!is_conditional(&headers), "only `*` stops a second create");
/// headers.insert("if-match", "\"v1\"".parse().unwrap());
/// assert!(is_conditional(&headers));
/// ```
pub fn is_conditional(headers: &HeaderMap) -> bool {
    headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_UNMODIFIED_SINCE)
        || headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() == b"*")
}
