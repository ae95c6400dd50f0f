use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use super::NotReplayable;
use crate::BoxError;

/// A request body that can be sent again.
///
/// The first attempt streams the original body to the server while keeping a
/// copy of each chunk (a cheap [`Bytes`] clone) up to the replay limit;
/// retries replay the copy, trailers included, and then carry on with the
/// original where an earlier attempt stopped reading it. A body larger than
/// the limit is streamed once and the copy is dropped: such a request is not
/// retried.
///
/// Any [`http_body::Body`] works: `Full`, `Empty`, `String`, `Bytes`, a
/// streamed body, or hyper's `Incoming` when proxying. The retry layer wraps
/// request bodies in it, so the service under the layer sees
/// `http::Request<ReplayBody<B>>`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_reissue::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (first, handle) = ReplayBody::new(Full::new(Bytes::from("hello")), 64 * 1024);
/// assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
///
/// let again = handle.replay().unwrap();
/// assert_eq!(again.collect().await.unwrap().to_bytes(), "hello");
/// # }
/// ```
pub struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to keep.
    shared: Option<Arc<Shared<B>>>,
    /// The original body, while this copy is the one reading it.
    reader: Option<Pin<Box<B>>>,
    /// How many captured chunks this copy has yielded.
    replayed: usize,
    /// Whether this copy has yielded the captured trailers (or there are none).
    trailers_done: bool,
}

struct Shared<B> {
    limit: usize,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// Room for one chunk in place: a body sent in one frame (`Full`, most
    /// bodies under the replay limit) is kept without an allocation.
    chunks: SmallVec<[Bytes; 1]>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The unread rest of the original, handed back by a copy dropped before
    /// the end.
    rest: Option<Pin<Box<B>>>,
    complete: bool,
    over_limit: bool,
    failed: bool,
}

impl<B> State<B> {
    /// Whether the copy is still kept: the body was neither over the limit
    /// nor failed.
    fn copy_kept(&self, limit: usize) -> Result<(), NotReplayable> {
        if self.over_limit {
            return Err(NotReplayable::TooLarge { limit });
        }
        if self.failed {
            return Err(NotReplayable::BodyFailed);
        }
        Ok(())
    }
}

/// A frame read from a copy, or why reading it failed.
type ReadFrame<E> = Poll<Option<Result<Frame<Bytes>, ReadError<E>>>>;

