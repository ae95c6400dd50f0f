//! Asking before the first send: for a request that may have been sent
//! before, by another run of the same work (a replayed dead letter, a handler
//! run again after a crash), to an API that cannot deduplicate it.

use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// A request extension: ask the reconciler whether an earlier send of this
/// request took effect before sending it at all. The request is sent only
/// when the answer is [`NotApplied`](super::Reconciled::NotApplied).
///
/// It takes effect only under a layer with a
/// [reconciler](crate::RetryLayer::reconcile); the check is paid for from the
/// [`RetryBudget`](crate::RetryBudget) like a probe, its time counts against
/// the deadline, and it is bounded by `reconcile_timeout`. The reconciler
/// sees the request with [`attempt`](super::ReconcileRequest::attempt) 0 and
/// no last status or error.
///
/// | answer | what the caller gets |
/// |---|---|
/// | `NotApplied` | the request is sent, retried under the usual rules |
/// | `Applied` | an [`AlreadyApplied`] error; nothing is sent |
/// | `Unknown`, an error, a timeout, or no budget | a [`NotSent`] error; nothing is sent, and the give-up (reason `unreconciled`, or `budget_exhausted`/`deadline`) reaches the hooks and the dead-letter queue |
///
/// ```
/// use tower_reissue::reconcile::ReconcileFirst;
///
/// let mut request = http::Request::post("http://api.example/emails").body(()).unwrap();
/// request.extensions_mut().insert(ReconcileFirst);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReconcileFirst;

/// The reconciler found that an earlier send of the request took effect, so
/// it was not sent again (see [`ReconcileFirst`]).
///
/// ```
/// use tower_reissue::reconcile::AlreadyApplied;
/// assert_eq!(
///     AlreadyApplied.to_string(),
///     "not sent: a reconciler found that an earlier send of this request took effect",
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlreadyApplied;

impl fmt::Display for AlreadyApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not sent: a reconciler found that an earlier send of this request took effect")
    }
}

impl StdError for AlreadyApplied {}

/// The request was not sent: the check before sending it (see
/// [`ReconcileFirst`]) could not tell whether an earlier send took effect.
/// Its source is the reconciler's error, if it failed.
///
/// ```
/// use tower_reissue::reconcile::NotSent;
/// let error = NotSent::new("the reconciler answered unknown", None);
/// assert_eq!(error.to_string(), "not sent: the reconciler answered unknown");
/// ```
#[derive(Debug)]
pub struct NotSent {
    why: &'static str,
    source: Option<BoxError>,
}

impl NotSent {
    /// An error saying why the request was not sent, with the error behind
    /// it, if any.
    pub fn new(why: &'static str, source: Option<BoxError>) -> Self {
        NotSent { why, source }
    }
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not sent: {}", self.why)
    }
}

impl StdError for NotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
