use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};

use super::{AttemptOutcome, DeadLetterId, DeadLetterQueue, FailedRequest, KeptBody, QueueError};
use crate::BoxError;
use crate::classify::RequestView;
use crate::request::{RequestTemplate, RetryResponse};
use crate::retry::GiveUpReason;

/// Where [`RetryLayer::dead_letters`](crate::RetryLayer::dead_letters) parks
/// what it gives up on: a queue, which headers to keep, and a hook to redact
/// a request before it is stored.
///
/// `Authorization`, `Cookie` and `Proxy-Authorization` are left out unless
/// [kept](Self::keep_header): the replaying client signs the request again,
/// and a queue is no place for credentials. A queue converts into a sink with
/// these defaults, so `dead_letters(queue)` is enough.
///
/// Pushing never holds up the caller: the push runs on a task of its own
/// (on the current tokio runtime), and one that fails is an `ERROR` event
/// with target `tower_reissue::dead_letter`, never a lost response.
///
/// ```
/// use http::header::AUTHORIZATION;
/// use tower_reissue::RetryLayer;
/// use tower_reissue::dead_letter::{DeadLetters, KeptBody, MemoryQueue};
///
/// let queue = MemoryQueue::new();
/// let sink = DeadLetters::new(queue.clone())
///     .keep_header(AUTHORIZATION)
///     .redact(|request| {
///         // Password resets hold personal data: keep that they failed, not what they said.
///         if request.uri.path().starts_with("/password-resets") {
///             request.body = KeptBody::NotKept("redacted".into());
///         }
///     });
/// let layer = RetryLayer::new().dead_letters(sink);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct DeadLetters {
    queue: Arc<dyn ErasedQueue>,
    dropped_headers: Vec<HeaderName>,
    redact: Option<RedactHook>,
}

type RedactHook = Arc<dyn Fn(&mut FailedRequest) + Send + Sync>;

/// The one queue operation the sink needs, object-safe so that the layer's
/// type does not name the queue.
trait ErasedQueue: Send + Sync + 'static {
    fn push(
        &self,
        request: FailedRequest,
    ) -> Pin<Box<dyn Future<Output = Result<DeadLetterId, QueueError>> + Send + '_>>;
}

impl<Q: DeadLetterQueue> ErasedQueue for Q {
    fn push(
        &self,
        request: FailedRequest,
    ) -> Pin<Box<dyn Future<Output = Result<DeadLetterId, QueueError>> + Send + '_>> {
        Box::pin(DeadLetterQueue::push(self, request))
    }
}

impl DeadLetters {
    /// A sink for `queue`, leaving credentials out.
    pub fn new<Q: DeadLetterQueue>(queue: Q) -> Self {
        DeadLetters {
            queue: Arc::new(queue),
            dropped_headers: vec![AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION],
            redact: None,
        }
    }

    /// Keeps `name` (one of `Authorization`, `Cookie`,
    /// `Proxy-Authorization`) in stored requests.
    pub fn keep_header(mut self, name: HeaderName) -> Self {
        self.dropped_headers.retain(|dropped| *dropped != name);
        self
    }

    /// Called on each request before it is stored, to remove or mask
    /// personal data (a body, a header, a query parameter).
    pub fn redact<F>(mut self, redact: F) -> Self
    where
        F: Fn(&mut FailedRequest) + Send + Sync + 'static,
    {
        self.redact = Some(Arc::new(redact));
        self
    }

    /// Parks a request the retry layer gave up on. A permanent failure is
    /// not parked: its answer is final, and replaying the same bytes would
    /// get it again.
    pub(crate) fn park<T, R>(
        &self,
        request: RequestView<'_>,
        template: &T,
        attempts: u32,
        reason: GiveUpReason,
        last: Option<&Result<R, BoxError>>,
    ) where
        T: RequestTemplate,
        R: RetryResponse,
    {
        let replay = request
            .extensions()
            .is_some_and(|e| e.get::<super::ReplayOf>().is_some());
        // A replay that fails goes back to its own entry, not to a new one.
        if reason == GiveUpReason::Permanent || replay {
            return;
        }
        let mut headers = request.headers().clone();
        for name in &self.dropped_headers {
            headers.remove(name);
        }
        let mut failed = FailedRequest {
            at: SystemTime::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers,
            body: match template.kept_body() {
                Ok(bytes) => KeptBody::Kept(bytes),
                Err(why) => KeptBody::NotKept(why.to_string()),
            },
            idempotency_key: request.idempotency_key().map(str::to_owned),
            reason: reason.as_str().to_owned(),
            attempts,
            last: match last {
                Some(Ok(response)) => AttemptOutcome::Status(response.status()),
                Some(Err(error)) => AttemptOutcome::Error(error_text(&**error)),
                None => AttemptOutcome::Error(reason.to_string()),
            },
        };
        if let Some(redact) = &self.redact {
            redact(&mut failed);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            crate::telemetry::dead_letter("push_failed");
            tracing::error!(
                target: "tower_reissue::dead_letter",
                method = %failed.method,
                uri = %failed.uri,
                "dead letter lost: no tokio runtime to push it on"
            );
            return;
        };
        let queue = self.queue.clone();
        runtime.spawn(async move {
            let (method, uri) = (failed.method.clone(), failed.uri.clone());
            match queue.push(failed).await {
                Ok(id) => {
                    crate::telemetry::dead_letter("pushed");
                    tracing::debug!(
                        target: "tower_reissue::dead_letter",
                        %id, %method, %uri, "dead letter parked"
                    )
                }
                Err(error) => {
                    crate::telemetry::dead_letter("push_failed");
                    tracing::error!(
                        target: "tower_reissue::dead_letter",
                        %method, %uri, %error, "dead letter lost: the queue refused it"
                    )
                }
            }
        });
    }
}

/// An error and its sources, `outer: inner: innermost`, since a client's
/// top-level error (such as hyper-util's "client error (Connect)") rarely
/// says what happened.
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl<Q: DeadLetterQueue> From<Q> for DeadLetters {
    fn from(queue: Q) -> Self {
        DeadLetters::new(queue)
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("dropped_headers", &self.dropped_headers)
            .field("redact", &self.redact.is_some())
            .finish_non_exhaustive()
    }
}
