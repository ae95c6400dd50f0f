use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};

use super::{AttemptOutcome, DeadLetterId, DeadLetterQueue, FailedRequest, KeptBody, QueueError};
use crate::RetryLayer;
use crate::classify::Outcome;
use crate::retry::GiveUpReason;
use crate::retry::sink::{GaveUp, GiveUpSink, Parking};

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
}

impl GiveUpSink for DeadLetters {
    /// Parks a request the retry layer gave up on. A permanent failure is
    /// not parked: its answer is final, and replaying the same bytes would
    /// get it again.
    fn park(&self, gave_up: &GaveUp<'_>) -> Option<Parking> {
        let GaveUp {
            request,
            attempts,
            reason,
            ..
        } = *gave_up;
        let replay = request
            .extensions()
            .is_some_and(|e| e.get::<super::ReplayOf>().is_some());
        // A replay that fails goes back to its own entry, not to a new one.
        if reason == GiveUpReason::Permanent || replay {
            return None;
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
            body: match (gave_up.body)() {
                Ok(bytes) => KeptBody::Kept(bytes),
                Err(why) => KeptBody::NotKept(why.to_string()),
            },
            idempotency_key: request.idempotency_key().map(str::to_owned),
            reason: reason.as_str().to_owned(),
            attempts,
            last: match gave_up.last {
                Some(Outcome::Response { status, .. }) => AttemptOutcome::Status(status),
                Some(Outcome::Error(error)) => AttemptOutcome::Error(error_text(error)),
                None => AttemptOutcome::Error(reason.to_string()),
            },
        };
        if let Some(redact) = &self.redact {
            redact(&mut failed);
        }
        let queue = self.queue.clone();
        Some(Box::pin(async move {
            let (method, uri) = (failed.method.clone(), failed.uri.clone());
            match queue.push(failed).await {
                Ok(id) => {
                    crate::telemetry::dead_letter("pushed");
                    tracing::debug!(
                        target: "tower_reissue::dead_letter",
                        %id, %method, %uri, "dead letter parked"
                    );
                    Ok(id.get())
                }
                Err(error) => {
                    crate::telemetry::dead_letter("push_failed");
                    tracing::error!(
                        target: "tower_reissue::dead_letter",
                        %method, %uri, %error, "dead letter lost: the queue refused it"
                    );
                    Err(error.into())
                }
            }
        }))
    }
}

impl<C> RetryLayer<C> {
    /// Parks every request the layer gives up on (except a permanent
    /// failure) in a dead-letter queue, with its body as the replay copy
    /// kept it, for a [`Replayer`](crate::dead_letter::Replayer) or a person
    /// to send again. Takes a queue, or a
    /// [`DeadLetters`] sink to choose headers and redact. The push runs on a
    /// task of its own: the caller's answer never waits for it.
    ///
    /// ```
    /// use tower_reissue::RetryLayer;
    /// use tower_reissue::dead_letter::MemoryQueue;
    /// let queue = MemoryQueue::new();
    /// let layer = RetryLayer::new().dead_letters(queue.clone());
    /// # let _ = layer;
    /// ```
    pub fn dead_letters(self, sink: impl Into<DeadLetters>) -> Self {
        self.give_up_sink(Arc::new(sink.into()))
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
