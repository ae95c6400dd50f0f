//! The [`Idempotency`] service: a request without a key passes through, one
//! with a bad or missing key is answered at once, and one with a key becomes
//! boxed keyed work (see `keyed`).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use tower_service::Service;
use tracing::{Instrument, Span};

use super::body::{BoxError, ResponseBody};
use super::future::{KeyedWork, ResponseFuture};
use super::keyed::run_keyed;
use super::layer::Config;
use super::principal::{AuthorizationPrincipal, PrincipalExtractor};
use super::problem::Problem;
use crate::key;
use crate::store::{IdempotencyStore, RecordKey};
use crate::telemetry;

/// The service built by [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// The inner service receives requests whose body is
/// `Either<Full<Bytes>, B>`: the buffered body (`Left`) for a request with a
/// key, which had to be read to fingerprint it, or the original body
/// (`Right`) for one without.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{Either, Full};
/// use tower::{Layer, ServiceExt};
/// use tower_reissue::{IdempotencyLayer, MemoryStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let handler = tower::service_fn(|request: Request<Either<Full<Bytes>, Full<Bytes>>>| async move {
///     Ok::<_, Infallible>(Response::new(request.into_body()))
/// });
/// let service = IdempotencyLayer::new(MemoryStore::new()).layer(handler);
/// let request = Request::post("/").header("idempotency-key", "\"k\"").body(Full::new(Bytes::from("x"))).unwrap();
/// let response = service.clone().oneshot(request).await?;
/// assert_eq!(response.status(), 200);
/// # Ok::<_, Infallible>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Idempotency<S, St, P = AuthorizationPrincipal> {
    inner: S,
    store: St,
    principal: P,
    config: Arc<Config>,
}

impl<S, St, P> Idempotency<S, St, P> {
    pub(crate) fn from_parts(inner: S, store: St, principal: P, config: Arc<Config>) -> Self {
        Self {
            inner,
            store,
            principal,
            config,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, St, P, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St, P>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    P: PrincipalExtractor,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let key = match key::parse(request.headers()) {
            Ok(None) if !self.config.required_for.contains(request.method()) => {
                return ResponseFuture::passthrough(self.inner.call(request.map(Either::Right)));
            }
            parsed => parsed,
        };
        let span = telemetry::server_span(request.method());
        let key = match key {
            Ok(Some(key)) => key,
            Ok(None) => {
                let _request = span.as_ref().map(Span::enter);
                return ResponseFuture::immediate(Problem::KeyMissing.into_response());
            }
            Err(err) => {
                let _request = span.as_ref().map(Span::enter);
                return ResponseFuture::immediate(Problem::KeyInvalid(err).into_response());
            }
        };
        // `poll_ready` readied `self.inner`; the request runs later, so take
        // that instance and leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        let record = RecordKey::of_client(self.principal.principal(&parts).into_cow(), key);
        let work = run_keyed(
            inner,
            self.store.clone(),
            self.config.clone(),
            record,
            parts,
            body,
        );
        ResponseFuture::keyed(KeyedWork::new(match span {
            Some(span) => Box::pin(work.instrument(span)),
            None => Box::pin(work),
        }))
    }
}
