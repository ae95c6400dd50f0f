use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

use super::layer::KeyConfig;
use super::{IdempotencyKey, KeySlot, ResponseFuture};
use crate::request::{KeyableRequest, RetryResponse};

/// Adds an idempotency key to the requests that need one.
///
/// Made by [`IdempotencyKeyLayer`](super::IdempotencyKeyLayer); see the
/// [module docs](super).
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt};
/// use tower_reissue::{IdempotencyKey, IdempotencyKeyLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::service_fn(|req: Request<()>| async move {
///     Ok::<_, Infallible>(Response::new(req.headers().get("idempotency-key").cloned()))
/// });
/// let client = IdempotencyKeyLayer::new().layer(inner);
///
/// // A key the caller set is kept.
/// let request = Request::post("http://api.example/orders")
///     .header("idempotency-key", "order-42")
///     .body(())
///     .unwrap();
/// let response = client.clone().oneshot(request).await.unwrap();
/// assert_eq!(response.body().as_ref().unwrap(), "order-42");
/// assert_eq!(response.extensions().get::<IdempotencyKey>().unwrap().as_str(), "order-42");
///
/// // GET requests are left alone.
/// let response = client.oneshot(Request::get("http://api.example/").body(()).unwrap()).await.unwrap();
/// assert!(response.body().is_none());
/// # }
/// ```
pub struct SetIdempotencyKey<S> {
    inner: S,
    config: Arc<KeyConfig>,
}

impl<S> SetIdempotencyKey<S> {
    pub(crate) fn new(inner: S, config: Arc<KeyConfig>) -> Self {
        SetIdempotencyKey { inner, config }
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

impl<S: Clone> Clone for SetIdempotencyKey<S> {
    fn clone(&self) -> Self {
        SetIdempotencyKey {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SetIdempotencyKey<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetIdempotencyKey")
            .field("inner", &self.inner)
            .field("header", &self.config.header)
            .field("methods", &self.config.methods)
            .finish()
    }
}

impl<S, R> Service<R> for SetIdempotencyKey<S>
where
    R: KeyableRequest,
    S: Service<R>,
    S::Response: RetryResponse,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let key = if self.config.applies_to(request.method()) {
            stamp(&self.config, &mut request)
        } else {
            None
        };
        ResponseFuture::new(self.inner.call(request), key)
    }
}

/// Gives `request` its key, in this order of preference: the header the
/// caller set (never replaced), an [`IdempotencyKey`] extension (set by the
/// caller, or by the retry layer once a first attempt had a key), the key
/// in the retry layer's slot for this logical request, a fresh one.
fn stamp<R: KeyableRequest>(config: &KeyConfig, request: &mut R) -> Option<IdempotencyKey> {
    let slot = match request.extensions() {
        Some(extensions) => extensions.get::<KeySlot>().cloned(),
        None => KeySlot::current(),
    };
    let key = match request.headers().get(&config.header) {
        // A caller's value that is not a valid key is still theirs to send;
        // the request just does not count as keyed.
        Some(value) => IdempotencyKey::from_header_value(value.clone()).ok()?,
        None => {
            let extension = request
                .extensions()
                .and_then(|e| e.get::<IdempotencyKey>())
                .cloned();
            let key = match (extension, &slot) {
                (Some(key), _) => key,
                (None, Some(slot)) => slot
                    .get_or_init(|| (config.header.clone(), config.generate()))
                    .clone(),
                (None, None) => config.generate(),
            };
            request
                .headers_mut()
                .insert(config.header.clone(), key.header_value().clone());
            key
        }
    };
    let key = if config.correlation_only {
        key.correlation_only()
    } else {
        key
    };
    if let Some(slot) = &slot {
        // A caller-set key fills the slot too, so the retry layer counts the
        // request as keyed whatever header carries the key.
        slot.get_or_init(|| (config.header.clone(), key.clone()));
    }
    if let Some(extensions) = request.extensions_mut() {
        if extensions.get::<IdempotencyKey>() != Some(&key) {
            extensions.insert(key.clone());
        }
    }
    Some(key)
}
