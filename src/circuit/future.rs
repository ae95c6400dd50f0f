use http::{Method, Uri};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::breaker::{Admission, Breaker};
use super::layer::Shared;
use crate::BoxError;
use crate::Verdict;
use crate::classify::{Classifier, Outcome, RequestView};
use crate::error::CircuitOpen;
use crate::request::RetryResponse;

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        // Taken when the outcome is recorded.
        call: Option<Call<C>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Refused {
            open: CircuitOpen,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, call: Call<C>) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            call: Some(call),
        }
    }

    pub(crate) fn refused(open: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Refused { open },
            call: None,
        }
    }
}

impl<F, C, R, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<R, E>>,
    R: RetryResponse,
    E: Into<BoxError>,
    C: Classifier,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Refused { open } => Poll::Ready(Err(Box::new(*open))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(call) = this.call.take() {
                    call.finish(&result);
                }
                Poll::Ready(result)
            }
        }
    }
}

/// A call the breaker let through, until its outcome is recorded.
pub(crate) struct Call<C> {
    shared: Arc<Shared<C>>,
    breaker: Arc<Breaker>,
    /// `None` once recorded.
    admission: Option<Admission>,
    // Kept for the classifier: both are shared, not copied (a standard
    // method is a tag, a parsed URI a reference count).
    method: Method,
    uri: Uri,
}

impl<C: Classifier> Call<C> {
    pub(crate) fn new(
        shared: Arc<Shared<C>>,
        breaker: Arc<Breaker>,
        admission: Admission,
        method: &Method,
        uri: &Uri,
    ) -> Self {
        Call {
            shared,
            breaker,
            admission: Some(admission),
            method: method.clone(),
            uri: uri.clone(),
        }
    }

    fn finish<R: RetryResponse>(mut self, result: &Result<R, BoxError>) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let request = RequestView::new(&self.method, &self.uri, &self.shared.no_headers);
        let outcome = match result {
            Ok(response) => Outcome::Response {
                status: response.status(),
                headers: response.headers(),
            },
            Err(error) => Outcome::Error(&**error),
        };
        let verdict = self.shared.classifier.classify(&request, &outcome);
        let failed = is_failure(verdict, &outcome);
        self.breaker
            .record(&self.shared.breakers.policy, admission, failed);
    }
}

impl<C> Drop for Call<C> {
    fn drop(&mut self) {
        // Dropped before its outcome came (the caller gave up, a timeout
        // above fired): nothing is known about the service, but a probe's
        // slot must not stay taken.
        if let Some(Admission::Probe(episode)) = self.admission {
            self.breaker.probe_abandoned(episode);
        }
    }
}

/// What counts against the service: the classifier's `Transient` verdicts
/// and `Permanent` 5xx. A 4xx is the caller's doing, whatever its verdict,
/// and a `Throttled` answer (a 503 with `Retry-After` included) comes from a
/// host that is up and pacing its clients: pacing is the retry layer's job.
fn is_failure(verdict: Verdict, outcome: &Outcome<'_>) -> bool {
    let status = outcome.status();
    if status.is_some_and(|s| s.is_client_error()) {
        return false;
    }
    match verdict {
        Verdict::Success | Verdict::Throttled { .. } => false,
        Verdict::Transient { .. } => true,
        Verdict::Permanent => status.is_some_and(|s| s.is_server_error()),
    }
}
