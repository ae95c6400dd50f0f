//! Dead letters: the requests the retry layer gave up on, parked so that
//! nothing is lost.
//!
//! [`RetryLayer::dead_letters`](crate::RetryLayer::dead_letters) pushes every
//! give-up (except a [`Permanent`](crate::retry::GiveUpReason::Permanent) one,
//! whose answer the caller already has for good) to a [`DeadLetterQueue`]
//! with the whole request: method, URI, headers (credentials left out unless
//! [kept](DeadLetters::keep_header)), the body bytes the replay copy kept,
//! the idempotency key, why it gave up, how many attempts were made and how
//! the last one ended. A [`Replayer`] later sends the queued requests again
//! through the application's own client stack.
//!
//! Each entry is in one [state](DeadLetterState):
//!
//! ```text
//!            push                 lease                 complete(token)
//!   (new) ──────────▶ pending ──────────▶ leased ─────────────────────▶ replayed(status)
//!                                       ▲  │  │
//!         lease (once retry_at passed)  │  │  │ lease runs out: leasable again
//!             failed again ◀────────────┼──┘  └──────────────────────────▶ (re-leased)
//!                          fail(token)  │
//!   any state but replayed ── discard ──▶ discarded
//! ```
//!
//! [`MemoryQueue`] keeps entries in this process (tests, or where losing them
//! on restart is acceptable); `SqliteQueue` (feature `sqlite`) keeps them in
//! a SQLite file, durable on one machine and inspectable with `sqlite3`;
//! `RedisQueue` (feature `redis`) is shared by every instance using one Redis.

#[cfg(feature = "admin")]
pub mod admin;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod replayer;
mod sink;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisQueue;
pub use memory::MemoryQueue;
pub use replayer::{DrainReport, ReplayOf, Replayer};
pub use sink::DeadLetters;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteQueue;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// The queue-assigned number of an entry; entries are leased and paged in
/// the order of their ids, which is the order they were pushed in.
///
/// ```
/// use tower_reissue::dead_letter::DeadLetterId;
/// assert_eq!(DeadLetterId::new(7).get(), 7);
/// assert_eq!(DeadLetterId::new(7).to_string(), "7");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadLetterId(u64);

impl DeadLetterId {
    /// An id with this value.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The id's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof of holding a lease on an entry: only the holder of the entry's
/// current token may [complete](DeadLetterQueue::complete) or
/// [fail](DeadLetterQueue::fail) it.
///
/// ```
/// use tower_reissue::dead_letter::LeaseToken;
/// assert_eq!(LeaseToken::new(3).get(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken(u64);

impl LeaseToken {
    /// A token with this value.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The request body as the dead letter holds it.
///
/// ```
/// use bytes::Bytes;
/// use tower_reissue::dead_letter::KeptBody;
///
/// assert!(KeptBody::Kept(Bytes::from_static(b"{}")).bytes().is_some());
/// let over = KeptBody::NotKept("the request body is over the replay limit of 16 bytes".into());
/// assert!(over.bytes().is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptBody {
    /// The whole body, exactly the bytes the server was sent.
    Kept(Bytes),
    /// No copy was kept (for example the body was over the retry layer's
    /// `replay_limit`); the text says why. Such an entry is not replayable:
    /// sending it with an empty body would be a different request.
    NotKept(String),
}

impl KeptBody {
    /// The body bytes, if they were kept.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            KeptBody::Kept(bytes) => Some(bytes),
            KeptBody::NotKept(_) => None,
        }
    }
}

/// How an attempt or a replay ended: a response status or an error's text.
///
/// ```
/// use http::StatusCode;
/// use tower_reissue::dead_letter::AttemptOutcome;
///
/// assert_eq!(AttemptOutcome::Status(StatusCode::BAD_GATEWAY).to_string(), "502 Bad Gateway");
/// assert_eq!(AttemptOutcome::Error("connection reset".into()).to_string(), "connection reset");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The server answered with this status.
    Status(StatusCode),
    /// The attempt failed without an answer.
    Error(String),
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptOutcome::Status(status) => status.fmt(f),
            AttemptOutcome::Error(text) => f.write_str(text),
        }
    }
}

