use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

use super::{HedgeLayer, ResponseFuture};
use crate::classify::{Classifier, RequestView};
use crate::error::BoxError;
use crate::request::{HttpTemplate, Repeat, ReplayBody, RequestTemplate, RetryResponse};

/// Sends another copy of a slow request that is safe to repeat, and keeps
/// the first success.
///
/// Made by [`HedgeLayer`]; see the [module docs](super) for the rules. It
/// takes `http::Request<ReplayBody<B>>`, the requests a
/// [`RetryLayer`](crate::RetryLayer) above it sends (or bodies wrapped with
/// [`ReplayBody::new`] by hand), so that copies are made from the body the
/// first copy keeps. The wrapped service must be `Clone`: each copy drives a
/// clone of its own.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Empty;
/// use tower::{Layer, ServiceExt};
/// use tower_reissue::{Attempts, HedgeLayer, ReplayBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
///     Ok::<_, Infallible>(Response::new(()))
/// });
/// let client = HedgeLayer::new(Duration::from_millis(50)).layer(inner);
/// let (body, _) = ReplayBody::new(Empty::new(), 64 * 1024);
/// let request = Request::get("http://api.example/").body(body).unwrap();
/// let response = client.oneshot(request).await.unwrap();
/// // Answered before the delay: no hedge.
/// assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
/// # }
/// ```
pub struct Hedge<S, C> {
    inner: S,
    config: Arc<HedgeLayer<C>>,
}

impl<S, C> Hedge<S, C> {
    pub(crate) fn from_layer(inner: S, config: Arc<HedgeLayer<C>>) -> Self {
        Hedge { inner, config }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tower::Layer;
    /// use tower_reissue::HedgeLayer;
    /// let hedge = HedgeLayer::new(Duration::from_millis(50)).layer("inner");
    /// assert_eq!(*hedge.get_ref(), "inner");
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tower::Layer;
    /// use tower_reissue::HedgeLayer;
    /// let mut hedge = HedgeLayer::new(Duration::from_millis(50)).layer(1);
    /// *hedge.get_mut() += 1;
    /// assert_eq!(*hedge.get_ref(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tower::Layer;
    /// use tower_reissue::HedgeLayer;
    /// let hedge = HedgeLayer::new(Duration::from_millis(50)).layer("inner");
    /// assert_eq!(hedge.into_inner(), "inner");
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for Hedge<S, C> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Hedge<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, C, B> Service<http::Request<ReplayBody<B>>> for Hedge<S, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    C: Classifier,
    B: http_body::Body,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReplayBody<B>>) -> Self::Future {
        if !may_hedge(&self.config, &request) {
            return ResponseFuture::alone(self.inner.call(request));
        }
        // The ready service sends the first copy; the clone takes its place
        // for the next `poll_ready`, and hedges are sent by clones of it.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let (first, template) = HttpTemplate::of_attempt(request);
        let config = self.config.clone();
        if let Some(budget) = config.settings.budget.as_ref().filter(|b| b.deposits) {
            budget.budget.deposit_for(template.view().uri());
        }
        let future = service.call(first);
        ResponseFuture::racing(future, service, template, config)
    }
}

/// Whether `request` may get hedges: hedging is on and the request is safe
/// to repeat before any answer is known (an idempotent method, or a key the
/// server deduplicates on, or a [`Retryable::Yes`](crate::retry::Retryable)
/// extension). A precondition (`If-Match`) is not enough: it stops a repeat
/// after the first copy took effect, not two copies racing.
#[inline]
fn may_hedge<C, B>(config: &HedgeLayer<C>, request: &http::Request<B>) -> bool {
    if config.settings.max_hedges == 0 {
        return false;
    }
    let view = RequestView::new(request.method(), request.uri(), request.headers())
        .with_extensions(request.extensions());
    matches!(view.repeat(), Repeat::Safe | Repeat::Forced)
}
