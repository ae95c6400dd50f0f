//! The work of a request with a key: claim the record, run the handler while
//! renewing the claim, then store the result or release the claim.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{BoxError, ResponseBody};
use super::buffer::{Buffer, Buffered, read_request_body, replay, stored_response};
use super::future::KeyedTask;
use super::layer::Config;
use super::policy;
use super::problem::Problem;
use crate::store::exec::{self, Acquired, Claimed, HeldClaim, Refused, Renewer};
use crate::store::{
    CommitError, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};
use crate::telemetry::{self, ServerOutcome};

/// The work of a request with a key: read and claim ([`prepare`]), run the
/// handler while renewing the claim ([`Stage::Running`]), then store the
/// result or release the claim ([`settle`]).
///
/// Written as a state machine over those stages rather than as one `async
/// fn`: the work is boxed once per keyed request (see
/// [`KeyedWork`](super::future::KeyedWork)), and as an `async fn` it kept
/// what every stage holds side by side, the request's parts beside the
/// handler's future that had taken them over, three times the size of the
/// largest stage. Boxes that large miss the allocator's per-thread cache on
/// every request.
pub(super) fn run_keyed<S, St, ReqBody, ResBody>(
    inner: S,
    store: St,
    config: Arc<Config>,
    record: RecordKey,
    parts: Parts,
    body: ReqBody,
) -> impl KeyedTask<ResBody, S::Error>
where
    S: Service<Request<Either<Full<Bytes>, ReqBody>>, Response = Response<ResBody>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
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
        let Some(token) = token else {
            // Failing open: the store could not be asked, run unprotected.
            return Prepared::Unprotected(request);
        };
        let held = HeldClaim::new(store, record, fingerprint, token, &config.rules);
        if !held.wants_transaction() {
            return Prepared::Acquired(request, held);
        }
        // Boxed: only a transactional store gets here, and inline, opening
        // its transaction would enlarge every keyed request's future.
        Box::pin(open_transaction(held, request, config)).await
    }
}

/// Opens the held claim's transaction and hands it to the request, or
/// answers 503 (releasing the claim) when it cannot be opened.
async fn open_transaction<St: IdempotencyStore, ReqBody, ResBody>(
    mut held: HeldClaim<St>,
    mut request: Request<Either<Full<Bytes>, ReqBody>>,
    config: Arc<Config>,
) -> Prepared<ReqBody, ResBody, St> {
    if let Err(err) = held.begin().await {
        tracing::warn!(error = %err, key = held.key(), "failed to open the idempotent request's transaction");
        held.release().await;
        return Prepared::Answered(
            Problem::StoreUnavailable {
                retry_after: config.store_retry_after,
            }
            .into_response(),
        );
    }
    held.attach(request.extensions_mut());
    Prepared::Acquired(request, held)
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

impl<S, St, ReqBody, ResBody, F, Prep, Fut> KeyedTask<ResBody, S::Error>
    for Keyed<S, St, ReqBody, ResBody, S::Error, F, Prep, Fut>
where
    Self: Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>> + Send,
    S: Service<Request<Either<Full<Bytes>, ReqBody>>>,
    St: IdempotencyStore,
{
    fn finish_if_dropped(&self) -> bool {
        // Work in a transaction that is dropped while its handler runs is
        // rolled back and its key released (see `HeldClaim`'s drop); once
        // its result is being committed, it is finished like any other.
        !matches!(&self.stage, Stage::Running { held: Some(held), .. } if held.is_transactional())
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
        if held.is_transactional() {
            // Boxed: inline, the commit would enlarge every keyed request's
            // future, transactional or not.
            return Box::pin(settle_in_transaction(held, executed, config)).await;
        }
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

/// [`settle`] for work in a transaction: the result commits in it, or it is
/// rolled back before the key is released.
async fn settle_in_transaction<St, ResBody, E>(
    mut held: HeldClaim<St>,
    executed: Result<Executed<ResBody>, E>,
    config: Arc<Config>,
) -> Result<Response<ResponseBody<ResBody>>, E>
where
    St: IdempotencyStore,
{
    let (outcome, response) = match executed {
        Err(err) => {
            held.release().await;
            return Err(err);
        }
        Ok(Executed::Release(response)) => {
            held.release().await;
            return Ok(response);
        }
        Ok(Executed::Stored(parts, body)) => (
            StoredOutcome::Response(stored_response(&parts, &body)),
            Response::from_parts(parts, ResponseBody::full(body)),
        ),
        Ok(Executed::NotStored(response)) => (
            StoredOutcome::NotStored {
                status: response.status(),
            },
            response,
        ),
    };
    match held.commit(outcome, config.ttl).await {
        Ok(()) => Ok(response),
        // The handler answered after a statement of its own failed: its
        // answer goes out as it is, unstored, its writes rolled back and
        // its key released.
        Err(CommitError::Aborted) => Ok(response),
        Err(err) => Ok(not_committed(err, &config)),
    }
}

/// The answer when the handler's transaction did not commit: its effect
/// was rolled back (or, after a lost answer to the commit, may have been),
/// so its response must not leave.
fn not_committed<B>(err: CommitError, config: &Config) -> Response<ResponseBody<B>> {
    match err {
        CommitError::LeaseLost => Problem::InFlight {
            retry_after: config.conflict_retry_after,
        },
        CommitError::Escaped => Problem::TransactionEscaped,
        _ => Problem::StoreUnavailable {
            retry_after: config.store_retry_after,
        },
    }
    .into_response()
}

/// What to do with the claim once the handler has answered.
enum Executed<B> {
    /// Store the response, read whole: its parts and body.
    Stored(http::response::Parts, Bytes),
    /// Store that the request ran, but not its response.
    NotStored(Response<ResponseBody<B>>),
    Release(Response<ResponseBody<B>>),
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
                    if !policy::stores(&response, config.store_server_errors) {
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