/// A request the retry layer gave up on, as it is pushed to a queue.
///
/// Times are kept to the millisecond by the stores.
///
/// ```
/// use std::time::SystemTime;
/// use bytes::Bytes;
/// use http::{HeaderMap, Method, StatusCode};
/// use tower_reissue::dead_letter::{AttemptOutcome, FailedRequest, KeptBody};
///
/// let request = FailedRequest {
///     at: SystemTime::now(),
///     method: Method::POST,
///     uri: "http://api.example/emails".parse().unwrap(),
///     headers: HeaderMap::new(),
///     body: KeptBody::Kept(Bytes::from_static(b"{}")),
///     idempotency_key: Some("k-1".into()),
///     reason: "max_attempts".into(),
///     attempts: 3,
///     last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
/// };
/// assert_eq!(request.host(), Some("api.example"));
/// assert!(request.is_replayable());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FailedRequest {
    /// When the layer gave up.
    pub at: SystemTime,
    /// The request method.
    pub method: Method,
    /// The request URI, as the client was given it.
    pub uri: Uri,
    /// The request headers, without the credentials the
    /// [`DeadLetters`] sink leaves out.
    pub headers: HeaderMap,
    /// The body bytes, or why they were not kept.
    pub body: KeptBody,
    /// The request's idempotency key, if it had one: the replay sends the
    /// same key, so a deduplicating server runs it once.
    pub idempotency_key: Option<String>,
    /// Why the layer gave up, as a stable label
    /// ([`GiveUpReason::as_str`](crate::retry::GiveUpReason::as_str)).
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// How the last attempt ended.
    pub last: AttemptOutcome,
}

impl FailedRequest {
    /// The host of the URI, which [pages](PageQuery::host) can filter on.
    pub fn host(&self) -> Option<&str> {
        self.uri.host()
    }

    /// Whether the request can be sent again as it was: its body was kept.
    pub fn is_replayable(&self) -> bool {
        self.body.bytes().is_some()
    }
}

/// Where an entry stands.
///
/// ```
/// use tower_reissue::dead_letter::{DeadLetterState, StateKind};
/// assert_eq!(DeadLetterState::Pending.kind(), StateKind::Pending);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterState {
    /// Waiting to be replayed.
    Pending,
    /// A replayer holds it until `until` (or until it completes or fails
    /// it); after that it can be leased again.
    Leased {
        /// When the lease runs out.
        until: SystemTime,
    },
    /// Replayed; the server answered with `status`. Final.
    Replayed {
        /// The replay's response status.
        status: StatusCode,
    },
    /// The last replay failed (see the history); it is leased again once
    /// `retry_at` has passed.
    FailedAgain {
        /// When it may be leased again.
        retry_at: SystemTime,
    },
    /// Taken out of the queue by a person or by retention. Final.
    Discarded,
}

impl DeadLetterState {
    /// The state without its data, as counted and filtered on.
    pub fn kind(&self) -> StateKind {
        match self {
            DeadLetterState::Pending => StateKind::Pending,
            DeadLetterState::Leased { .. } => StateKind::Leased,
            DeadLetterState::Replayed { .. } => StateKind::Replayed,
            DeadLetterState::FailedAgain { .. } => StateKind::FailedAgain,
            DeadLetterState::Discarded => StateKind::Discarded,
        }
    }
}

/// A [`DeadLetterState`] without its data.
///
/// ```
/// use tower_reissue::dead_letter::StateKind;
/// assert_eq!(StateKind::FailedAgain.as_str(), "failed_again");
/// assert_eq!("failed_again".parse::<StateKind>().unwrap(), StateKind::FailedAgain);
/// assert!("lost".parse::<StateKind>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    /// [`DeadLetterState::Pending`].
    Pending,
    /// [`DeadLetterState::Leased`].
    Leased,
    /// [`DeadLetterState::Replayed`].
    Replayed,
    /// [`DeadLetterState::FailedAgain`].
    FailedAgain,
    /// [`DeadLetterState::Discarded`].
    Discarded,
}

