use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};
use tower_service::Service;

use super::sink::error_text;
use super::{AttemptOutcome, DeadLetter, DeadLetterId, DeadLetterQueue, Lease, QueueError};
use crate::classify::{Classifier, Outcome, RequestView};
use crate::idempotency_key::IDEMPOTENCY_KEY;
use crate::{BoxError, DefaultClassifier, Verdict};

/// Far enough to mean "until a person looks at it".
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Marks a request sent by a [`Replayer`], in its extensions: the id of the
/// entry it replays. A retry layer in the replaying stack does not park such
/// a request again (the entry itself goes back to the queue).
///
/// ```
/// use tower_reissue::dead_letter::{DeadLetterId, ReplayOf};
/// let mark = ReplayOf(DeadLetterId::new(4));
/// assert_eq!(mark.0.get(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOf(pub DeadLetterId);

/// Sends queued dead letters again through the application's own client
/// stack.
///
/// Each entry is leased, rebuilt as an `http::Request<Full<Bytes>>` (method,
/// URI, stored headers, the kept body, and its `Idempotency-Key`, so a
/// deduplicating server runs it once however often it arrives), sent
/// through `client`, and only then marked: replayed when the
/// [`Classifier`] calls the answer a success or a permanent failure (the
/// replay was answered for good), failed again otherwise, to be leased again
/// after [`retry_in`](Self::retry_in) with the failure in its history. A
/// replayer that dies mid-entry leaves it leased; once the lease runs out
/// another replayer takes it.
///
/// An entry whose body was not kept is never sent (an empty body would be
/// another request), nor, unless [`replay_unkeyed`](Self::replay_unkeyed),
/// one that may already have taken effect and has no idempotency key (a
/// keyless POST given up on as `not_safe`): either is failed with the reason
/// and left for a person. An entry given up on longer ago than [`max_age`](Self::max_age)
/// is discarded rather than sent late.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower_reissue::dead_letter::{DeadLetterQueue, MemoryQueue, Replayer};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let queue = MemoryQueue::new();
/// let client = tower::service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, Infallible>(Response::new(()))
/// });
/// let replayer = Replayer::new(queue.clone(), client)
///     .concurrency(4)
///     .rate(10, Duration::from_secs(1))
///     .max_age(Duration::from_secs(7 * 86_400));
/// let report = replayer.drain(std::future::pending()).await?;
/// assert_eq!(report.replayed, 0);
/// # Ok::<_, tower_reissue::dead_letter::QueueError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Replayer<Q, S, C = DefaultClassifier> {
    queue: Q,
    client: S,
    classifier: C,
    concurrency: usize,
    rate: Option<(u32, Duration)>,
    lease: Duration,
    retry_in: Duration,
    max_age: Option<Duration>,
    retention: Option<Duration>,
    idle: Duration,
    replay_unkeyed: bool,
}

/// What one [`Replayer::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Entries sent and answered for good (marked replayed).
    pub replayed: u64,
    /// Entries sent whose replay failed (back in the queue).
    pub failed: u64,
    /// Entries never sent: their body was not kept, or they may have taken
    /// effect and carry no idempotency key.
    pub not_replayable: u64,
    /// Entries discarded for being older than `max_age`.
    pub expired: u64,
    /// Replays whose answer could not be recorded: the lease was lost or the
    /// queue failed (the entry is leased again later, so it is not lost).
    pub unrecorded: u64,
    /// Finished entries purged for being older than the retention.
    pub purged: u64,
}

impl<Q, S> Replayer<Q, S> {
    /// A replayer draining `queue` through `client`, one entry at a time,
    /// without a rate limit, with a lease of 5 minutes and a `retry_in` of
    /// 1 minute.
    ///
    /// The lease must be longer than a replay can take (the client's own
    /// timeouts bound that), or another replayer may send the entry again
    /// meanwhile.
    pub fn new(queue: Q, client: S) -> Self {
        Replayer {
            queue,
            client,
            classifier: DefaultClassifier::new(),
            concurrency: 1,
            rate: None,
            lease: Duration::from_secs(300),
            retry_in: Duration::from_secs(60),
            max_age: None,
            retention: None,
            idle: Duration::from_secs(5),
            replay_unkeyed: false,
        }
    }
}

