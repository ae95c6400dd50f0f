use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use tower_service::Service;
use tracing::{Instrument, Span};

use super::StoreDecision;
use super::body::{BoxError, ResponseBody};
use super::exec::{self, Acquired, ClaimRules, Claimed, HeldClaim, Refused, Renewal};
use super::future::{KeyedWork, ResponseFuture};
use super::key;
use super::layer::Config;
use super::principal::{AuthorizationPrincipal, PrincipalExtractor};
use super::problem::Problem;
use super::store::{Fingerprint, IdempotencyStore, Outcome, RecordKey, StoreError, StoredResponse};
use crate::telemetry::{self, ServerOutcome};

/// The response header marking a replayed result (a `HeaderName`: from a
/// `&str` it would be parsed and copied on every replay).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Connection-level headers: they describe one transfer, not the result, so
/// they are not stored.
const CONNECTION_HEADERS: [HeaderName; 6] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
];

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

async fn run_keyed<S, St, ReqBody, ResBody>(
    mut inner: S,
    store: St,
    config: Arc<Config>,
    record: RecordKey,
    parts: Parts,
    body: ReqBody,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let body = match read_request_body(body, config.max_request_body).await {
        Ok(body) => body,
        Err(problem) => return Ok(problem.into_response()),
    };
    let fingerprint = Fingerprint::of_request(&parts.method, &parts.uri, &body);
    let rules = ClaimRules {
        lease: config.lease,
        wait_for_result: config.wait_for_result,
        wait_poll_interval: config.wait_poll_interval,
        kept: config.kept.clone(),
    };
    let token = match claim(&store, &config, &rules, &record, &fingerprint).await {
        Ok(token) => token,
        Err(answer) => return Ok(answer),
    };
    let request = Request::from_parts(parts, Either::Left(Full::new(body)));
    let Some(token) = token else {
        // Failing open: the store could not be asked, run unprotected.
        let response = inner.call(request).await;
        let status = response.as_ref().ok().map(Response::status);
        telemetry::server_answered(ServerOutcome::ExecutedUnprotected, status);
        return Ok(response?.map(ResponseBody::inner));
    };
    let held = HeldClaim::new(store, record, fingerprint, token, &rules);
    let mut work = pin!(execute(inner, request, &config));
    let executed = match held.renewing(config.lease, work.as_mut()).await {
        Renewal::Finished(executed) => executed,
        // The client still gets its response; the store keeps the record of
        // whoever took over.
        Renewal::Lost => work.await,
    };
    match executed {
        Err(err) => {
            held.release().await;
            Err(err)
        }
        Ok(Executed::Release(response)) => {
            held.release().await;
            Ok(response)
        }
        Ok(Executed::Stored(parts, body)) => {
            let stored = || Outcome::Response(stored_response(&parts, &body));
            held.complete(stored(), stored, config.ttl).await;
            Ok(Response::from_parts(parts, ResponseBody::full(body)))
        }
        Ok(Executed::NotStored(response)) => {
            let status = response.status();
            let not_stored = move || Outcome::NotStored { status };
            held.complete(not_stored(), not_stored, config.ttl).await;
            Ok(response)
        }
    }
}

async fn read_request_body<B>(body: B, limit: usize) -> Result<Bytes, Problem>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = Problem::RequestTooLarge { limit };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large);
    }
    let mut body = pin!(body);
    let mut read = Joined::default();
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|_| Problem::RequestUnreadable)?;
        // Trailers are not part of what the request asked for.
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(too_large);
            }
            read.push(data);
        }
    }
    Ok(read.into_bytes())
}

/// Data read frame by frame, as one `Bytes`: a body that came in one frame
/// (most do) is kept as it is, without a copy.
#[derive(Default)]
struct Joined {
    first: Bytes,
    // Only once a second frame came.
    more: Option<BytesMut>,
}

impl Joined {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) {
        match &mut self.more {
            Some(all) => all.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut all = BytesMut::with_capacity(self.first.len() + data.len());
                all.extend_from_slice(&self.first);
                all.extend_from_slice(&data);
                self.more = Some(all);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        self.more.map_or(self.first, BytesMut::freeze)
    }
}

/// Claims the record: `Ok(Some(token))` to run the request, `Ok(None)` to run
/// it unprotected (failing open), `Err(response)` to answer without running.
async fn claim<St: IdempotencyStore, B>(
    store: &St,
    config: &Config,
    rules: &ClaimRules,
    record: &RecordKey,
    fingerprint: &Fingerprint,
) -> Result<Option<Acquired>, Response<ResponseBody<B>>> {
    match exec::claim(store, record, fingerprint, rules).await {
        Ok(Claimed::Acquired(token)) => Ok(Some(token)),
        Ok(Claimed::Completed(outcome)) => Err(replay(outcome)),
        Err(Refused::FingerprintMismatch) => Err(Problem::KeyReused.into_response()),
        Err(Refused::InFlight) => Err(Problem::InFlight {
            retry_after: config.conflict_retry_after,
        }
        .into_response()),
        // Not a failure of the store: failing open would let the flood in.
        Err(Refused::Store(StoreError::QuotaExceeded { retry_after })) => {
            Err(Problem::QuotaExceeded { retry_after }.into_response())
        }
        Err(Refused::Store(_)) if config.fail_open => Ok(None),
        Err(Refused::Store(_)) => Err(Problem::StoreUnavailable {
            retry_after: config.store_retry_after,
        }
        .into_response()),
    }
}

