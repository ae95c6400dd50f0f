//! The response body of [`Idempotency`](super::Idempotency).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

/// The boxed error type of [`ResponseBody`].
pub use crate::error::BoxError;

pin_project! {
    /// Response body of [`Idempotency`](super::Idempotency): the handler's own
    /// body, a buffered or replayed copy of it, or a problem report.
    ///
    /// It converts into `axum::body::Body`, so the layer works in an axum
    /// `Router`.
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use tower_reissue::idempotency::ResponseBody;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = ResponseBody::<http_body_util::Empty<bytes::Bytes>>::full("stored".into());
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "stored");
    /// # });
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { body: Full<Bytes> },
        Inner { #[pin] body: B },
        // A body partly read while trying to buffer it: what was read, then
        // whatever followed (the rest of the body, or the error it gave).
        Resumed {
            read: VecDeque<Frame<Bytes>>,
            rest: Option<Pin<Box<B>>>,
            error: Option<BoxError>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// A body holding `bytes`.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                body: Full::new(bytes),
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn resumed(
        read: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
        error: Option<BoxError>,
    ) -> Self {
        Self {
            kind: Kind::Resumed { read, rest, error },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { body } => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Resumed { read, rest, error } => {
                if let Some(frame) = read.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { body } => body.is_end_stream(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Resumed { read, rest, error } => {
                read.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { body } => body.size_hint(),
            Kind::Inner { body } => body.size_hint(),
            Kind::Resumed { read, rest, .. } => {
                let read_len: u64 = read
                    .iter()
                    .filter_map(|frame| frame.data_ref().map(|d| d.len() as u64))
                    .sum();
                let rest = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read_len));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read_len));
                }
                hint
            }
        }
    }
}
