//! Bodies read whole: the request's, to fingerprint it, and the response's,
//! to store it; and the stored response turned back into a replay.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body::{Body, Frame};

use super::body::{BoxError, ResponseBody};
use super::problem::Problem;
use crate::store::{StoredOutcome, StoredResponse};
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

pub(super) async fn read_request_body<B>(body: B, limit: usize) -> Result<Bytes, Problem>
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

pub(super) enum Buffered<B> {
    Complete(Bytes),
    /// Over `max_body`, or carrying trailers: sent on, not stored.
    Unstorable(ResponseBody<B>),
    /// The body failed: sent on up to the error, and the claim released.
    Failed(ResponseBody<B>),
}

/// Reads a response body whole, up to `max_body`.
pub(super) struct Buffer<B> {
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
    #[inline]
    pub(super) fn new(body: B, max_body: usize) -> Self {
        Self {
            body: Some(Box::pin(body)),
            read: Joined::default(),
            max_body,
        }
    }

    // Inlined into the keyed work, as when it shared its module (and so its
    // codegen unit): a call measured 88 more instructions per stored response.
    #[inline]
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Buffered<B>> {
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

/// The stored form of a response read whole.
pub(super) fn stored_response(parts: &http::response::Parts, body: &Bytes) -> StoredResponse {
    let mut headers = parts.headers.clone();
    strip_connection_headers(&mut headers);
    StoredResponse {
        status: parts.status,
        headers,
        body: body.clone(),
    }
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

// Inlined into the keyed work, as when it shared its module (and so its
// codegen unit): called instead, inserting `Idempotent-Replayed` measured 140
// more instructions per replay.
#[inline]
pub(super) fn replay<B>(outcome: StoredOutcome) -> Response<ResponseBody<B>> {
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
