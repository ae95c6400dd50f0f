use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::{Instrument, Span};

use super::StoreDecision;
use super::body::{BoxError, ResponseBody};
use super::future::{KeyedWork, ResponseFuture};
use super::layer::Config;
use super::principal::{AuthorizationPrincipal, PrincipalExtractor};
use super::problem::Problem;
use crate::key;
use crate::store::exec::{self, Acquired, Claimed, HeldClaim, Refused, Renewer};
use crate::store::{
    Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome, StoredResponse,
};
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

/// The work of a request with a key: read and claim ([`prepare`]), run the
/// handler while renewing the claim ([`Stage::Running`]), then store the
/// result or release the claim ([`settle`]).
///
/// Written as a state machine over those stages rather than as one `async
/// fn`: the work is boxed once per keyed request (see [`KeyedWork`]), and as
/// an `async fn` it kept what every stage holds side by side, the request's
/// parts beside the handler's future that had taken them over, three times
/// the size of the largest stage. Boxes that large miss the allocator's
/// per-thread cache on every request.
fn run_keyed<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    config: Arc<Config>,
    record: RecordKey,
    parts: Parts,
    body: ReqBody,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    Keyed {
        inner: Some(inner),
        settle: settle::<St, ResBody, S::Error>,
        stage: Stage::Prepare {
            future: prepare(store, config.clone(), record, parts, body),
            _body: PhantomData,
        },
        config,
    }
}

/// What reading the body and claiming the key decided.
enum Prepared<ReqBody, ResBody, St: IdempotencyStore> {
    /// Answered without running the handler: a replay, or a refusal.
    Answered(Response<ResponseBody<ResBody>>),
    /// The store could not be asked, and the layer fails open.
    Unprotected(Request<Either<Full<Bytes>, ReqBody>>),
    /// The claim is held: run the handler.
    Acquired(Request<Either<Full<Bytes>, ReqBody>>, HeldClaim<St>),
}

#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn prepare<St, ReqBody, ResBody>(
    store: St,
    config: Arc<Config>,
    record: RecordKey,
    parts: Parts,
    body: ReqBody,
) -> impl Future<Output = Prepared<ReqBody, ResBody, St>>
where
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    async move {
        let body = match read_request_body(body, config.max_request_body).await {
            Ok(body) => body,
            Err(problem) => return Prepared::Answered(problem.into_response()),
        };
        let fingerprint = Fingerprint::of_request(&parts.method, &parts.uri, &body);
        let token = match claim(&store, &config, &record, &fingerprint).await {
            Ok(token) => token,
            Err(answer) => return Prepared::Answered(answer),
        };
        let request = Request::from_parts(parts, Either::Left(Full::new(body)));
        match token {
            // Failing open: the store could not be asked, run unprotected.
            None => Prepared::Unprotected(request),
            Some(token) => Prepared::Acquired(
                request,
                HeldClaim::new(store, record, fingerprint, token, &config.rules),
            ),
        }
    }
}

/// Makes a held claim's last stage from the handler's result.
type Settle<St, B, E, Fut> = fn(HeldClaim<St>, Result<Executed<B>, E>, Arc<Config>) -> Fut;

