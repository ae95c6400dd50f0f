//! The [`DeadLetterQueue`] contract as one generic suite, run against every
//! queue: `MemoryQueue`, `SqliteQueue`, `RedisQueue`, and yours. Each check
//! gets a fresh, empty queue from the factory given to [`check_contract`].
//!
//! [`Either`] runs the suite through two handles on one shared queue (two
//! connections, as two processes would have), and [`request`] makes the
//! entries the suite pushes, for tests of what is particular to a queue.
//!
//! Queues run on the system clock, so the one timed rule (a lease that ran
//! out can be taken again) waits a lease of `SHORT` plus a margin for real;
//! "still leased" checks use leases many times longer than the suite.
use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::dead_letter::{
    AttemptOutcome, DeadLetterId, DeadLetterQueue, DeadLetterState, FailedRequest, KeptBody,
    PageQuery, QueueError, StateKind,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(100);
const MARGIN: Duration = Duration::from_millis(100);

/// A request with repeated headers, a body of every byte value and a time
/// with milliseconds, so that "given back exactly" is tested on awkward data.
/// It was given up on `tag` milliseconds after a fixed time, sent to
/// `http://{host}/emails?tag={tag}` with the idempotency key `key-{tag}`, for
/// `reason`.
///
/// ```
/// use tower_reissue::MemoryQueue;
/// use tower_reissue::conformance::queue::request;
/// use tower_reissue::dead_letter::DeadLetterQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let queue = MemoryQueue::new();
/// let id = queue.push(request("api.example", "max_attempts", 7)).await.unwrap();
/// let entry = queue.get(id).await.unwrap().unwrap();
/// assert_eq!(entry.request, request("api.example", "max_attempts", 7));
/// assert_eq!(entry.request.idempotency_key.as_deref(), Some("key-7"));
/// # }
/// ```
pub fn request(host: &str, reason: &str, tag: u32) -> FailedRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.append("accept", HeaderValue::from_static("text/plain"));
    headers.append("accept", HeaderValue::from_static("application/json"));
    headers.insert("x-tag", HeaderValue::from_str(&tag.to_string()).unwrap());
    let mut body = format!("{{\"tag\":{tag}}}").into_bytes();
    body.extend(0..=255u8);
    FailedRequest {
        at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + u64::from(tag)),
        method: Method::POST,
        uri: format!("http://{host}/emails?tag={tag}").parse().unwrap(),
        headers,
        body: KeptBody::Kept(Bytes::from(body)),
        idempotency_key: Some(format!("key-{tag}")),
        reason: reason.into(),
        attempts: 3,
        last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn push_n<Q: DeadLetterQueue>(queue: &Q, n: u32) -> Vec<DeadLetterId> {
    let mut ids = Vec::new();
    for tag in 0..n {
        ids.push(
            queue
                .push(request("api.example", "max_attempts", tag))
                .await
                .unwrap(),
        );
    }
    ids
}

/// Runs every check, each on a fresh, empty queue from `make`: entries given
/// back exactly, concurrent pushes, leases lowest id first and exclusive
/// (also under concurrency), fencing by lease token, failures and their
/// history, takeover of an expired lease, discarding, on-demand leases,
/// paging with filters, counts, and purging.
///
/// The queue runs on the system clock: the suite waits out two short leases
/// for real, about half a second in all. Run it on a multi-threaded runtime,
/// so that concurrent pushes and leases truly race.
///
/// ```
/// use tower_reissue::MemoryQueue;
/// use tower_reissue::conformance::queue::check_contract;
///
/// #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// async fn main() {
///     check_contract(|| async { MemoryQueue::new() }).await;
/// }
/// ```
pub async fn check_contract<Q, F, Fut>(make: F)
where
    Q: DeadLetterQueue,
    F: Fn() -> Fut,
    Fut: Future<Output = Q>,
{
    pushed_entries_come_back_exactly(&make().await).await;
    concurrent_pushes_are_all_kept(&make().await).await;
    leases_go_lowest_id_first_in_batches(&make().await).await;
    a_live_lease_is_exclusive(&make().await).await;
    concurrent_leases_never_share_an_entry(&make().await).await;
    only_the_current_token_completes_or_fails(&make().await).await;
    failed_entries_come_back_with_their_history(&make().await).await;
    an_expired_lease_is_taken_over(&make().await).await;
    discard_rules(&make().await).await;
    one_entry_is_leased_on_demand(&make().await).await;
    an_expired_lease_is_taken_on_demand(&make().await).await;
    paging_visits_each_match_once(&make().await).await;
    counts_by_state_and_reason(&make().await).await;
    purge_removes_only_old_finished_entries(&make().await).await;
}

async fn pushed_entries_come_back_exactly<Q: DeadLetterQueue>(queue: &Q) {
    let kept = request("api.example", "not_safe", 1);
    let mut not_kept = request("other.example", "not_replayable", 2);
    not_kept.body =
        KeptBody::NotKept("the request body is over the replay limit of 16 bytes".into());
    not_kept.last = AttemptOutcome::Error("connection reset by peer".into());
    not_kept.idempotency_key = None;
    not_kept.headers = HeaderMap::new();

    let a = queue.push(kept.clone()).await.unwrap();
    let b = queue.push(not_kept.clone()).await.unwrap();
    assert!(b > a, "ids grow with each push");

    let entry = queue.get(a).await.unwrap().expect("pushed entry is found");
    assert_eq!(entry.id, a);
    assert_eq!(entry.request, kept);
    assert_eq!(entry.state, DeadLetterState::Pending);
    assert!(entry.history.is_empty());
    let entry = queue.get(b).await.unwrap().unwrap();
    assert_eq!(entry.request, not_kept);
    assert!(!entry.request.is_replayable());

    assert!(
        queue
            .get(DeadLetterId::new(b.get() + 1000))
            .await
            .unwrap()
            .is_none()
    );
}

async fn concurrent_pushes_are_all_kept<Q: DeadLetterQueue>(queue: &Q) {
    let tasks: Vec<_> = (0..200u32)
        .map(|tag| {
            let queue = queue.clone();
            tokio::spawn(async move {
                (
                    tag,
                    queue
                        .push(request("api.example", "deadline", tag))
                        .await
                        .unwrap(),
                )
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let (tag, id) = task.await.unwrap();
        assert!(ids.insert(id), "every push gets an id of its own");
        assert_eq!(
            queue.get(id).await.unwrap().unwrap().request,
            request("api.example", "deadline", tag)
        );
    }
    assert_eq!(queue.counts().await.unwrap().state(StateKind::Pending), 200);
}

async fn leases_go_lowest_id_first_in_batches<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 5).await;
    let first = queue.lease(2, LONG).await.unwrap();
    let got: Vec<_> = first.iter().map(|l| l.letter.id).collect();
    assert_eq!(got, ids[..2]);
    for lease in &first {
        assert!(
            matches!(lease.letter.state, DeadLetterState::Leased { until } if until > SystemTime::now())
        );
        assert_eq!(
            queue.get(lease.letter.id).await.unwrap().unwrap().state,
            lease.letter.state
        );
    }
    let rest = queue.lease(10, LONG).await.unwrap();
    let got: Vec<_> = rest.iter().map(|l| l.letter.id).collect();
    assert_eq!(got, ids[2..]);
    let tokens: HashSet<_> = first.iter().chain(&rest).map(|l| l.token).collect();
    assert_eq!(tokens.len(), 5, "every lease gets a token of its own");
    assert!(queue.lease(0, LONG).await.unwrap().is_empty());
}

async fn a_live_lease_is_exclusive<Q: DeadLetterQueue>(queue: &Q) {
    push_n(queue, 3).await;
    assert_eq!(queue.lease(10, LONG).await.unwrap().len(), 3);
    assert!(queue.lease(10, LONG).await.unwrap().is_empty());
    assert_eq!(queue.counts().await.unwrap().state(StateKind::Leased), 3);
}

async fn concurrent_leases_never_share_an_entry<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 60).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = queue.lease(3, LONG).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|l| l.letter.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), ids.len(), "no entry leased twice");
    assert_eq!(unique, ids.into_iter().collect::<HashSet<_>>());
}

