//! What a queue holds: the failed request, the entry and its state, leases,
//! and the queries and counts read back from it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};

use super::QueueError;

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
/// current token may [complete](super::DeadLetterQueue::complete) or
/// [fail](super::DeadLetterQueue::fail) it.
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
    /// [`DeadLetters`](super::DeadLetters) sink leaves out.
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
    /// Pass it to [`complete`](super::DeadLetterQueue::complete) or
    /// [`fail`](super::DeadLetterQueue::fail).
    pub token: LeaseToken,
}

/// Which entries [`DeadLetterQueue::page`](super::DeadLetterQueue::page)
/// returns: those matching every filter that is set, with an id above
/// `after`, at most `limit` of them, in id order.
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