pin_project! {
    /// See [`run_keyed`].
    struct Keyed<S, St, ReqBody, ResBody, E, F, Prep, Fut>
    where
        St: IdempotencyStore,
    {
        // Until the handler is called.
        inner: Option<S>,
        config: Arc<Config>,
        settle: Settle<St, ResBody, E, Fut>,
        #[pin]
        stage: Stage<ReqBody, St, F, Prep, ResBody, Fut>,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage<ReqBody, St, F, Prep, ResBody, Fut>
    where
        St: IdempotencyStore,
    {
        Prepare {
            #[pin]
            future: Prep,
            // The request body type, which only the stage's output names.
            _body: PhantomData<fn() -> ReqBody>,
        },
        Unprotected {
            #[pin]
            call: F,
        },
        // The handler runs, then its response is read, while the claim is
        // renewed; `held` is taken when that ends.
        Running {
            #[pin]
            work: Execute<F, ResBody>,
            held: Option<HeldClaim<St>>,
            #[pin]
            renewer: Renewer,
            // The lease was lost: the handler still answers, unrenewed.
            lost: bool,
        },
        Settling {
            #[pin]
            future: Fut,
        },
        Done,
    }
}

impl<S, St, ReqBody, ResBody, F, Prep, Fut> Future
    for Keyed<S, St, ReqBody, ResBody, S::Error, F, Prep, Fut>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>, Future = F>,
    F: Future<Output = Result<Response<ResBody>, S::Error>>,
    St: IdempotencyStore,
    Prep: Future<Output = Prepared<ReqBody, ResBody, St>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
    Fut: Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Prepare { future, .. } => {
                    let prepared = ready!(future.poll(cx));
                    let next = match prepared {
                        Prepared::Answered(response) => {
                            this.stage.set(Stage::Done);
                            return Poll::Ready(Ok(response));
                        }
                        Prepared::Unprotected(request) => Stage::Unprotected {
                            call: take_inner(this.inner).call(request),
                        },
                        Prepared::Acquired(request, held) => Stage::Running {
                            work: Execute::Calling {
                                call: take_inner(this.inner).call(request),
                            },
                            held: Some(held),
                            renewer: Renewer::new(this.config.rules.lease),
                            lost: false,
                        },
                    };
                    this.stage.set(next);
                }
                StageProj::Unprotected { call } => {
                    let response = ready!(call.poll(cx));
                    this.stage.set(Stage::Done);
                    let status = response.as_ref().ok().map(Response::status);
                    telemetry::server_answered(ServerOutcome::ExecutedUnprotected, status);
                    return Poll::Ready(response.map(|response| response.map(ResponseBody::inner)));
                }
                StageProj::Running {
                    work,
                    held,
                    renewer,
                    lost,
                } => {
                    let Poll::Ready(executed) = work.poll_execute(this.config, cx) else {
                        if !*lost && let Some(held) = held.as_ref() {
                            *lost = renewer.poll_renew(held, cx).is_ready();
                        }
                        return Poll::Pending;
                    };
                    let held = held.take().expect("a running stage holds its claim");
                    let future = (this.settle)(held, executed, this.config.clone());
                    this.stage.set(Stage::Settling { future });
                }
                StageProj::Settling { future } => {
                    let output = ready!(future.poll(cx));
                    this.stage.set(Stage::Done);
                    return Poll::Ready(output);
                }
                StageProj::Done => panic!("keyed work polled after completion"),
            }
        }
    }
}

fn take_inner<S>(inner: &mut Option<S>) -> S {
    inner.take().expect("the handler is called once")
}