fn replay<B>(outcome: Outcome) -> Response<ResponseBody<B>> {
    match outcome {
        Outcome::Response(stored) => {
            telemetry::server_answered(ServerOutcome::Replayed, Some(stored.status));
            let mut response = Response::new(ResponseBody::full(stored.body));
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers;
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        Outcome::NotStored { status } => Problem::ResponseNotStored { status }.into_response(),
        // A record written by `Once`: the key was used for another operation.
        Outcome::Value(_) | Outcome::Failed(_) => Problem::KeyReused.into_response(),
    }
}

/// What to do with the claim once the handler has answered.
enum Executed<B> {
    /// Store the response, read whole: its parts and body.
    Stored(http::response::Parts, Bytes),
    /// Store that the request ran, but not its response.
    NotStored(Response<ResponseBody<B>>),
    Release(Response<ResponseBody<B>>),
}

/// The stored form of a response read whole.
fn stored_response(parts: &http::response::Parts, body: &Bytes) -> StoredResponse {
    let mut headers = parts.headers.clone();
    strip_connection_headers(&mut headers);
    StoredResponse {
        status: parts.status,
        headers,
        body: body.clone(),
    }
}

async fn execute<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
    config: &Config,
) -> Result<Executed<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let response = inner.call(request).await;
    let status = response.as_ref().ok().map(Response::status);
    telemetry::server_answered(ServerOutcome::Executed, status);
    let response = response?;
    let keep = match response.extensions().get::<StoreDecision>() {
        Some(StoreDecision::Store) => true,
        Some(StoreDecision::Release) => false,
        None => stored_by_default(response.status(), config.store_server_errors),
    };
    if !keep {
        return Ok(Executed::Release(response.map(ResponseBody::inner)));
    }
    let (parts, body) = response.into_parts();
    let max_body = config.max_body;
    if body.size_hint().lower() > max_body as u64 {
        let response = Response::from_parts(parts, ResponseBody::inner(body));
        return Ok(Executed::NotStored(response));
    }
    Ok(match buffer(body, max_body).await {
        Buffered::Complete(bytes) => Executed::Stored(parts, bytes),
        Buffered::Unstorable(body) => Executed::NotStored(Response::from_parts(parts, body)),
        Buffered::Failed(body) => Executed::Release(Response::from_parts(parts, body)),
    })
}

/// Results a retry could change (a timeout, a conflict, rate limiting, a
/// server error unless the layer stores those) are not stored, so the key
/// can run again.
fn stored_by_default(status: StatusCode, store_server_errors: bool) -> bool {
    if status.is_server_error() {
        return store_server_errors;
    }
    !matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

fn strip_connection_headers(headers: &mut HeaderMap) {
    // Seldom is one there: a pass over the names finds out without hashing
    // each of them.
    if headers.keys().any(|name| CONNECTION_HEADERS.contains(name)) {
        for name in &CONNECTION_HEADERS {
            headers.remove(name);
        }
    }
}

enum Buffered<B> {
    Complete(Bytes),
    /// Over `max_body`, or carrying trailers: sent on, not stored.
    Unstorable(ResponseBody<B>),
    /// The body failed: sent on up to the error, and the claim released.
    Failed(ResponseBody<B>),
}

async fn buffer<B>(body: B, max_body: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Boxed so that the unread rest can be handed on after a partial read.
    let mut body = Box::pin(body);
    let mut read = Joined::default();
    // What was read, as frames, for a body that cannot be stored after all.
    let read_frames = |read: Joined| {
        let data = read.into_bytes();
        let mut frames = VecDeque::with_capacity(2);
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        frames
    };
    loop {
        match poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return Buffered::Complete(read.into_bytes()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if read.len() + data.len() <= max_body => read.push(data),
                // Over `max_body`, or trailers.
                frame => {
                    let mut frames = read_frames(read);
                    frames.push_back(frame.map_or_else(|trailers| trailers, Frame::data));
                    return Buffered::Unstorable(ResponseBody::resumed(frames, Some(body), None));
                }
            },
            Some(Err(err)) => {
                let frames = read_frames(read);
                return Buffered::Failed(ResponseBody::resumed(frames, None, Some(err.into())));
            }
        }
    }
}
