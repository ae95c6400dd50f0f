use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

use super::ResponseFuture;
use super::future::Call;
use super::layer::Shared;
use crate::BoxError;
use crate::classify::Classifier;
use crate::request::RetryResponse;

/// Fails calls at once with [`CircuitOpen`](super::CircuitOpen) while the
/// service below is judged down, and lets probes find out when it is back.
///
/// Made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer); see the
/// [module docs](super). Every clone shares the layer's breaker.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use tower::{Layer, ServiceExt};
/// use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer, CircuitOpen};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().min_throughput(2).failure_ratio(0.5).build();
/// let down = tower::service_fn(|_req: Request<()>| async {
///     Ok::<_, Infallible>(Response::builder().status(503).body(()).unwrap())
/// });
/// let client = layer.layer(down);
/// for _ in 0..2 {
///     let response = client.clone().oneshot(Request::new(())).await.unwrap();
///     assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// }
/// assert_eq!(layer.state(), BreakerState::Open);
/// let refused = client.oneshot(Request::new(())).await.unwrap_err();
/// assert!(refused.is::<CircuitOpen>());
/// # }
/// ```
pub struct CircuitBreaker<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<C>>) -> Self {
        CircuitBreaker { inner, shared }
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

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.shared.breakers.state())
            .finish_non_exhaustive()
    }
}

impl<S, C, B> Service<http::Request<B>> for CircuitBreaker<S, C>
where
    S: Service<http::Request<B>>,
    S::Response: RetryResponse,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let breaker = self.shared.breakers.breaker_for(request.uri());
        match breaker.admit(&self.shared.breakers.policy) {
            Ok(admission) => {
                let call = Call::new(
                    self.shared.clone(),
                    breaker,
                    admission,
                    request.method(),
                    request.uri(),
                );
                ResponseFuture::called(self.inner.call(request), call)
            }
            Err(open) => ResponseFuture::refused(open),
        }
    }
}