/// Stores the handler's result, or releases the claim.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
fn settle<St, ResBody, E>(
    mut held: HeldClaim<St>,
    executed: Result<Executed<ResBody>, E>,
    config: Arc<Config>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, E>>
where
    St: IdempotencyStore,
{
    async move {
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
                let stored = || StoredOutcome::Response(stored_response(&parts, &body));
                held.complete(stored(), stored, config.ttl).await;
                Ok(Response::from_parts(parts, ResponseBody::full(body)))
            }
            Ok(Executed::NotStored(response)) => {
                let status = response.status();
                let not_stored = move || StoredOutcome::NotStored { status };
                held.complete(not_stored(), not_stored, config.ttl).await;
                Ok(response)
            }
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
    record: &RecordKey,
    fingerprint: &Fingerprint,
) -> Result<Option<Acquired>, Response<ResponseBody<B>>> {
    match exec::claim(store, record, fingerprint, &config.rules).await {
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

fn replay<B>(outcome: StoredOutcome) -> Response<ResponseBody<B>> {
    match outcome {
        StoredOutcome::Response(stored) => {
            telemetry::server_answered(ServerOutcome::Replayed, Some(stored.status));
            let mut response = Response::new(ResponseBody::full(stored.body));
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers;
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        StoredOutcome::NotStored { status } => {
            Problem::ResponseNotStored { status }.into_response()
        }
        // A record written by `Once`: the key was used for another operation.
        StoredOutcome::Value(_) | StoredOutcome::Failed(_) => Problem::KeyReused.into_response(),
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

pin_project! {
    /// The handler's call, then the reading of a response to store.
    #[project = ExecuteProj]
    enum Execute<F, B> {
        Calling {
            #[pin]
            call: F,
        },
        Buffering {
            parts: Option<http::response::Parts>,
            buffer: Buffer<B>,
        },
    }
}

impl<F, B> Execute<F, B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_execute<E>(
        mut self: Pin<&mut Self>,
        config: &Config,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Executed<B>, E>>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        loop {
            match self.as_mut().project() {
                ExecuteProj::Calling { call } => {
                    let response = ready!(call.poll(cx));
                    let status = response.as_ref().ok().map(Response::status);
                    telemetry::server_answered(ServerOutcome::Executed, status);
                    let response = response?;
                    let keep = match response.extensions().get::<StoreDecision>() {
                        Some(StoreDecision::Store) => true,
                        Some(StoreDecision::Release) => false,
                        None => stored_by_default(response.status(), config.store_server_errors),
                    };
                    if !keep {
                        return Poll::Ready(Ok(Executed::Release(
                            response.map(ResponseBody::inner),
                        )));
                    }
                    let (parts, body) = response.into_parts();
                    if body.size_hint().lower() > config.max_body as u64 {
                        let response = Response::from_parts(parts, ResponseBody::inner(body));
                        return Poll::Ready(Ok(Executed::NotStored(response)));
                    }
                    self.set(Execute::Buffering {
                        parts: Some(parts),
                        buffer: Buffer::new(body, config.max_body),
                    });
                }
                ExecuteProj::Buffering { parts, buffer } => {
                    let buffered = ready!(buffer.poll(cx));
                    let parts = parts.take().expect("a response is read once");
                    return Poll::Ready(Ok(match buffered {
                        Buffered::Complete(bytes) => Executed::Stored(parts, bytes),
                        Buffered::Unstorable(body) => {
                            Executed::NotStored(Response::from_parts(parts, body))
                        }
                        Buffered::Failed(body) => {
                            Executed::Release(Response::from_parts(parts, body))
                        }
                    }));
                }
            }
        }
    }
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

/// Reads a response body whole, up to `max_body`.
struct Buffer<B> {
    // Boxed so that the unread rest can be handed on after a partial read.
    body: Option<Pin<Box<B>>>,
    read: Joined,
    max_body: usize,
}

impl<B> Buffer<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn new(body: B, max_body: usize) -> Self {
        Self {
            body: Some(Box::pin(body)),
            read: Joined::default(),
            max_body,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Buffered<B>> {
        let body = self.body.as_mut().expect("a body is read once");
        loop {
            match ready!(body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Buffered::Complete(self.read().into_bytes())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.read.len() + data.len() <= self.max_body => {
                        self.read.push(data);
                    }
                    // Over `max_body`, or trailers.
                    frame => {
                        let mut frames = self.read_frames();
                        frames.push_back(frame.map_or_else(|trailers| trailers, Frame::data));
                        let rest = self.body.take();
                        return Poll::Ready(Buffered::Unstorable(ResponseBody::resumed(
                            frames, rest, None,
                        )));
                    }
                },
                Some(Err(err)) => {
                    let frames = self.read_frames();
                    self.body = None;
                    return Poll::Ready(Buffered::Failed(ResponseBody::resumed(
                        frames,
                        None,
                        Some(err.into()),
                    )));
                }
            }
        }
    }

    fn read(&mut self) -> Joined {
        std::mem::take(&mut self.read)
    }

    /// What was read, as frames, for a body that cannot be stored after all.
    fn read_frames(&mut self) -> VecDeque<Frame<Bytes>> {
        let data = self.read().into_bytes();
        let mut frames = VecDeque::with_capacity(2);
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        frames
    }
}