impl StateKind {
    /// Every kind, in this order.
    pub const ALL: [StateKind; 5] = [
        StateKind::Pending,
        StateKind::Leased,
        StateKind::Replayed,
        StateKind::FailedAgain,
        StateKind::Discarded,
    ];

    /// A stable snake_case label, as stores keep it.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Pending => "pending",
            StateKind::Leased => "leased",
            StateKind::Replayed => "replayed",
            StateKind::FailedAgain => "failed_again",
            StateKind::Discarded => "discarded",
        }
    }

    /// Whether an entry in this state is done with: replayed or discarded.
    pub fn is_final(self) -> bool {
        matches!(self, StateKind::Replayed | StateKind::Discarded)
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StateKind {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StateKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| QueueError::Corrupt(format!("unknown dead-letter state {s:?}")))
    }
}

/// One replay of an entry, in its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRecord {
    /// When the replay's answer came in.
    pub at: SystemTime,
    /// How the replay ended.
    pub outcome: AttemptOutcome,
}

/// An entry of a queue: the request and where it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The entry's id.
    pub id: DeadLetterId,
    /// The request that was given up on.
    pub request: FailedRequest,
    /// Where the entry stands.
    pub state: DeadLetterState,
    /// Every replay so far, oldest first.
    pub history: Vec<ReplayRecord>,
}

/// An entry leased to one replayer, with the token that proves it.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The entry, in state [`Leased`](DeadLetterState::Leased).
    pub letter: DeadLetter,
    /// Pass it to [`complete`](DeadLetterQueue::complete) or
    /// [`fail`](DeadLetterQueue::fail).
    pub token: LeaseToken,
}

/// Which entries [`DeadLetterQueue::page`] returns: those matching every
/// filter that is set, with an id above `after`, at most `limit` of them, in
/// id order.
///
/// ```
/// use tower_reissue::dead_letter::{PageQuery, StateKind};
///
/// let first = PageQuery::new(50).state(StateKind::Pending).host("api.example");
/// assert_eq!(first.limit, 50);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only entries in this state.
    pub state: Option<StateKind>,
    /// Only entries given up on for this reason.
    pub reason: Option<String>,
    /// Only entries whose URI has this host.
    pub host: Option<String>,
    /// The cursor: only entries with a larger id (the previous page's
    /// [`next`](Page::next)).
    pub after: Option<DeadLetterId>,
    /// The most entries to return.
    pub limit: usize,
}

impl PageQuery {
    /// The first page of every entry, `limit` entries long.
    pub fn new(limit: usize) -> Self {
        PageQuery {
            limit,
            ..PageQuery::default()
        }
    }

    /// Only entries in `state`.
    pub fn state(mut self, state: StateKind) -> Self {
        self.state = Some(state);
        self
    }

    /// Only entries with this give-up reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only entries for this host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The page after the one that returned `cursor` as its
    /// [`next`](Page::next).
    pub fn after(mut self, cursor: DeadLetterId) -> Self {
        self.after = Some(cursor);
        self
    }
}

/// One page of entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The entries, in id order.
    pub entries: Vec<DeadLetter>,
    /// The cursor for the next page, or `None` when this page is the last.
    pub next: Option<DeadLetterId>,
}

/// How many entries are in each state and under each give-up reason.
///
/// ```
/// use tower_reissue::dead_letter::{Counts, StateKind};
/// let counts = Counts::default();
/// assert_eq!(counts.state(StateKind::Pending), 0);
/// assert_eq!(counts.total(), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries per state; states without entries may be absent.
    pub by_state: BTreeMap<StateKind, u64>,
    /// Entries per give-up reason, whatever their state.
    pub by_reason: BTreeMap<String, u64>,
}

impl Counts {
    /// The number of entries in `state`.
    pub fn state(&self, state: StateKind) -> u64 {
        self.by_state.get(&state).copied().unwrap_or(0)
    }

