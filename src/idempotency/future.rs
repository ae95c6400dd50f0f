//! The response future of [`Idempotency`](super::Idempotency).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::ResponseBody;

/// The future of a request that carries an idempotency key.
///
/// Such a request awaits store operations whose future types a store
/// implementation does not have to name, so it is boxed once per keyed
/// request: one allocation, which also lets the work move to a task of its
/// own should the caller stop waiting (see [`KeyedWork`]). Requests without a
/// key are not boxed.
pub(crate) type KeyedFuture<B, E> = Pin<Box<dyn KeyedTask<B, E>>>;

/// A keyed request's work, which can say whether it must be finished when
/// its caller goes away.
pub(crate) trait KeyedTask<B, E>:
    Future<Output = Result<Response<ResponseBody<B>>, E>> + Send
{
    /// Whether the work, dropped now, should be driven to its end: true
    /// unless its handler writes in a transaction, which a drop rolls back
    /// before releasing the key (nothing took effect, so the retry may run
    /// at once).
    fn finish_if_dropped(&self) -> bool;
}

impl<B, E, T: KeyedTask<B, E>> KeyedTask<B, E> for tracing::instrument::Instrumented<T> {
    fn finish_if_dropped(&self) -> bool {
        self.inner().finish_if_dropped()
    }
}

/// A keyed request's work, polled inline by the caller.
///
/// Once a key is claimed, the handler's result must be stored (or the claim
/// released) even when the caller stops waiting mid-handler (the client
/// disconnected, a timeout above fired): otherwise the claim would sit until
/// its lease ends and a later retry would run the handler a second time. So
/// work dropped before it finished moves, box and all, to a task that
/// drives it to its end. Running every keyed request as a task instead would
/// cost a spawn and a wake-up per request; this costs nothing unless the
/// caller goes away. Work never polled has not started, and is dropped: a
/// request nobody waited for at all is not run for nobody.
pub(crate) struct KeyedWork<B, E> {
    // `None` once finished, and while being polled: work that panics is
    // dropped as it unwinds, never moved to a task.
    future: Option<KeyedFuture<B, E>>,
    // Moves unfinished work to a task; a function pointer, so the bounds a
    // task needs stay off the public future type.
    detach: fn(KeyedFuture<B, E>),
    // Whether the work has been polled: only started work is moved to a task.
    started: bool,
}

impl<B, E> KeyedWork<B, E> {
    pub(crate) fn new(future: KeyedFuture<B, E>) -> Self
    where
        B: Send + 'static,
        E: Send + 'static,
    {
        Self {
            future: Some(future),
            detach: detach::<B, E>,
            started: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<ResponseBody<B>>, E>> {
        self.started = true;
        let mut future = self
            .future
            .take()
            .expect("ResponseFuture polled after completion");
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() {
            self.future = Some(future);
        }
        poll
    }
}

impl<B, E> Drop for KeyedWork<B, E> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take()
            && self.started
            && future.finish_if_dropped()
        {
            (self.detach)(future);
        }
    }
}

/// Finishes `work` on the current runtime. Outside a runtime there is nowhere
/// to run it: it is dropped, and its claim expires with its lease, as if the
/// process had stopped.
fn detach<B: Send + 'static, E: Send + 'static>(work: KeyedFuture<B, E>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(work));
    }
}

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // No key and none required: the inner service's future, untouched.
        Passthrough { #[pin] future: F },
        // Answered without running anything (missing or invalid key).
        Immediate { response: Option<Response<ResponseBody<B>>> },
        Keyed { work: KeyedWork<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn immediate(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Immediate {
                response: Some(response),
            },
        }
    }

    pub(crate) fn keyed(work: KeyedWork<B, E>) -> Self {
        Self {
            kind: Kind::Keyed { work },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            KindProj::Immediate { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Keyed { work } => work.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Future, ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{Either, Full};
    use tower::{Layer, Service};

    use crate::{IdempotencyLayer, MemoryStore};

    type Body = Either<Full<Bytes>, Full<Bytes>>;

    fn keyed() -> Request<Full<Bytes>> {
        Request::post("/orders")
            .header("idempotency-key", "k-1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    // No tokio runtime here: work that finishes at once needs none, and
    // work dropped unpolled has nowhere to go and is dropped quietly.
    #[test]
    fn outside_a_runtime_work_runs_inline_or_is_dropped() {
        let store = MemoryStore::new();
        let handler = tower::service_fn(|_request: Request<Body>| {
            let mut response = Response::new(Full::new(Bytes::from_static(b"created")));
            *response.status_mut() = StatusCode::CREATED;
            ready(Ok::<_, Infallible>(response))
        });
        let mut service = IdempotencyLayer::new(store.clone()).layer(handler);
        let mut cx = Context::from_waker(Waker::noop());

        drop(service.call(keyed()));
        assert!(store.is_empty(), "unpolled work claims nothing");

        for replayed in [false, true] {
            let Poll::Ready(Ok(response)) = pin!(service.call(keyed())).poll(&mut cx) else {
                panic!("work that finishes at once answers on the first poll");
            };
            assert_eq!(response.status(), StatusCode::CREATED);
            assert_eq!(
                response.headers().contains_key("idempotent-replayed"),
                replayed
            );
        }
        assert_eq!(store.len(), 1);
    }

    // Inside a runtime, where started work would move to a task: work
    // dropped before its first poll runs nothing, not even later.
    #[tokio::test]
    async fn work_dropped_unpolled_is_not_run() {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = MemoryStore::new();
        let handler = tower::service_fn({
            let runs = runs.clone();
            move |_request: Request<Body>| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ready(Ok::<_, Infallible>(Response::new(Full::new(
                    Bytes::from_static(b"created"),
                ))))
            }
        });
        let mut service = IdempotencyLayer::new(store.clone()).layer(handler);

        drop(service.call(keyed()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(store.is_empty(), "unpolled work claims nothing");

        let response = service.call(keyed()).await.unwrap();
        assert!(!response.headers().contains_key("idempotent-replayed"));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