async fn only_the_current_token_completes_or_fails<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 2).await;
    let leases = queue.lease(2, LONG).await.unwrap();
    let (a, b) = (&leases[0], &leases[1]);

    // A token of another entry holds nothing here.
    assert!(matches!(
        queue.complete(a.letter.id, b.token, StatusCode::OK).await,
        Err(QueueError::LeaseLost)
    ));
    assert!(matches!(
        queue
            .fail(
                a.letter.id,
                b.token,
                AttemptOutcome::Error("x".into()),
                LONG
            )
            .await,
        Err(QueueError::LeaseLost)
    ));
    assert!(matches!(
        queue.get(a.letter.id).await.unwrap().unwrap().state,
        DeadLetterState::Leased { .. }
    ));

    queue
        .complete(a.letter.id, a.token, StatusCode::CREATED)
        .await
        .unwrap();
    let done = queue.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        done.state,
        DeadLetterState::Replayed {
            status: StatusCode::CREATED
        }
    );
    assert_eq!(done.history.len(), 1);
    assert_eq!(
        done.history[0].outcome,
        AttemptOutcome::Status(StatusCode::CREATED)
    );

    // Completing twice, or failing after completing, changes nothing.
    assert!(matches!(
        queue.complete(a.letter.id, a.token, StatusCode::OK).await,
        Err(QueueError::LeaseLost)
    ));
    assert!(matches!(
        queue
            .fail(
                a.letter.id,
                a.token,
                AttemptOutcome::Error("late".into()),
                LONG
            )
            .await,
        Err(QueueError::LeaseLost)
    ));
    assert_eq!(queue.get(ids[0]).await.unwrap().unwrap(), done);

    // A pending entry has no holder at all.
    let fresh = queue
        .push(request("api.example", "deadline", 9))
        .await
        .unwrap();
    assert!(matches!(
        queue.complete(fresh, b.token, StatusCode::OK).await,
        Err(QueueError::LeaseLost)
    ));
}

