//! `RedisQueue` against a real `redis-server` (see `redis_server`): the shared
//! queue conformance suite, through one connection and through two; typed
//! errors when Redis is gone; and two replayer processes sharing the queue,
//! one SIGKILLed mid-entry, replaying to an `IdempotencyLayer` server over
//! loopback HTTP.
//!
//! The replayers are this test binary run again with `REPLAYER_CHILD` set
//! (see [`replayer_child`]), each a `Replayer` sending through a hyper
//! client. Time is real: leases are kept by Redis's clock.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use redis::AsyncCommands;
use redis_server::RedisServer;
use tokio::sync::Semaphore;
use tower_reissue::dead_letter::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, DeadLetterState,
    FailedRequest, KeptBody, Lease, LeaseToken, Page, PageQuery, QueueError, RedisQueue, Replayer,
    StateKind, from_millis, to_millis,
};
use tower_reissue::{IdempotencyLayer, MemoryStore};

use tower_reissue::conformance::queue::{self as dead_letter_conformance, request};

/// A prefix no other test uses, so tests can share a server.
fn unique_prefix() -> String {
    format!("test-dl-{}", uuid::Uuid::new_v4())
}

async fn queue_at(url: &str, prefix: &str) -> RedisQueue {
    RedisQueue::connect(url)
        .await
        .expect("connect to redis")
        .prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_meets_the_contract() {
    let server = RedisServer::shared();
    dead_letter_conformance::check_contract(|| async {
        queue_at(server.url(), &unique_prefix()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_on_one_queue_never_share_a_lease() {
    // Two connections, as two instances would have.
    let server = RedisServer::shared();
    dead_letter_conformance::check_contract(|| async {
        let prefix = unique_prefix();
        dead_letter_conformance::Either::new(
            queue_at(server.url(), &prefix).await,
            queue_at(server.url(), &prefix).await,
        )
    })
    .await;
}

#[tokio::test]
async fn a_lost_id_counter_never_reuses_an_id() {
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let queue = queue_at(server.url(), &prefix).await;
    let mut ids = Vec::new();
    for tag in 0..3 {
        ids.push(
            queue
                .push(request("api.example", "deadline", tag))
                .await
                .unwrap(),
        );
    }
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deleted: usize = admin.del(format!("{{{prefix}}}:id")).await.unwrap();
    assert_eq!(deleted, 1, "the counter is where the docs say");

    let next = queue
        .push(request("api.example", "deadline", 9))
        .await
        .unwrap();
    assert!(next > ids[2], "{next} after {}", ids[2]);
    assert_eq!(
        queue.get(ids[0]).await.unwrap().unwrap().request,
        request("api.example", "deadline", 0)
    );
    assert_eq!(queue.counts().await.unwrap().total(), 4);
}

#[tokio::test]
async fn limits_beyond_any_queue_mean_everything() {
    let server = RedisServer::shared();
    let queue = queue_at(server.url(), &unique_prefix()).await;
    for tag in 0..3 {
        queue
            .push(request("api.example", "deadline", tag))
            .await
            .unwrap();
    }
    let page = queue.page(&PageQuery::new(usize::MAX)).await.unwrap();
    assert_eq!((page.entries.len(), page.next), (3, None));
    let leases = queue.lease(usize::MAX, Duration::MAX).await.unwrap();
    assert_eq!(leases.len(), 3);
    assert!(matches!(
        leases[0].letter.state,
        DeadLetterState::Leased { until } if until > SystemTime::now() + Duration::from_secs(1 << 40)
    ));
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    let mut server = RedisServer::start();
    let queue = queue_at(server.url(), &unique_prefix())
        .await
        .timeout(Duration::from_millis(500));
    let id = queue
        .push(request("api.example", "not_safe", 1))
        .await
        .unwrap();
    server.stop();

    let err = queue.get(id).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
    let err = queue
        .push(request("api.example", "not_safe", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
    assert!(err.to_string().starts_with("dead-letter queue unavailable"));
}

// ---------- two replayers, one killed ----------

const CHILD: &str = "REPLAYER_CHILD";
const CHILD_URL: &str = "REPLAYER_REDIS_URL";
const CHILD_PREFIX: &str = "REPLAYER_PREFIX";
/// How long a replayer's lease lasts: what the survivor waits out.
const LEASE: Duration = Duration::from_millis(1000);
/// Replays each replayer has in flight.
const CONCURRENCY: usize = 3;
const ENTRIES: u32 = 40;
/// How many of A's replays are answered before A hangs and is killed.
const A_ANSWERED: usize = 2;

/// The server: sends an email per request, behind `IdempotencyLayer`.
#[derive(Clone)]
struct Mailer {
    /// Emails sent per idempotency key: the effects.
    sent: Arc<Mutex<HashMap<String, usize>>>,
    /// Every request that reached the server (replays included), in order:
    /// (replayer, key).
    seen: Arc<Mutex<Vec<(String, String)>>>,
    /// Requests from replayer A that reached the handler.
    from_a: Arc<AtomicUsize>,
    /// A permit per request of A's held mid-entry (its email sent, its
    /// answer not given).
    held: Arc<Semaphore>,
    /// Opened by the test once A is dead, so the held requests' answers are
    /// stored.
    gate: Arc<Semaphore>,
}

impl Default for Mailer {
    fn default() -> Self {
        Mailer {
            sent: Arc::default(),
            seen: Arc::default(),
            from_a: Arc::default(),
            held: Arc::new(Semaphore::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn send_email(State(mailer): State<Mailer>, headers: HeaderMap) -> impl IntoResponse {
    let key = header(&headers, "idempotency-key");
    *mailer.sent.lock().unwrap().entry(key.clone()).or_default() += 1;
    if header(&headers, "x-replayer") == "A"
        && mailer.from_a.fetch_add(1, Ordering::SeqCst) >= A_ANSWERED
    {
        mailer.held.add_permits(1);
        let _open = mailer.gate.acquire().await.unwrap();
    }
    (StatusCode::CREATED, format!("sent {key}"))
}

async fn serve(mailer: &Mailer) -> std::net::SocketAddr {
    let seen = mailer.seen.clone();
    let app = Router::new()
        .route("/emails", post(send_email))
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        // Outside the idempotency layer: counts replays answered from the
        // store too.
        .layer(tower::util::MapRequestLayer::new(
            move |request: Request<axum::body::Body>| {
                let headers = request.headers();
                seen.lock().unwrap().push((
                    header(headers, "x-replayer"),
                    header(headers, "idempotency-key"),
                ));
                request
            },
        ))
        .with_state(mailer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A replayer process: this binary running only [`replayer_child`].
struct ReplayerProcess {
    child: Child,
    /// `(id, lease end)` of every entry it leased, as it reported them.
    leased: std::sync::mpsc::Receiver<(DeadLetterId, SystemTime)>,
}

impl ReplayerProcess {
    fn spawn(name: &str, url: &str, prefix: &str) -> ReplayerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["replayer_child", "--exact", "--nocapture"])
            .env(CHILD, name)
            .env(CHILD_URL, url)
            .env(CHILD_PREFIX, prefix)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (report, leased) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("leased ") {
                    let (id, until) = rest.split_once(' ').unwrap();
                    let _ = report.send((
                        DeadLetterId::new(id.parse().unwrap()),
                        from_millis(until.parse().unwrap()),
                    ));
                }
            }
        });
        ReplayerProcess { child, leased }
    }
}

impl ReplayerProcess {
    /// Waits for the process to end by itself; panics if it has not in `limit`.
    fn exit_within(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replayer did not finish within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ReplayerProcess {
    /// A failing test leaves no replayer behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_one_killed_mid_entry_replay_every_entry_once() {
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let queue = queue_at(server.url(), &prefix).await;
    let mailer = Mailer::default();
    let addr = serve(&mailer).await;

    let mut ids = Vec::new();
    for n in 0..ENTRIES {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        ids.push(
            queue
                .push(FailedRequest {
                    at: SystemTime::now(),
                    method: Method::POST,
                    uri: format!("http://{addr}/emails").parse().unwrap(),
                    headers,
                    body: KeptBody::Kept(Bytes::from(format!(r#"{{"to":"user-{n}"}}"#))),
                    idempotency_key: Some(format!("email-{n}")),
                    reason: "budget_exhausted".into(),
                    attempts: 2,
                    last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
                })
                .await
                .unwrap(),
        );
    }
    let key_of = |id: DeadLetterId| format!("email-{}", id.get() - ids[0].get());

    // A starts first so that it surely holds entries when it dies; then both
    // replay side by side.
    let mut a = ReplayerProcess::spawn("A", server.url(), &prefix);
    let mut a_leased = vec![a.leased.recv_timeout(Duration::from_secs(30)).unwrap()];
    let b = ReplayerProcess::spawn("B", server.url(), &prefix);

    // A has its first two replays answered, then its next ones reach the
    // server and send their emails, but their answers are held: A is killed
    // with all its replays mid-entry.
    tokio::time::timeout(
        Duration::from_secs(30),
        mailer.held.acquire_many(CONCURRENCY as u32),
    )
    .await
    .expect("replayer A has its replays in flight")
    .unwrap()
    .forget();
    a.child.kill().unwrap();
    assert!(!a.child.wait().unwrap().success(), "A was killed");
    // Its pipe is closed now: every lease it reported is in.
    a_leased.extend(a.leased.iter());
    mailer.gate.add_permits(ENTRIES as usize);

    let b_status = tokio::task::spawn_blocking(move || b.exit_within(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(b_status.success(), "B drained the queue");

    // Every entry replayed, every email sent exactly once.
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        counts.state(StateKind::Replayed),
        u64::from(ENTRIES),
        "{counts}"
    );
    assert_eq!(counts.total(), u64::from(ENTRIES));
    let sent = mailer.sent.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            sent.get(&key_of(*id)),
            Some(&1),
            "emails sent for {}",
            key_of(*id)
        );
    }
    assert_eq!(sent.values().sum::<usize>(), ENTRIES as usize);

    // A sent every entry it leased, and no more: the two answered, then as
    // many as it may have in flight. B replayed every other entry, among
    // them the ones A died on (answered from the idempotency store: no
    // second email), each only after A's lease ran out; what A finished was
    // not sent again.
    let seen = mailer.seen.lock().unwrap().clone();
    let from = |replayer: &str| -> Vec<String> {
        seen.iter()
            .filter(|(r, _)| r == replayer)
            .map(|(_, key)| key.clone())
            .collect()
    };
    let from_a = from("A");
    let from_b = from("B");
    assert_eq!(from_a.len(), A_ANSWERED + CONCURRENCY, "{from_a:?}");
    let mut leased_keys: Vec<String> = a_leased.iter().map(|(id, _)| key_of(*id)).collect();
    leased_keys.sort();
    let mut sent_keys = from_a.clone();
    sent_keys.sort();
    assert_eq!(leased_keys, sent_keys, "A sent exactly what it leased");
    for (id, a_until) in &a_leased {
        if from_a[..A_ANSWERED].contains(&key_of(*id)) {
            continue;
        }
        let entry = queue.get(*id).await.unwrap().unwrap();
        assert_eq!(
            entry.state,
            DeadLetterState::Replayed {
                status: StatusCode::CREATED
            }
        );
        let replayed_at = entry.history.last().unwrap().at;
        assert!(
            replayed_at >= *a_until,
            "entry {id} replayed at {} before A's lease ended at {}",
            to_millis(replayed_at),
            to_millis(*a_until)
        );
    }
    let b_keys: HashSet<String> = from_b.iter().cloned().collect();
    let not_finished_by_a: HashSet<String> = ids
        .iter()
        .map(|id| key_of(*id))
        .filter(|key| !from_a[..A_ANSWERED].contains(key))
        .collect();
    assert_eq!(b_keys, not_finished_by_a);
}

/// A queue that reports every lease it takes on stdout, `leased {id}
/// {until_ms}`, for the test process to read.
#[derive(Clone)]
struct Reporting(RedisQueue);

impl DeadLetterQueue for Reporting {
    async fn push(&self, request: FailedRequest) -> Result<DeadLetterId, QueueError> {
        self.0.push(request).await
    }
    async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        let leases = self.0.lease(max, lease).await?;
        leases.iter().for_each(report);
        Ok(leases)
    }
    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let lease = self.0.lease_one(id, lease).await?;
        lease.iter().for_each(report);
        Ok(lease)
    }
    async fn complete(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        status: StatusCode,
    ) -> Result<(), QueueError> {
        self.0.complete(id, token, status).await
    }
    async fn fail(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> Result<(), QueueError> {
        self.0.fail(id, token, outcome, retry_in).await
    }
    async fn discard(&self, id: DeadLetterId) -> Result<(), QueueError> {
        self.0.discard(id).await
    }
    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        self.0.get(id).await
    }
    async fn page(&self, query: &PageQuery) -> Result<Page, QueueError> {
        self.0.page(query).await
    }
    async fn counts(&self) -> Result<Counts, QueueError> {
        self.0.counts().await
    }
    async fn purge(&self, before: SystemTime) -> Result<u64, QueueError> {
        self.0.purge(before).await
    }
}

fn report(lease: &Lease) {
    if let DeadLetterState::Leased { until } = lease.letter.state {
        println!("leased {} {}", lease.letter.id, to_millis(until));
    }
}

/// The replayer process of the test above; does nothing unless run as one.
///
/// A `Replayer` over the shared queue, sending through a hyper client that
/// marks each request with `x-replayer: {name}`; it runs until nothing is
/// pending, leased or failed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayer_child() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let queue = queue_at(&var(CHILD_URL), &var(CHILD_PREFIX)).await;
    let marker = HeaderValue::from_str(&name).unwrap();
    let client = tower::ServiceBuilder::new()
        .map_request(move |mut request: Request<Full<Bytes>>| {
            request.headers_mut().insert("x-replayer", marker.clone());
            request
        })
        .service(common::client::<Full<Bytes>>());
    let replayer = Replayer::new(Reporting(queue.clone()), client)
        .concurrency(CONCURRENCY)
        .lease(LEASE)
        .retry_in(Duration::from_millis(100))
        .idle(Duration::from_millis(25));
    let done = async {
        loop {
            let counts = queue.counts().await.unwrap();
            let open = [
                StateKind::Pending,
                StateKind::Leased,
                StateKind::FailedAgain,
            ];
            if open.iter().all(|state| counts.state(*state) == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let report = replayer.run(done).await.unwrap();
    println!("{report:?}");
}