    /// The number of entries in all.
    pub fn total(&self) -> u64 {
        self.by_state.values().sum()
    }
}

impl fmt::Display for Counts {
    /// `pending 3, leased 0, replayed 12, failed_again 1, discarded 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, kind) in StateKind::ALL.into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{kind} {}", self.state(kind))?;
        }
        Ok(())
    }
}

/// A queue of dead letters.
///
/// # Contract
///
/// Every implementation must provide these guarantees; the [`Replayer`] and
/// its "replayed once, never lost" behaviour rest on them. "Now" is the
/// queue's clock (the system clock, for the queues of this crate).
///
/// * [`push`](Self::push) stores the request as a new entry in state
///   [`Pending`](DeadLetterState::Pending) with an empty history, under an id
///   larger than every id the queue has given before, and returns that id.
///   Once it has returned, the entry survives everything the queue claims to
///   survive (a process restart, for a durable queue). Everything pushed is
///   given back exactly ([`FailedRequest`] equality), times to the
///   millisecond.
/// * An entry is **leasable** when it is pending, when it is leased and its
///   lease ran out (`until <= now`), or when it failed again and
///   `retry_at <= now`. [`lease`](Self::lease) takes up to `max` leasable
///   entries, lowest id first, and atomically puts each in
///   [`Leased`](DeadLetterState::Leased) until `now + lease`, with a
///   [`LeaseToken`] never returned before. Of concurrent leases (from any
///   number of processes sharing the queue), no two get the same entry while
///   its lease runs.
/// * [`complete`](Self::complete) and [`fail`](Self::fail) succeed only when
///   the entry is leased with exactly that token; otherwise they change
///   nothing and return [`QueueError::LeaseLost`]. A lease that ran out but
///   was not taken over still holds: its replay's answer is recorded. Both
///   append one [`ReplayRecord`] (at now) to the history; `complete` puts the
///   entry in [`Replayed`](DeadLetterState::Replayed), `fail` in
///   [`FailedAgain`](DeadLetterState::FailedAgain) with
///   `retry_at = now + retry_in`.
/// * [`discard`](Self::discard) puts an entry in any state but replayed in
///   [`Discarded`](DeadLetterState::Discarded) (a live lease's holder then
///   gets `LeaseLost`); discarding a replayed entry returns
///   [`QueueError::Finished`] and changes nothing; an unknown id returns
///   [`QueueError::NotFound`].
/// * [`page`](Self::page) returns the entries matching a [`PageQuery`] in id
///   order, and a cursor when more may follow; paging with the cursors visits
///   each matching entry once. [`get`](Self::get) returns one entry,
///   [`counts`](Self::counts) the number per state and per reason.
/// * [`purge`](Self::purge) deletes the entries in a final state (replayed or
///   discarded) given up on before a time, and returns how many.
/// * Errors other than `LeaseLost`, `Finished` and `NotFound` mean the
///   operation's effect is unknown. A queue never panics on any input.
///
/// The futures must be `Send`; writing the methods as `async fn` in the
/// `impl` works.
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use bytes::Bytes;
/// use http::{HeaderMap, Method, StatusCode};
/// use tower_reissue::dead_letter::{
///     AttemptOutcome, DeadLetterQueue, DeadLetterState, FailedRequest, KeptBody, MemoryQueue,
///     StateKind,
/// };
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let queue = MemoryQueue::new();
/// let id = queue
///     .push(FailedRequest {
///         at: SystemTime::now(),
///         method: Method::POST,
///         uri: "http://api.example/emails".parse().unwrap(),
///         headers: HeaderMap::new(),
///         body: KeptBody::Kept(Bytes::from_static(b"{}")),
///         idempotency_key: Some("k-1".into()),
///         reason: "budget_exhausted".into(),
///         attempts: 1,
///         last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
///     })
///     .await?;
/// let leases = queue.lease(10, Duration::from_secs(60)).await?;
/// assert_eq!(leases.len(), 1);
/// // A second replayer finds nothing to take while the lease runs.
/// assert!(queue.lease(10, Duration::from_secs(60)).await?.is_empty());
/// queue.complete(id, leases[0].token, StatusCode::ACCEPTED).await?;
/// let entry = queue.get(id).await?.unwrap();
/// assert_eq!(entry.state, DeadLetterState::Replayed { status: StatusCode::ACCEPTED });
/// assert_eq!(queue.counts().await?.state(StateKind::Replayed), 1);
/// # Ok::<_, tower_reissue::dead_letter::QueueError>(())
/// # }).unwrap();
/// ```
pub trait DeadLetterQueue: Clone + Send + Sync + 'static {
    /// Stores a new pending entry and returns its id.
    fn push(
        &self,
        request: FailedRequest,
    ) -> impl Future<Output = Result<DeadLetterId, QueueError>> + Send;

    /// Leases up to `max` leasable entries, lowest id first, for `lease`.
    fn lease(
        &self,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Lease>, QueueError>> + Send;

    /// Leases the entry `id` for `lease` now, even if it failed again and
    /// its retry time has not come (a person asked for it): `None` when it
    /// is finished (replayed or discarded) or held by a live lease,
    /// [`QueueError::NotFound`] when the queue does not hold it.
    fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Lease>, QueueError>> + Send;

    /// Records that the replay of a leased entry was answered with `status`.
    fn complete(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        status: StatusCode,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Records a failed replay; the entry may be leased again after
    /// `retry_in`.
    fn fail(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Takes an entry out of the queue for good.
    fn discard(&self, id: DeadLetterId) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// One entry, if the queue holds it.
    fn get(
        &self,
        id: DeadLetterId,
    ) -> impl Future<Output = Result<Option<DeadLetter>, QueueError>> + Send;

    /// One page of the entries matching `query`.
    fn page(&self, query: &PageQuery) -> impl Future<Output = Result<Page, QueueError>> + Send;

    /// The number of entries per state and per reason.
    fn counts(&self) -> impl Future<Output = Result<Counts, QueueError>> + Send;

    /// Deletes the replayed and discarded entries given up on before `before`.
    fn purge(&self, before: SystemTime) -> impl Future<Output = Result<u64, QueueError>> + Send;
}

/// Why a queue operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// The token does not hold the entry (any more): it was leased again,
    /// completed, failed or discarded. Nothing was changed.
    LeaseLost,
    /// The entry was replayed already; it cannot be discarded.
    Finished,
    /// The queue holds no entry with this id.
    NotFound,
    /// The queue could not be reached or did not answer; the operation's
    /// effect is unknown.
    Unavailable(Box<dyn StdError + Send + Sync>),
    /// The queue returned data this crate cannot decode.
    Corrupt(String),
}

impl QueueError {
    /// An [`Unavailable`](Self::Unavailable) error wrapping the cause.
    ///
    /// ```
    /// use tower_reissue::dead_letter::QueueError;
    /// let err = QueueError::unavailable(std::io::Error::other("disk full"));
    /// assert_eq!(err.to_string(), "dead-letter queue unavailable: disk full");
    /// ```
    pub fn unavailable(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        QueueError::Unavailable(cause.into())
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::LeaseLost => {
                f.write_str("dead-letter lease lost: leased again, finished or discarded")
            }
            QueueError::Finished => f.write_str("the dead letter was replayed already"),
            QueueError::NotFound => f.write_str("no such dead letter"),
            QueueError::Unavailable(cause) => write!(f, "dead-letter queue unavailable: {cause}"),
            QueueError::Corrupt(what) => {
                write!(f, "dead-letter queue returned corrupt data: {what}")
            }
        }
    }
}