async fn failed_entries_come_back_with_their_history<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 2).await;
    let leases = queue.lease(2, LONG).await.unwrap();
    let before = SystemTime::now() - Duration::from_millis(5);
    let failure = AttemptOutcome::Status(StatusCode::BAD_GATEWAY);
    // One comes back at once, the other only after a long wait.
    queue
        .fail(ids[0], leases[0].token, failure.clone(), Duration::ZERO)
        .await
        .unwrap();
    queue
        .fail(
            ids[1],
            leases[1].token,
            AttemptOutcome::Error("reset".into()),
            LONG,
        )
        .await
        .unwrap();

    let failed = queue.get(ids[1]).await.unwrap().unwrap();
    assert!(
        matches!(failed.state, DeadLetterState::FailedAgain { retry_at } if retry_at > SystemTime::now() + LONG / 2)
    );
    assert_eq!(
        failed.history[0].outcome,
        AttemptOutcome::Error("reset".into())
    );
    assert!(failed.history[0].at >= before);

    let again = queue.lease(10, LONG).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "an entry waiting out retry_in is not leased"
    );
    assert_eq!(again[0].letter.id, ids[0]);
    assert_eq!(again[0].letter.history.len(), 1);
    assert_eq!(again[0].letter.history[0].outcome, failure);
    assert_ne!(again[0].token, leases[0].token);

    queue
        .complete(ids[0], again[0].token, StatusCode::OK)
        .await
        .unwrap();
    let history = queue.get(ids[0]).await.unwrap().unwrap().history;
    assert_eq!(
        history.len(),
        2,
        "a replay adds to the history, never replaces it"
    );
    assert_eq!(history[0].outcome, failure);
    assert_eq!(history[1].outcome, AttemptOutcome::Status(StatusCode::OK));
    assert!(history[0].at <= history[1].at);
}

async fn an_expired_lease_is_taken_over<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 2).await;
    let old = queue.lease(1, SHORT).await.unwrap();
    assert_eq!(old[0].letter.id, ids[0]);
    // An expired lease that nobody took over still records its answer.
    let kept = queue.lease(1, SHORT).await.unwrap();
    assert_eq!(kept[0].letter.id, ids[1]);
    tokio::time::sleep(SHORT + MARGIN).await;
    queue
        .complete(ids[1], kept[0].token, StatusCode::OK)
        .await
        .unwrap();

    let new = queue.lease(10, LONG).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].letter.id, ids[0]);
    assert_ne!(new[0].token, old[0].token);
    assert!(matches!(
        queue.complete(ids[0], old[0].token, StatusCode::OK).await,
        Err(QueueError::LeaseLost)
    ));
    queue
        .complete(ids[0], new[0].token, StatusCode::ACCEPTED)
        .await
        .unwrap();
    assert_eq!(
        queue.get(ids[0]).await.unwrap().unwrap().history.len(),
        1,
        "the lost lease recorded nothing"
    );
}

