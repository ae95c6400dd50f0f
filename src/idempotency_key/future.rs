use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::IdempotencyKey;
use crate::request::RetryResponse;

pin_project! {
    /// The response future of [`SetIdempotencyKey`](super::SetIdempotencyKey):
    /// the inner future, whose response gets the request's key in its
    /// extensions.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        key: Option<IdempotencyKey>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, key: Option<IdempotencyKey>) -> Self {
        ResponseFuture { inner, key }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: RetryResponse,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(key)) = (&mut result, this.key.take()) {
            response.extensions_mut().insert(key);
        }
        Poll::Ready(result)
    }
}
