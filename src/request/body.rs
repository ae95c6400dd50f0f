use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use super::NotReplayable;
use crate::error::BoxError;

/// A request body that can be sent again.
///
/// The first attempt streams the original body to the server while keeping a
/// copy of each chunk (a cheap [`Bytes`] clone) up to the replay limit;
/// retries replay the copy, trailers included, and then carry on with the
/// original where an earlier attempt stopped reading it. A body larger than
/// the limit is streamed once and the copy is dropped: such a request is not
/// retried.
///
/// A body whose exact length is known and within the limit is polled once
/// when it is wrapped, with a waker that does nothing (a body not ready then
/// is polled again by the attempt, with the attempt's waker). If that gives
/// the whole body at once, as `Full`, `Bytes` and `String` bodies do, every
/// copy is a clone of its bytes: nothing is shared or locked. Otherwise the
/// first copy yields what was read before it reads on.
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
    source: Source<B>,
}

// Two variants, so that the tag lives in a spare value of `sent` and a copy
// is no larger than its largest variant: copies are moved with the request.
enum Source<B> {
    /// A body that was whole when wrapped, or empty (no bytes): every copy
    /// is a clone of its bytes. `sent`: this copy has yielded them.
    Whole { bytes: Bytes, sent: bool },
    /// Any other body: copies share what the reading copy captured.
    Shared(SharedCopy<B>),
}

struct SharedCopy<B> {
    shared: Arc<Shared<B>>,
    /// The original body, while this copy is the one reading it.
    reader: Option<Pin<Box<B>>>,
    /// How many captured chunks this copy has yielded.
    replayed: usize,
    /// Whether this copy has yielded the captured trailers (or there are none).
    trailers_done: bool,
    /// Whether this copy, the reader, must first yield what was read when
    /// the body was wrapped (chunks, or the error in the shared state).
    head: bool,
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
    /// The error the original gave when it was read on wrapping, until the
    /// first copy yields it.
    error: Option<BoxError>,
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

/// Says that a body went over the replay limit, once per request.
fn over_limit(limit: usize) {
    tracing::debug!(
        target: "tower_reissue::retry",
        limit,
        "request body over the replay limit: it is sent once and not retried"
    );
}

/// The captured chunk after the `replayed` a copy has yielded, counted in.
fn next_chunk<B>(state: &State<B>, replayed: &mut usize) -> Option<Frame<Bytes>> {
    let chunk = state.chunks.get(*replayed)?.clone();
    *replayed += 1;
    Some(Frame::data(chunk))
}

/// A frame read from a copy, or why reading it failed.
type ReadFrame<E> = Poll<Option<Result<Frame<Bytes>, ReadError<E>>>>;

/// Why reading a copy failed: the original body's own error, or the rest
/// of it is still held by another copy.
enum ReadError<E> {
    Body(E),
    /// The original's error, read on wrapping.
    Boxed(BoxError),
    InUse,
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters here; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B> ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Wraps `body` for the first attempt, keeping up to `limit` bytes for
    /// replays. Returns the body to send now and a handle to make replays
    /// from.
    pub fn new(body: B, limit: usize) -> (Self, Self) {
        if body.is_end_stream() {
            return (Self::empty(), Self::empty());
        }
        let mut body = Box::pin(body);
        let mut state = State {
            chunks: SmallVec::new(),
            len: 0,
            trailers: None,
            rest: None,
            error: None,
            complete: false,
            over_limit: false,
            failed: false,
        };
        // A body of known length within the limit is read once now: if it
        // is ready and whole, as in-memory bodies are, every copy is a clone
        // of its bytes. The waker is a no-op: a body that is not ready keeps
        // the waker of its latest poll, the attempt's. Whatever else the read
        // gave, the first copy yields before it reads on: it keeps the
        // original meanwhile, so no replay can start before it is done.
        let mut head = false;
        if body
            .size_hint()
            .exact()
            .is_some_and(|len| len <= limit as u64)
        {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(frame) = body.as_mut().poll_frame(&mut cx) {
                match frame {
                    None => return (Self::empty(), Self::empty()),
                    Some(Err(error)) => {
                        state.failed = true;
                        state.error = Some(error.into());
                        head = true;
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(mut data) => {
                            let bytes = data.copy_to_bytes(data.remaining());
                            let fits = bytes.len() <= limit;
                            if fits && body.is_end_stream() {
                                return (Self::whole(bytes.clone()), Self::whole(bytes));
                            }
                            // Longer than its size hint said: the first copy
                            // still sends it, no replay does.
                            if !fits {
                                over_limit(limit);
                                state.over_limit = true;
                            }
                            state.len = bytes.len();
                            state.chunks.push(bytes);
                            head = true;
                        }
                        // Trailers alone: the body is over.
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                state.trailers = Some(trailers);
                                state.complete = true;
                            }
                        }
                    },
                }
            }
        }
        let reader = (!state.complete).then_some(body);
        let shared = Arc::new(Shared {
            limit,
            state: Mutex::new(state),
        });
        let mut first = Self::shared(shared.clone(), reader);
        if let Source::Shared(copy) = &mut first.source {
            copy.head = head;
        }
        (first, Self::shared(shared, None))
    }
}