/// Why reading a copy failed: the original body's own error, or the rest
/// of it is still held by another copy.
enum ReadError<E> {
    Body(E),
    InUse,
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters here; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body` for the first attempt, keeping up to `limit` bytes for
    /// replays. Returns the body to send now and a handle to make replays
    /// from.
    pub fn new(body: B, limit: usize) -> (Self, Self) {
        if body.is_end_stream() {
            return (Self::empty(), Self::empty());
        }
        let shared = Arc::new(Shared {
            limit,
            state: Mutex::new(State {
                chunks: SmallVec::new(),
                len: 0,
                trailers: None,
                rest: None,
                complete: false,
                over_limit: false,
                failed: false,
            }),
        });
        let first = ReplayBody {
            shared: Some(shared.clone()),
            reader: Some(Box::pin(body)),
            replayed: 0,
            trailers_done: false,
        };
        let handle = ReplayBody {
            shared: Some(shared),
            reader: None,
            replayed: 0,
            trailers_done: false,
        };
        (first, handle)
    }

    fn empty() -> Self {
        ReplayBody {
            shared: None,
            reader: None,
            replayed: 0,
            trailers_done: true,
        }
    }

    /// A new copy of the body for another attempt, or why there cannot be
    /// one: the body was over the limit, it failed, or an earlier attempt
    /// still holds the unread rest of it.
    pub fn replay(&self) -> Result<Self, NotReplayable> {
        let Some(shared) = &self.shared else {
            return Ok(Self::empty());
        };
        {
            let state = shared.lock();
            state.copy_kept(shared.limit)?;
            if !state.complete && state.rest.is_none() {
                return Err(NotReplayable::InUse);
            }
        }
        Ok(ReplayBody {
            shared: Some(shared.clone()),
            reader: None,
            replayed: 0,
            trailers_done: false,
        })
    }

    /// Whether [`replay`](ReplayBody::replay) would succeed now.
    pub fn is_replayable(&self) -> Result<(), NotReplayable> {
        self.replay().map(drop)
    }

    /// `poll_frame` without the error conversion, so that a body whose
    /// error is not a `BoxError` can still be read for a dead letter.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> ReadFrame<B::Error> {
        let this = self;
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        loop {
            if this.reader.is_none() {
                let mut state = shared.lock();
                if let Some(chunk) = state.chunks.get(this.replayed) {
                    let chunk = chunk.clone();
                    this.replayed += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if state.complete {
                    if !this.trailers_done {
                        this.trailers_done = true;
                        if let Some(trailers) = &state.trailers {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                        }
                    }
                    return Poll::Ready(None);
                }
                // Everything captured so far is replayed: continue with the
                // original where the previous copy left it.
                match state.rest.take() {
                    Some(rest) => this.reader = Some(rest),
                    None => return Poll::Ready(Some(Err(ReadError::InUse))),
                }
            }
            let Some(reader) = this.reader.as_mut() else {
                continue;
            };
            let frame = ready!(reader.as_mut().poll_frame(cx));
            let mut state = shared.lock();
            match frame {
                None => {
                    state.complete = true;
                    this.trailers_done = true;
                    this.reader = None;
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(ReadError::Body(error))));
                }
                Some(Ok(frame)) => {
                    let frame = match frame.into_data() {
                        Ok(mut data) => {
                            let bytes = data.copy_to_bytes(data.remaining());
                            if !state.over_limit {
                                if state.len + bytes.len() <= shared.limit {
                                    state.len += bytes.len();
                                    state.chunks.push(bytes.clone());
                                    this.replayed = state.chunks.len();
                                } else {
                                    tracing::debug!(
                                        target: "tower_reissue::retry",
                                        limit = shared.limit,
                                        "request body over the replay limit: it is sent once and not retried"
                                    );
                                    state.over_limit = true;
                                    state.chunks = SmallVec::new();
                                }
                            }
                            Frame::data(bytes)
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                state.trailers = Some(trailers.clone());
                                state.complete = true;
                                this.trailers_done = true;
                                this.reader = None;
                                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                            }
                            // A frame kind this crate does not know: pass
                            // nothing on, read the next one.
                            Err(_) => continue,
                        },
                    };
                    // Clients stop polling once `is_end_stream` says so;
                    // record the end now rather than waiting for a `None`.
                    if this.reader.as_ref().is_some_and(|r| r.is_end_stream()) {
                        state.complete = true;
                        this.trailers_done = true;
                        this.reader = None;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
    }

    /// The whole body as the copy kept it (without trailers), for a dead
    /// letter: only a body read to its end within the limit is known.
    ///
    /// A body no attempt read to its end (a request a circuit breaker
    /// refused before sending it, say) is read now, as far as it can be
    /// without waiting: `Full`, `Bytes` and `String` bodies always can.
    pub(crate) fn kept_bytes(&self) -> Result<Bytes, NotReplayable> {
        let Some(shared) = &self.shared else {
            return Ok(Bytes::new());
        };
        let unread = {
            let state = shared.lock();
            !state.complete && state.rest.is_some()
        };
        if unread {
            let mut copy = self.replay()?;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            // Reading through a copy keeps the chunks in the shared state;
            // a copy dropped on `Pending` hands the rest back.
            while let Poll::Ready(Some(frame)) = copy.poll_inner(&mut cx) {
                if frame.is_err() {
                    break;
                }
            }
        }
        let state = shared.lock();
        state.copy_kept(shared.limit)?;
        if !state.complete {
            return Err(NotReplayable::InUse);
        }
        Ok(match state.chunks.as_slice() {
            [one] => one.clone(),
            chunks => chunks.concat().into(),
        })
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll_inner(cx).map(|frame| {
            frame.map(|frame| {
                frame.map_err(|error| match error {
                    ReadError::Body(error) => error.into(),
                    ReadError::InUse => NotReplayable::InUse.into(),
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if let Some(reader) = &self.reader {
            return reader.is_end_stream();
        }
        let state = shared.lock();
        state.complete
            && self.replayed >= state.chunks.len()
            && (self.trailers_done || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let Some(shared) = &self.shared else {
            return SizeHint::with_exact(0);
        };
        if let Some(reader) = &self.reader {
            return reader.size_hint();
        }
        let state = shared.lock();
        let pending: u64 = state
            .chunks
            .iter()
            .skip(self.replayed)
            .map(|c| c.len() as u64)
            .sum();
        if state.complete {
            return SizeHint::with_exact(pending);
        }
        let rest = state
            .rest
            .as_ref()
            .map(|r| r.size_hint())
            .unwrap_or_default();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(pending));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let (Some(shared), Some(reader)) = (&self.shared, self.reader.take()) {
            // Hand the unread rest back so that the next copy can go on
            // reading it after replaying what was captured.
            shared.lock().rest = Some(reader);
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("empty", &self.shared.is_none())
            .field("reading_original", &self.reader.is_some())
            .field("replayed_chunks", &self.replayed)
            .finish()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A request refused before it was sent (by a circuit breaker, say)
    /// still has its body for a dead letter.
    #[test]
    fn an_unsent_body_is_read_for_a_dead_letter() {
        let (first, handle) = ReplayBody::new(Full::new(Bytes::from("hello")), 64 * 1024);
        drop(first);
        assert_eq!(handle.kept_bytes().unwrap(), "hello");
        // The copy it read is kept: a replay still sends the whole body.
        assert_eq!(handle.kept_bytes().unwrap(), "hello");
        assert!(handle.is_replayable().is_ok());
    }

    #[test]
    fn an_unsent_body_over_the_limit_is_not_kept() {
        let (first, handle) = ReplayBody::new(Full::new(Bytes::from("hello")), 2);
        drop(first);
        assert_eq!(
            handle.kept_bytes().unwrap_err(),
            NotReplayable::TooLarge { limit: 2 }
        );
    }
}