async fn discard_rules<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 3).await;
    queue.discard(ids[0]).await.unwrap();
    queue.discard(ids[0]).await.unwrap();
    assert_eq!(
        queue.get(ids[0]).await.unwrap().unwrap().state,
        DeadLetterState::Discarded
    );

    let leases = queue.lease(10, LONG).await.unwrap();
    let leased: Vec<_> = leases.iter().map(|l| l.letter.id).collect();
    assert_eq!(leased, ids[1..], "a discarded entry is never leased");

    // Discarding a leased entry takes it from its holder.
    queue.discard(ids[1]).await.unwrap();
    assert!(matches!(
        queue
            .complete(ids[1], leases[0].token, StatusCode::OK)
            .await,
        Err(QueueError::LeaseLost)
    ));
    assert_eq!(
        queue.get(ids[1]).await.unwrap().unwrap().state,
        DeadLetterState::Discarded
    );

    queue
        .complete(ids[2], leases[1].token, StatusCode::OK)
        .await
        .unwrap();
    assert!(matches!(
        queue.discard(ids[2]).await,
        Err(QueueError::Finished)
    ));
    assert!(matches!(
        queue.get(ids[2]).await.unwrap().unwrap().state,
        DeadLetterState::Replayed { .. }
    ));
    assert!(matches!(
        queue.discard(DeadLetterId::new(ids[2].get() + 1000)).await,
        Err(QueueError::NotFound)
    ));
}

async fn one_entry_is_leased_on_demand<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 4).await;
    // A failed entry whose retry time is far off is taken on demand.
    let first = queue.lease(1, LONG).await.unwrap().remove(0);
    queue
        .fail(
            ids[0],
            first.token,
            AttemptOutcome::Error("reset".into()),
            LONG,
        )
        .await
        .unwrap();
    let again = queue.lease_one(ids[0], LONG).await.unwrap().unwrap();
    assert_eq!(again.letter.id, ids[0]);
    assert!(matches!(again.letter.state, DeadLetterState::Leased { .. }));
    assert_ne!(again.token, first.token);
    assert_eq!(again.letter.history.len(), 1);
    // Held now: neither a second on-demand lease nor a batch takes it.
    assert!(queue.lease_one(ids[0], LONG).await.unwrap().is_none());
    let batch: Vec<_> = queue
        .lease(10, LONG)
        .await
        .unwrap()
        .iter()
        .map(|l| l.letter.id)
        .collect();
    assert_eq!(batch, ids[1..]);
    queue
        .complete(ids[0], again.token, StatusCode::OK)
        .await
        .unwrap();
    // Finished entries are not leased; a missing one is an error.
    assert!(queue.lease_one(ids[0], LONG).await.unwrap().is_none());
    let fresh = queue
        .push(request("a.example", "max_attempts", 9))
        .await
        .unwrap();
    queue.discard(fresh).await.unwrap();
    assert!(queue.lease_one(fresh, LONG).await.unwrap().is_none());
    assert!(matches!(
        queue
            .lease_one(DeadLetterId::new(fresh.get() + 1000), LONG)
            .await,
        Err(QueueError::NotFound)
    ));
}

async fn an_expired_lease_is_taken_on_demand<Q: DeadLetterQueue>(queue: &Q) {
    let ids = push_n(queue, 1).await;
    let old = queue.lease(1, SHORT).await.unwrap().remove(0);
    tokio::time::sleep(SHORT + MARGIN).await;
    let new = queue.lease_one(ids[0], LONG).await.unwrap().unwrap();
    assert_ne!(new.token, old.token);
    // The new lease's end replaced the old one: a batch finds nothing due.
    assert!(queue.lease(10, LONG).await.unwrap().is_empty());
    assert!(matches!(
        queue.complete(ids[0], old.token, StatusCode::OK).await,
        Err(QueueError::LeaseLost)
    ));
    queue
        .complete(ids[0], new.token, StatusCode::OK)
        .await
        .unwrap();
}