impl<B: Body> ReplayBody<B> {
    fn whole(bytes: Bytes) -> Self {
        ReplayBody {
            source: Source::Whole { bytes, sent: false },
        }
    }

    fn empty() -> Self {
        Self::whole(Bytes::new())
    }

    fn shared(shared: Arc<Shared<B>>, reader: Option<Pin<Box<B>>>) -> Self {
        ReplayBody {
            source: Source::Shared(SharedCopy {
                shared,
                reader,
                replayed: 0,
                trailers_done: false,
                head: false,
            }),
        }
    }

    /// A new copy of the body for another attempt, or why there cannot be
    /// one: the body was over the limit, it failed, or an earlier attempt
    /// still holds the unread rest of it.
    pub fn replay(&self) -> Result<Self, NotReplayable> {
        let shared = match &self.source {
            Source::Whole { bytes, .. } => return Ok(Self::whole(bytes.clone())),
            Source::Shared(copy) => &copy.shared,
        };
        {
            let state = shared.lock();
            state.copy_kept(shared.limit)?;
            if !state.complete && state.rest.is_none() {
                return Err(NotReplayable::InUse);
            }
        }
        Ok(Self::shared(shared.clone(), None))
    }

    /// Another handle on the body's kept copy, which reads nothing itself:
    /// unlike [`replay`](ReplayBody::replay) it can be taken while this copy
    /// is still streaming the original, by a layer below the retry layer that
    /// wants copies of an attempt later (a hedge), and replays from it then
    /// answer as replays from the retry layer's own handle would.
    pub(crate) fn handle(&self) -> Self {
        match &self.source {
            Source::Whole { bytes, .. } => Self::whole(bytes.clone()),
            Source::Shared(copy) => Self::shared(copy.shared.clone(), None),
        }
    }

    /// Whether [`replay`](ReplayBody::replay) would succeed now.
    pub fn is_replayable(&self) -> Result<(), NotReplayable> {
        self.replay().map(drop)
    }