impl StdError for QueueError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            QueueError::Unavailable(cause) => Some(&**cause),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, the resolution stores keep times at
/// (0 for a time before the epoch, which no clock of a running system gives).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_reissue::dead_letter::{from_millis, to_millis};
/// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// assert_eq!(from_millis(to_millis(at)), at);
/// ```
pub fn to_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time [`to_millis`] gave `millis` for (negative values are the epoch).
pub fn from_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// `now + duration` in milliseconds, saturating instead of overflowing.
pub(crate) fn millis_after(now: i64, duration: Duration) -> i64 {
    now.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// Headers as `name: value` lines, a readable encoding for stores that keep
/// bytes (values may hold any byte a header value may, which excludes line
/// breaks, so lines are unambiguous).
///
/// ```
/// use http::HeaderMap;
/// use tower_reissue::dead_letter::{decode_headers, encode_headers};
///
/// let mut headers = HeaderMap::new();
/// headers.append("accept", "text/plain".parse().unwrap());
/// headers.append("accept", "application/json".parse().unwrap());
/// let bytes = encode_headers(&headers);
/// assert_eq!(&bytes[..], b"accept: text/plain\naccept: application/json\n");
/// assert_eq!(decode_headers(&bytes).unwrap(), headers);
/// assert!(decode_headers(b"no colon\n").is_err());
/// ```
pub fn encode_headers(headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.freeze()
}

/// Decodes what [`encode_headers`] produced; anything else is
/// [`QueueError::Corrupt`].
pub fn decode_headers(bytes: &[u8]) -> Result<HeaderMap, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("stored headers: {what}"));
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let at = line
            .windows(2)
            .position(|w| w == b": ")
            .ok_or_else(|| corrupt("a line without a name"))?;
        let name = HeaderName::from_bytes(&line[..at]).map_err(|_| corrupt("invalid name"))?;
        let value =
            HeaderValue::from_bytes(&line[at + 2..]).map_err(|_| corrupt("invalid value"))?;
        headers
            .try_append(name, value)
            .map_err(|_| corrupt("too many headers"))?;
    }
    Ok(headers)
}

