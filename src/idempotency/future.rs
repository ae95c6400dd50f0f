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
/// implementation does not have to name, so it is boxed once per keyed request:
/// one allocation, small next to the keyed path's other work (reading and
/// hashing the body, the store round trips, buffering the response), which
/// `benches/idempotency.rs` puts at about 5 µs per request. Requests without a
/// key are not boxed.
pub(crate) type KeyedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

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
        Keyed { future: KeyedFuture<B, E> },
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

    pub(crate) fn keyed(future: KeyedFuture<B, E>) -> Self {
        Self {
            kind: Kind::Keyed { future },
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
            KindProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}
