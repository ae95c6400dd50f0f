//! The contract every dead-letter queue implements.

use std::future::Future;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, FailedRequest, Lease, LeaseToken, Page,
    PageQuery, QueueError,
};

/// A queue of dead letters.
///
/// # Contract
///
/// Every implementation must provide these guarantees; the
/// [`Replayer`](super::Replayer) and its "replayed once, never lost"
/// behaviour rest on them. "Now" is the queue's clock (the system clock, for
/// the queues of this crate).
///
/// * [`push`](Self::push) stores the request as a new entry in state
///   [`Pending`](super::DeadLetterState::Pending) with an empty history,
///   under an id larger than every id the queue has given before, and
///   returns that id.
///   Once it has returned, the entry survives everything the queue claims to
///   survive (a process restart, for a durable queue). Everything pushed is
///   given back exactly ([`FailedRequest`] equality), times to the
///   millisecond.
/// * An entry is **leasable** when it is pending, when it is leased and its
///   lease ran out (`until <= now`), or when it failed again and
///   `retry_at <= now`. [`lease`](Self::lease) takes up to `max` leasable
///   entries, lowest id first, and atomically puts each in
///   [`Leased`](super::DeadLetterState::Leased) until `now + lease`, with a
///   [`LeaseToken`] never returned before. Of concurrent leases (from any
///   number of processes sharing the queue), no two get the same entry while
///   its lease runs.
/// * [`complete`](Self::complete) and [`fail`](Self::fail) succeed only when
///   the entry is leased with exactly that token; otherwise they change
///   nothing and return [`QueueError::LeaseLost`]. A lease that ran out but
///   was not taken over still holds: its replay's answer is recorded. Both
///   append one [`ReplayRecord`](super::ReplayRecord) (at now) to the
///   history; `complete` puts the entry in
///   [`Replayed`](super::DeadLetterState::Replayed), `fail` in
///   [`FailedAgain`](super::DeadLetterState::FailedAgain) with
///   `retry_at = now + retry_in`.
/// * [`discard`](Self::discard) puts an entry in any state but replayed in
///   [`Discarded`](super::DeadLetterState::Discarded) (a live lease's
///   holder then gets `LeaseLost`); discarding a replayed entry returns
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