    /// `poll_frame` without the error conversion, so that a body whose
    /// error is not a `BoxError` can still be read for a dead letter.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> ReadFrame<B::Error> {
        let this = match &mut self.source {
            Source::Whole { bytes, sent } => {
                if *sent || bytes.is_empty() {
                    return Poll::Ready(None);
                }
                *sent = true;
                return Poll::Ready(Some(Ok(Frame::data(bytes.clone()))));
            }
            Source::Shared(copy) => copy,
        };
        let shared = &this.shared;
        if this.head {
            let mut state = shared.lock();
            if let Some(chunk) = next_chunk(&state, &mut this.replayed) {
                return Poll::Ready(Some(Ok(chunk)));
            }
            this.head = false;
            if state.over_limit {
                // Sent; no replay will want it.
                state.chunks = SmallVec::new();
                this.replayed = 0;
            }
            if let Some(error) = state.error.take() {
                return Poll::Ready(Some(Err(ReadError::Boxed(error))));
            }
        }
        loop {
            if this.reader.is_none() {
                let mut state = shared.lock();
                if let Some(chunk) = next_chunk(&state, &mut this.replayed) {
                    return Poll::Ready(Some(Ok(chunk)));
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
                                    over_limit(shared.limit);
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
        let shared = match &self.source {
            Source::Whole { bytes, .. } => return Ok(bytes.clone()),
            Source::Shared(copy) => &copy.shared,
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
                    ReadError::Boxed(error) => error,
                    ReadError::InUse => NotReplayable::InUse.into(),
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        let this = match &self.source {
            Source::Whole { bytes, sent } => return *sent || bytes.is_empty(),
            Source::Shared(copy) => copy,
        };
        if this.head {
            // Over once the head is out and the original has nothing more:
            // a client then need not poll once more for the end.
            let state = this.shared.lock();
            return this.replayed >= state.chunks.len()
                && state.error.is_none()
                && this.reader.as_ref().is_none_or(|r| r.is_end_stream());
        }
        if let Some(reader) = &this.reader {
            return reader.is_end_stream();
        }
        let state = this.shared.lock();
        state.complete
            && this.replayed >= state.chunks.len()
            && (this.trailers_done || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let this = match &self.source {
            Source::Whole { bytes, sent } => {
                return SizeHint::with_exact(if *sent { 0 } else { bytes.len() as u64 });
            }
            Source::Shared(copy) => copy,
        };
        if !this.head
            && let Some(reader) = &this.reader
        {
            return reader.size_hint();
        }
        let state = this.shared.lock();
        let pending: u64 = state
            .chunks
            .iter()
            .skip(this.replayed)
            .map(|c| c.len() as u64)
            .sum();
        if state.complete {
            return SizeHint::with_exact(pending);
        }
        let rest = this
            .reader
            .as_ref()
            .or(state.rest.as_ref())
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

impl<B> Drop for SharedCopy<B> {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            // Hand the unread rest back so that the next copy can go on
            // reading it after replaying what was captured.
            let mut state = self.shared.lock();
            if self.head && state.over_limit {
                // A head over the limit is for this copy alone.
                state.chunks = SmallVec::new();
            }
            state.rest = Some(reader);
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("ReplayBody");
        match &self.source {
            Source::Whole { bytes, sent } => f
                .field("empty", &bytes.is_empty())
                .field("whole_len", &bytes.len())
                .field("sent", sent),
            Source::Shared(copy) => f
                .field("empty", &false)
                .field("reading_original", &copy.reader.is_some())
                .field("replayed_chunks", &copy.replayed),
        }
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

    /// One poll of a [`Scripted`] body.
    type ScriptedPoll = Poll<Option<Result<Frame<Bytes>, &'static str>>>;

    /// A body that plays a script of polls, declaring an exact size.
    struct Scripted {
        polls: std::collections::VecDeque<ScriptedPoll>,
        exact: u64,
    }

    impl Scripted {
        fn new(exact: u64, polls: impl IntoIterator<Item = ScriptedPoll>) -> Self {
            Scripted {
                polls: polls.into_iter().collect(),
                exact,
            }
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> ScriptedPoll {
            match self.polls.pop_front() {
                Some(Poll::Pending) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(ready) => {
                    // What it declares is what is left to read.
                    if let Poll::Ready(Some(Ok(frame))) = &ready
                        && let Some(data) = frame.data_ref()
                    {
                        self.exact = self.exact.saturating_sub(data.len() as u64);
                    }
                    ready
                }
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.polls.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.exact)
        }
    }

    fn data(bytes: &'static str) -> ScriptedPoll {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))))
    }

    /// Every frame a copy yields, polled to its end; an error ends it.
    fn read_all(body: &mut ReplayBody<Scripted>) -> Vec<Result<Frame<Bytes>, String>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => continue,
                Poll::Ready(None) => return frames,
                Poll::Ready(Some(Ok(frame))) => frames.push(Ok(frame)),
                Poll::Ready(Some(Err(error))) => {
                    frames.push(Err(error.to_string()));
                    return frames;
                }
            }
        }
    }

    fn datas(frames: &[Result<Frame<Bytes>, String>]) -> Vec<Bytes> {
        frames
            .iter()
            .filter_map(|frame| frame.as_ref().ok()?.data_ref().cloned())
            .collect()
    }

    /// An in-memory body is read on wrapping: copies are clones of its
    /// bytes, and each says how long it is until it has sent them.
    #[test]
    fn a_whole_body_is_copied_without_sharing() {
        let (mut first, handle) = ReplayBody::new(Full::new(Bytes::from("hello")), 64);
        assert!(matches!(first.source, Source::Whole { .. }));
        assert_eq!(first.size_hint().exact(), Some(5));
        assert!(!first.is_end_stream());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut first).poll_frame(&mut cx) else {
            panic!("the whole body is ready");
        };
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        assert!(matches!(
            Pin::new(&mut first).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(handle.kept_bytes().unwrap(), "hello");
        let again = handle.replay().unwrap();
        assert_eq!(again.size_hint().exact(), Some(5));
        assert!(!again.is_end_stream());
    }

    /// A body of known length that is not whole on wrapping (two frames, a
    /// first poll that is pending, an error first, trailers only, more bytes
    /// than it declared) loses nothing: the first copy yields what the body
    /// gives, and replays follow the usual rules.
    #[test]
    fn a_body_read_on_wrapping_yields_everything_to_the_first_copy() {
        let (mut first, handle) = ReplayBody::new(
            Scripted::new(6, [data("abc"), Poll::Pending, data("def")]),
            64,
        );
        assert!(matches!(first.source, Source::Shared(_)));
        // The first copy holds the rest of the body until it has read it:
        // no replay, and no copy kept for a dead letter, before then.
        assert_eq!(handle.replay().unwrap_err(), NotReplayable::InUse);
        assert_eq!(handle.kept_bytes().unwrap_err(), NotReplayable::InUse);
        assert!(!first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(6));
        assert_eq!(datas(&read_all(&mut first)), ["abc", "def"]);
        assert_eq!(
            datas(&read_all(&mut handle.replay().unwrap())),
            ["abc", "def"]
        );

        let (mut first, handle) =
            ReplayBody::new(Scripted::new(3, [Poll::Pending, data("abc")]), 64);
        assert_eq!(datas(&read_all(&mut first)), ["abc"]);
        assert_eq!(handle.kept_bytes().unwrap(), "abc");

        let (mut first, handle) =
            ReplayBody::new(Scripted::new(3, [Poll::Ready(Some(Err("reset")))]), 64);
        let read = read_all(&mut first);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].as_ref().unwrap_err(), "reset");
        assert_eq!(handle.replay().unwrap_err(), NotReplayable::BodyFailed);

        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", "abc".parse().unwrap());
        let (mut first, handle) = ReplayBody::new(
            Scripted::new(
                0,
                [Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))))],
            ),
            64,
        );
        let read = read_all(&mut first);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].as_ref().unwrap().trailers_ref(), Some(&trailers));
        let read = read_all(&mut handle.replay().unwrap());
        assert_eq!(read[0].as_ref().unwrap().trailers_ref(), Some(&trailers));

        // Declared 2 bytes, sent 5, over a limit of 3: sent once, not kept.
        let (mut first, handle) = ReplayBody::new(Scripted::new(2, [data("hello")]), 3);
        assert!(
            !first.is_end_stream(),
            "the chunk read on wrapping is still to send"
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut first).poll_frame(&mut cx) else {
            panic!("the chunk read on wrapping comes first");
        };
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(first.is_end_stream(), "nothing is left to send");
        assert_eq!(
            handle.replay().unwrap_err(),
            NotReplayable::TooLarge { limit: 3 }
        );
    }
}