async fn paging_visits_each_match_once<Q: DeadLetterQueue>(queue: &Q) {
    let mut ids = Vec::new();
    for tag in 0..25u32 {
        let host = if tag % 2 == 0 {
            "a.example"
        } else {
            "b.example"
        };
        let reason = if tag % 3 == 0 {
            "not_safe"
        } else {
            "budget_exhausted"
        };
        ids.push(queue.push(request(host, reason, tag)).await.unwrap());
    }
    // Lease the first four and replay one, so states differ.
    let leases = queue.lease(4, LONG).await.unwrap();
    queue
        .complete(ids[0], leases[0].token, StatusCode::OK)
        .await
        .unwrap();

    async fn all<Q: DeadLetterQueue>(queue: &Q, query: PageQuery) -> Vec<DeadLetterId> {
        let mut seen = Vec::new();
        let mut query = query;
        loop {
            let page = queue.page(&query).await.unwrap();
            assert!(page.entries.len() <= query.limit);
            seen.extend(page.entries.iter().map(|e| e.id));
            match page.next {
                Some(cursor) => query = query.after(cursor),
                None => return seen,
            }
        }
    }

    assert_eq!(all(queue, PageQuery::new(10)).await, ids);
    assert_eq!(all(queue, PageQuery::new(25)).await, ids);
    let first = queue.page(&PageQuery::new(10)).await.unwrap();
    assert_eq!(first.entries.len(), 10);
    assert_eq!(first.next, Some(ids[9]));
    assert_eq!(
        first.entries[3].request,
        request("b.example", "not_safe", 3)
    );
    let last = queue.page(&PageQuery::new(25)).await.unwrap();
    assert_eq!(last.next, None);

    let on = |f: fn(u32) -> bool| -> Vec<DeadLetterId> {
        (0..25u32)
            .filter(|t| f(*t))
            .map(|t| ids[t as usize])
            .collect()
    };
    assert_eq!(
        all(queue, PageQuery::new(4).host("a.example")).await,
        on(|t| t % 2 == 0)
    );
    assert_eq!(
        all(queue, PageQuery::new(3).reason("not_safe")).await,
        on(|t| t % 3 == 0)
    );
    assert_eq!(
        all(
            queue,
            PageQuery::new(2).reason("not_safe").host("b.example")
        )
        .await,
        on(|t| t % 3 == 0 && t % 2 == 1)
    );
    assert_eq!(
        all(queue, PageQuery::new(2).state(StateKind::Leased)).await,
        ids[1..4]
    );
    assert_eq!(
        all(queue, PageQuery::new(7).state(StateKind::Pending)).await,
        ids[4..]
    );
    assert_eq!(
        all(queue, PageQuery::new(7).state(StateKind::Replayed)).await,
        ids[..1]
    );
    assert!(
        all(queue, PageQuery::new(7).host("c.example"))
            .await
            .is_empty()
    );
    assert!(
        queue
            .page(&PageQuery::new(0))
            .await
            .unwrap()
            .entries
            .is_empty()
    );
}

async fn counts_by_state_and_reason<Q: DeadLetterQueue>(queue: &Q) {
    assert_eq!(queue.counts().await.unwrap().total(), 0);
    for tag in 0..6u32 {
        let reason = if tag < 4 { "max_attempts" } else { "deadline" };
        queue
            .push(request("api.example", reason, tag))
            .await
            .unwrap();
    }
    let leases = queue.lease(3, LONG).await.unwrap();
    queue
        .complete(leases[0].letter.id, leases[0].token, StatusCode::OK)
        .await
        .unwrap();
    queue
        .fail(
            leases[1].letter.id,
            leases[1].token,
            AttemptOutcome::Error("x".into()),
            LONG,
        )
        .await
        .unwrap();
    queue
        .discard(DeadLetterId::new(leases[2].letter.id.get() + 1))
        .await
        .unwrap();

    let counts = queue.counts().await.unwrap();
    assert_eq!(counts.state(StateKind::Replayed), 1);
    assert_eq!(counts.state(StateKind::FailedAgain), 1);
    assert_eq!(counts.state(StateKind::Leased), 1);
    assert_eq!(counts.state(StateKind::Discarded), 1);
    assert_eq!(counts.state(StateKind::Pending), 2);
    assert_eq!(counts.total(), 6);
    assert_eq!(counts.by_reason.get("max_attempts"), Some(&4));
    assert_eq!(counts.by_reason.get("deadline"), Some(&2));
    assert_eq!(counts.by_reason.len(), 2);
}