/// A history as JSON, `[{"at_ms":…,"status":503}, {"at_ms":…,"error":"…"}]`:
/// readable in a database shell.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use http::StatusCode;
/// use tower_reissue::dead_letter::{decode_history, encode_history, AttemptOutcome, ReplayRecord};
///
/// let history = vec![ReplayRecord {
///     at: UNIX_EPOCH + Duration::from_millis(5),
///     outcome: AttemptOutcome::Status(StatusCode::BAD_GATEWAY),
/// }];
/// let text = encode_history(&history);
/// assert_eq!(text, r#"[{"at_ms":5,"status":502}]"#);
/// assert_eq!(decode_history(&text).unwrap(), history);
/// ```
pub fn encode_history(history: &[ReplayRecord]) -> String {
    let records: Vec<serde_json::Value> = history
        .iter()
        .map(|record| {
            let at = to_millis(record.at);
            match &record.outcome {
                AttemptOutcome::Status(status) => {
                    serde_json::json!({ "at_ms": at, "status": status.as_u16() })
                }
                AttemptOutcome::Error(text) => serde_json::json!({ "at_ms": at, "error": text }),
            }
        })
        .collect();
    serde_json::Value::Array(records).to_string()
}

/// Decodes what [`encode_history`] produced; anything else is
/// [`QueueError::Corrupt`].
pub fn decode_history(text: &str) -> Result<Vec<ReplayRecord>, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("stored history: {what}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt("not JSON"))?;
    let records = value.as_array().ok_or_else(|| corrupt("not a list"))?;
    records
        .iter()
        .map(|record| {
            let at = record["at_ms"].as_i64().ok_or_else(|| corrupt("no time"))?;
            let outcome = match (&record["status"], &record["error"]) {
                (serde_json::Value::Number(n), _) => AttemptOutcome::Status(
                    n.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .and_then(|n| StatusCode::from_u16(n).ok())
                        .ok_or_else(|| corrupt("invalid status"))?,
                ),
                (_, serde_json::Value::String(text)) => AttemptOutcome::Error(text.clone()),
                _ => return Err(corrupt("neither status nor error")),
            };
            Ok(ReplayRecord {
                at: from_millis(at),
                outcome,
            })
        })
        .collect()
}
