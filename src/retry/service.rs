use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

use super::{ResponseFuture, RetryLayer, check};
use crate::BoxError;
use crate::classify::Classifier;
use crate::request::{RequestTemplate, RetryRequest, RetryResponse};

/// Retries failed attempts of requests that are safe to repeat.
///
/// Made by [`RetryLayer`]; see the [module docs](super) for the rules. The
/// wrapped service must be `Clone` (each logical request drives its own
/// clone), as with `tower::retry`.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Empty;
/// use bytes::Bytes;
/// use tower::ServiceExt;
/// use tower_reissue::{Attempts, ReplayBody, RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
///     Ok::<_, Infallible>(Response::new(()))
/// });
/// let client = tower::Layer::layer(&RetryLayer::new(), inner);
/// let request = Request::get("http://api.example/").body(Empty::<Bytes>::new()).unwrap();
/// let response = client.oneshot(request).await.unwrap();
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
/// # }
/// ```
pub struct Retry<S, C> {
    inner: S,
    config: Arc<RetryLayer<C>>,
}

impl<S, C> Retry<S, C> {
    pub(crate) fn from_layer(inner: S, config: Arc<RetryLayer<C>>) -> Self {
        Retry { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, C, R> Service<R> for Retry<S, C>
where
    R: RetryRequest,
    S: Service<R::Attempt> + Clone,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, R::Template, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The ready service drives this request; the clone takes its place
        // for the next `poll_ready`.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        // Everything that may unwind comes before the attempt is made: from
        // there to the returned future, its parts are moved once, not kept
        // in a second copy for the unwinding path (measured).
        let config = self.config.clone();
        let deadline = config.settings.deadline.map(crate::time::after);
        let timer = ResponseFuture::<S, R::Template, C>::timer(&config, deadline);
        // The attempt and its template stay one tuple, used in place:
        // destructuring it would copy both out once more (measured).
        let first = request.into_attempt(config.settings.replay_limit);
        if check::wanted(&config, &first.1) {
            return checking(service, first, config, deadline);
        }
        let span = crate::telemetry::AttemptSpan::open(&first.1.view(), 1);
        // Entered around the call, not through a closure or a block, either
        // of which would move the request or the future once more.
        let entered = span.enter();
        let future = first.1.send(&mut service, first.0);
        drop(entered);
        // Deposited once the attempt is on its way: no withdrawal can come
        // before its answer, and the attempt is not held up meanwhile.
        if let Some(budget) = &config.settings.budget {
            budget.deposit_for(first.1.view().uri());
        }
        ResponseFuture::new(future, span, timer, service, first.1, config, deadline)
    }
}

/// The future of a request that asks the reconciler before its first send.
#[cold]
#[inline(never)]
fn checking<S, T, C>(
    service: S,
    first: (T::Attempt, T),
    config: std::sync::Arc<RetryLayer<C>>,
    deadline: Option<tokio::time::Instant>,
) -> ResponseFuture<S, T, C>
where
    S: Service<T::Attempt>,
    T: RequestTemplate,
{
    let (attempt, template) = first;
    // A logical request like any other: it pays into the budget once.
    if let Some(budget) = &config.settings.budget {
        budget.deposit_for(template.view().uri());
    }
    let check = check::begin(&config, &template, attempt, deadline);
    let span = crate::telemetry::AttemptSpan::open(&template.view(), 1);
    ResponseFuture::checking(check, span, service, template, config, deadline)
}