impl<Q, S, C> Replayer<Q, S, C> {
    /// Uses another classifier to judge replays' answers (use the retry
    /// layer's, so both agree on what a success is).
    pub fn classifier<C2>(self, classifier: C2) -> Replayer<Q, S, C2> {
        Replayer {
            queue: self.queue,
            client: self.client,
            classifier,
            concurrency: self.concurrency,
            rate: self.rate,
            lease: self.lease,
            retry_in: self.retry_in,
            max_age: self.max_age,
            retention: self.retention,
            idle: self.idle,
            replay_unkeyed: self.replay_unkeyed,
        }
    }

    /// How many replays may be in flight at once (default 1; 0 is taken as
    /// 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Starts at most `count` replays per `per`, evenly spaced (0 is taken
    /// as 1).
    pub fn rate(mut self, count: u32, per: Duration) -> Self {
        self.rate = Some((count.max(1), per));
        self
    }

    /// How long a replayer holds an entry (default 5 minutes).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a failed entry waits before it is leased again (default
    /// 1 minute).
    pub fn retry_in(mut self, retry_in: Duration) -> Self {
        self.retry_in = retry_in;
        self
    }

    /// Discards, instead of sending, entries given up on longer ago than
    /// `max_age`: an email a week late is worse than none.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Purges replayed and discarded entries given up on longer ago than
    /// `retention`, at the start of each drain.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Also sends the entries that may have taken effect and carry no
    /// idempotency key (given up on as `not_safe`, `disabled` or
    /// `unreconciled`): for a replayer run by hand, once a person or a
    /// reconciler has checked that they did not take effect.
    pub fn replay_unkeyed(mut self, replay: bool) -> Self {
        self.replay_unkeyed = replay;
        self
    }

    /// How long [`run`](Self::run) waits between drains when the queue has
    /// nothing to replay (default 5 s).
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }
}