async fn purge_removes_only_old_finished_entries<Q: DeadLetterQueue>(queue: &Q) {
    // Tags 0..4 are given up on at t0 + tag ms.
    let ids = push_n(queue, 4).await;
    let leases = queue.lease(2, LONG).await.unwrap();
    queue
        .complete(ids[0], leases[0].token, StatusCode::OK)
        .await
        .unwrap();
    queue.discard(ids[2]).await.unwrap();
    queue.discard(ids[3]).await.unwrap();

    let cutoff = request("api.example", "", 3).at;
    assert_eq!(queue.purge(cutoff).await.unwrap(), 2, "ids[0] and ids[2]");
    assert!(queue.get(ids[0]).await.unwrap().is_none());
    assert!(queue.get(ids[2]).await.unwrap().is_none());
    assert!(queue.get(ids[1]).await.unwrap().is_some(), "leased: kept");
    assert!(
        queue.get(ids[3]).await.unwrap().is_some(),
        "newer than the cutoff"
    );
    assert_eq!(queue.counts().await.unwrap().total(), 2);
    assert_eq!(queue.purge(cutoff).await.unwrap(), 0);
}

/// Two handles on one shared queue, used in turn for each call: what one
/// writes, the other must see, and leases taken through both never overlap.
///
/// ```
/// use tower_reissue::MemoryQueue;
/// use tower_reissue::conformance::queue::{Either, check_contract};
///
/// #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// async fn main() {
///     // Clones of one `MemoryQueue` share it; a database queue would open
///     // two connections to one database here.
///     check_contract(|| async {
///         let queue = MemoryQueue::new();
///         Either::new(queue.clone(), queue)
///     })
///     .await;
/// }
/// ```
#[derive(Clone)]
pub struct Either<Q> {
    handles: std::sync::Arc<(Q, Q)>,
    turn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<Q: DeadLetterQueue> Either<Q> {
    /// Alternates between `a` and `b`, which must be handles on one queue,
    /// starting with `a`.
    ///
    /// ```
    /// use tower_reissue::MemoryQueue;
    /// use tower_reissue::conformance::queue::{Either, request};
    /// use tower_reissue::dead_letter::DeadLetterQueue;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let queue = MemoryQueue::new();
    /// let either = Either::new(queue.clone(), queue.clone());
    /// let id = either.push(request("api.example", "deadline", 1)).await.unwrap();
    /// assert!(either.get(id).await.unwrap().is_some());
    /// assert!(queue.get(id).await.unwrap().is_some());
    /// # }
    /// ```
    pub fn new(a: Q, b: Q) -> Self {
        Either {
            handles: std::sync::Arc::new((a, b)),
            turn: Default::default(),
        }
    }

    fn next(&self) -> &Q {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if turn % 2 == 0 {
            &self.handles.0
        } else {
            &self.handles.1
        }
    }
}

impl<Q: DeadLetterQueue> DeadLetterQueue for Either<Q> {
    async fn push(&self, request: FailedRequest) -> Result<DeadLetterId, QueueError> {
        self.next().push(request).await
    }
    async fn lease(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<crate::dead_letter::Lease>, QueueError> {
        self.next().lease(max, lease).await
    }
    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<crate::dead_letter::Lease>, QueueError> {
        self.next().lease_one(id, lease).await
    }
    async fn complete(
        &self,
        id: DeadLetterId,
        token: crate::dead_letter::LeaseToken,
        status: StatusCode,
    ) -> Result<(), QueueError> {
        self.next().complete(id, token, status).await
    }
    async fn fail(
        &self,
        id: DeadLetterId,
        token: crate::dead_letter::LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> Result<(), QueueError> {
        self.next().fail(id, token, outcome, retry_in).await
    }
    async fn discard(&self, id: DeadLetterId) -> Result<(), QueueError> {
        self.next().discard(id).await
    }
    async fn get(
        &self,
        id: DeadLetterId,
    ) -> Result<Option<crate::dead_letter::DeadLetter>, QueueError> {
        self.next().get(id).await
    }
    async fn page(&self, query: &PageQuery) -> Result<crate::dead_letter::Page, QueueError> {
        self.next().page(query).await
    }
    async fn counts(&self) -> Result<crate::dead_letter::Counts, QueueError> {
        self.next().counts().await
    }
    async fn purge(&self, before: SystemTime) -> Result<u64, QueueError> {
        self.next().purge(before).await
    }
}