impl<Q, S, C, B> Replayer<Q, S, C>
where
    Q: DeadLetterQueue,
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
    C: Classifier + Clone + Send + Sync + 'static,
{
    /// Replays entries until none is leasable, or until `shutdown`
    /// completes: then no further entry is started, and the replays in
    /// flight are awaited and recorded.
    ///
    /// Fails only if the queue fails to lease; the replays' own failures are
    /// in the report and the queue.
    pub async fn drain(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<DrainReport, QueueError> {
        let shutdown = pin!(shutdown);
        let mut shutdown = Signal::new(shutdown);
        let mut report = DrainReport::default();
        if let Some(retention) = self.retention {
            let before = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            report.purged = self.queue.purge(before).await?;
        }
        let mut pacing = self.rate.map(|(count, per)| {
            let mut interval = tokio::time::interval((per / count).max(Duration::from_nanos(1)));
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let mut in_flight = JoinSet::new();
        let result = loop {
            while in_flight.len() >= self.concurrency {
                let Some(done) = shutdown.or(in_flight.join_next()).await.flatten() else {
                    break;
                };
                report.add(done);
            }
            if shutdown.fired() || !pace(&mut shutdown, pacing.as_mut()).await {
                break Ok(());
            }
            // Not raced with the shutdown: a lease cut off halfway could
            // still take an entry, which would then sit out its lease.
            let lease = match self.queue.lease(1, self.lease).await {
                Err(error) => break Err(error),
                Ok(mut leases) => leases.pop(),
            };
            let Some(lease) = lease else {
                // Nothing leasable now; a replay still in flight may yet
                // fail back into the queue with a zero `retry_in`.
                match shutdown.or(in_flight.join_next()).await.flatten() {
                    Some(done) => {
                        report.add(done);
                        continue;
                    }
                    None => break Ok(()),
                }
            };
            if let Some(done) = self.settle_unsendable(&lease).await {
                report.add(Ok(done));
                continue;
            }
            in_flight.spawn(replay(
                self.queue.clone(),
                self.client.clone(),
                self.classifier.clone(),
                lease,
                self.retry_in,
            ));
        };
        // Started replays are finished and recorded even after a shutdown:
        // an entry is marked only once its answer is in.
        while let Some(done) = in_flight.join_next().await {
            report.add(done);
        }
        result.map(|()| report)
    }

    /// Drains the queue again and again, waiting [`idle`](Self::idle)
    /// between drains, until `shutdown` completes. Returns the sum of the
    /// drains' reports.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<DrainReport, QueueError> {
        let shutdown = pin!(shutdown);
        let mut shutdown = Signal::new(shutdown);
        let mut total = DrainReport::default();
        while !shutdown.fired() {
            let report = self.drain(poll_fn(|cx| shutdown.poll(cx))).await?;
            total.merge(report);
            let _ = shutdown.or(tokio::time::sleep(self.idle)).await;
        }
        Ok(total)
    }

    /// Replays the entry `id` now, outside the rate and concurrency of
    /// [`drain`](Self::drain) (a person asked for it; failed entries do not
    /// wait for their retry time), and returns the entry as it stands
    /// afterwards: replayed, failed again with the failure in its history,
    /// discarded by [`max_age`](Self::max_age), or held back unsent for the
    /// same reasons as in a drain (body not kept; keyless, see
    /// [`replay_unkeyed`](Self::replay_unkeyed)). `None` when the entry is
    /// finished or held by another replayer's lease.
    pub async fn replay_one(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        let Some(lease) = self.queue.lease_one(id, self.lease).await? else {
            return Ok(None);
        };
        if self.settle_unsendable(&lease).await.is_none() {
            replay(
                self.queue.clone(),
                self.client.clone(),
                self.classifier.clone(),
                lease,
                self.retry_in,
            )
            .await;
        }
        self.queue.get(id).await
    }

    /// Settles an entry that must not be sent: too old, or without its body.
    async fn settle_unsendable(&self, lease: &Lease) -> Option<Settled> {
        let request = &lease.letter.request;
        let id = lease.letter.id;
        let too_old = self.max_age.is_some_and(|max_age| {
            SystemTime::now()
                .duration_since(request.at)
                .is_ok_and(|age| age > max_age)
        });
        if too_old {
            return Some(match self.queue.discard(id).await {
                Ok(()) => Settled::Expired,
                Err(error) => unrecorded(id, error),
            });
        }
        let why = match &request.body {
            super::KeptBody::NotKept(why) => format!("not replayable: {why}"),
            super::KeptBody::Kept(_) if self.replay_unkeyed || !may_repeat_an_effect(request) => {
                return None;
            }
            super::KeptBody::Kept(_) => "not replayed: it may have taken effect and has no \
                 idempotency key, so a replay could run it twice"
                .to_owned(),
        };
        let outcome = AttemptOutcome::Error(why);
        Some(
            match self.queue.fail(id, lease.token, outcome, NEVER).await {
                Ok(()) => Settled::NotReplayable,
                Err(error) => unrecorded(id, error),
            },
        )
    }
}

/// Whether sending `request` again could run it twice: it is not
/// idempotent, has no key, and the layer gave up because it may have been
/// processed (`not_safe`, or an unknown reconciliation) or without checking
/// (`disabled`). Any other give-up of such a request comes after attempts
/// that provably never reached the server, or the layer would have stopped
/// at the first with `not_safe`.
fn may_repeat_an_effect(request: &super::FailedRequest) -> bool {
    let view = RequestView::new(&request.method, &request.uri, &request.headers);
    request.idempotency_key.is_none()
        && !view.is_idempotent_method()
        && matches!(
            request.reason.as_str(),
            "not_safe" | "disabled" | "unreconciled"
        )
}

/// How one entry was settled.
enum Settled {
    Replayed,
    Failed,
    NotReplayable,
    Expired,
    Unrecorded,
}

impl DrainReport {
    fn add(&mut self, done: Result<Settled, tokio::task::JoinError>) {
        match done {
            Ok(Settled::Replayed) => {
                crate::telemetry::dead_letter("replayed");
                self.replayed += 1
            }
            Ok(Settled::Failed) => {
                crate::telemetry::dead_letter("failed_again");
                self.failed += 1
            }
            Ok(Settled::NotReplayable) => {
                crate::telemetry::dead_letter("not_replayable");
                self.not_replayable += 1
            }
            Ok(Settled::Expired) => {
                crate::telemetry::dead_letter("expired");
                self.expired += 1
            }
            // A replay task that panicked (in the client) recorded nothing;
            // its lease runs out and the entry is taken again.
            Ok(Settled::Unrecorded) | Err(_) => self.unrecorded += 1,
        }
    }

    fn merge(&mut self, other: DrainReport) {
        self.replayed += other.replayed;
        self.failed += other.failed;
        self.not_replayable += other.not_replayable;
        self.expired += other.expired;
        self.unrecorded += other.unrecorded;
        self.purged += other.purged;
    }
}

fn unrecorded(id: DeadLetterId, error: QueueError) -> Settled {
    tracing::error!(
        target: "tower_reissue::dead_letter",
        %id, %error, "replay not recorded; the entry will be leased again"
    );
    Settled::Unrecorded
}

/// Sends one leased entry and records its answer.
async fn replay<Q, S, C, B>(
    queue: Q,
    mut client: S,
    classifier: C,
    lease: Lease,
    retry_in: Duration,
) -> Settled
where
    Q: DeadLetterQueue,
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    C: Classifier,
{
    let id = lease.letter.id;
    let failed = lease.letter.request;
    let body = failed.body.bytes().cloned().unwrap_or_default();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = failed.method;
    *request.uri_mut() = failed.uri;
    *request.headers_mut() = failed.headers;
    if let Some(key) = failed.idempotency_key {
        if !request.headers().contains_key(IDEMPOTENCY_KEY) {
            match HeaderValue::try_from(key) {
                Ok(value) => {
                    request.headers_mut().insert(IDEMPOTENCY_KEY, value);
                }
                Err(_) => tracing::warn!(
                    target: "tower_reissue::dead_letter",
                    %id, "stored idempotency key is not a valid header value; replaying without it"
                ),
            }
        }
    }
    request.extensions_mut().insert(ReplayOf(id));
    let (method, uri, headers) = (
        request.method().clone(),
        request.uri().clone(),
        request.headers().clone(),
    );
    let answer: Result<Response<B>, BoxError> =
        match poll_fn(|cx| client.poll_ready(cx).map_err(Into::into)).await {
            Ok(()) => client.call(request).await.map_err(Into::into),
            Err(error) => Err(error),
        };
    let recorded = match &answer {
        Ok(response) => {
            let status = response.status();
            let verdict = classifier.classify(
                &RequestView::new(&method, &uri, &headers),
                &Outcome::Response {
                    status,
                    headers: response.headers(),
                },
            );
            match verdict {
                Verdict::Success | Verdict::Permanent => queue
                    .complete(id, lease.token, status)
                    .await
                    .map(|()| Settled::Replayed),
                Verdict::Transient { .. } | Verdict::Throttled { .. } => queue
                    .fail(id, lease.token, AttemptOutcome::Status(status), retry_in)
                    .await
                    .map(|()| Settled::Failed),
            }
        }
        Err(error) => {
            let outcome = AttemptOutcome::Error(error_text(&**error));
            queue
                .fail(id, lease.token, outcome, retry_in)
                .await
                .map(|()| Settled::Failed)
        }
    };
    recorded.unwrap_or_else(|error| unrecorded(id, error))
}

/// Waits for the next start the rate allows; false if `shutdown` came first.
async fn pace<F: Future<Output = ()>>(
    shutdown: &mut Signal<'_, F>,
    pacing: Option<&mut Interval>,
) -> bool {
    match pacing {
        Some(interval) => shutdown.or(interval.tick()).await.is_some(),
        None => true,
    }
}

/// A shutdown future, polled at most until it completes.
struct Signal<'a, F> {
    future: Pin<&'a mut F>,
    fired: bool,
}

impl<'a, F: Future<Output = ()>> Signal<'a, F> {
    fn new(future: Pin<&'a mut F>) -> Self {
        Signal {
            future,
            fired: false,
        }
    }

    fn fired(&self) -> bool {
        self.fired
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if !self.fired && self.future.as_mut().poll(cx).is_ready() {
            self.fired = true;
        }
        if self.fired {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// `work`'s output, or `None` if the signal fires first.
    async fn or<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if self.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

impl<Q: fmt::Debug, S, C: fmt::Debug> fmt::Debug for Replayer<Q, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("queue", &self.queue)
            .field("classifier", &self.classifier)
            .field("concurrency", &self.concurrency)
            .field("rate", &self.rate)
            .field("lease", &self.lease)
            .field("retry_in", &self.retry_in)
            .field("max_age", &self.max_age)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}
