//! `RedisQueue` against a real `redis-server` (see `redis_server`): the shared
//! queue conformance suite, through one connection and through two; typed
//! errors when Redis is gone; and two replayer processes sharing the queue,
//! one SIGKILLed mid-entry, replaying to an `IdempotencyLayer` server over
//! loopback HTTP.
//!
//! The replayers are this test binary run again with `REPLAYER_CHILD` set
//! (see [`replayer_child`]); they lease, send and complete through the
//! queue's own API. Time is real: leases are kept by Redis's clock.
#![cfg(feature = "redis")]

mod common;
mod dead_letter_conformance;
mod redis_server;

use std::collections::HashMap;
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
use http_body_util::{BodyExt, Full};
use redis::AsyncCommands;
use redis_server::RedisServer;
use tokio::sync::Notify;
use tower_reissue::dead_letter::{
    AttemptOutcome, DeadLetterId, DeadLetterQueue, DeadLetterState, FailedRequest, KeptBody,
    QueueError, RedisQueue, StateKind, from_millis, to_millis,
};
use tower_reissue::{IdempotencyLayer, MemoryStore};

use dead_letter_conformance::request;

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
    let deleted: usize = admin.del(format!("{prefix}:id")).await.unwrap();
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
const CHILD_LEASE_MS: &str = "REPLAYER_LEASE_MS";
/// Entries each replayer leases at a time.
const BATCH: usize = 5;
/// How long a replayer's lease lasts: what the survivor waits out.
const LEASE: Duration = Duration::from_millis(1000);
const ENTRIES: u32 = 30;
/// The request of replayer A during which it is killed.
const KILLED_AT: usize = 3;

/// The server: sends an email per request, behind `IdempotencyLayer`.
#[derive(Clone, Default)]
struct Mailer {
    /// Emails sent per idempotency key: the effects.
    sent: Arc<Mutex<HashMap<String, usize>>>,
    /// Every request that reached the server (replays included), in order:
    /// (replayer, key).
    seen: Arc<Mutex<Vec<(String, String)>>>,
    /// Requests from replayer A that reached the handler.
    from_a: Arc<AtomicUsize>,
    /// Signalled when A's `KILLED_AT`th request has had its effect.
    mid_entry: Arc<Notify>,
    /// Opened by the test once A is dead, so that request's answer is stored.
    gate: Arc<Notify>,
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
        && mailer.from_a.fetch_add(1, Ordering::SeqCst) + 1 == KILLED_AT
    {
        mailer.mid_entry.notify_one();
        mailer.gate.notified().await;
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
struct Replayer {
    child: Child,
    /// `(id, lease end)` of every entry it leased, as it reported them.
    leased: std::sync::mpsc::Receiver<(DeadLetterId, SystemTime)>,
}

impl Replayer {
    fn spawn(name: &str, url: &str, prefix: &str) -> Replayer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["replayer_child", "--exact", "--nocapture"])
            .env(CHILD, name)
            .env(CHILD_URL, url)
            .env(CHILD_PREFIX, prefix)
            .env(CHILD_LEASE_MS, LEASE.as_millis().to_string())
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
        Replayer { child, leased }
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

    // A takes the first batch before B starts, so its leases are known.
    let mut a = Replayer::spawn("A", server.url(), &prefix);
    let a_leased: Vec<(DeadLetterId, SystemTime)> = (0..BATCH)
        .map(|_| a.leased.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert_eq!(
        a_leased.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ids[..BATCH]
    );
    let mut b = Replayer::spawn("B", server.url(), &prefix);

    // A's third email is sent, its answer not yet given: kill A there.
    tokio::time::timeout(Duration::from_secs(30), mailer.mid_entry.notified())
        .await
        .expect("replayer A reached its third entry");
    a.child.kill().unwrap();
    let status = a.child.wait().unwrap();
    assert!(!status.success(), "A was killed, it did not finish");
    let killed = ids[KILLED_AT - 1];
    assert_ne!(
        queue.get(killed).await.unwrap().unwrap().state.kind(),
        StateKind::Replayed,
        "the entry A died on is not done: its answer never reached the queue"
    );
    mailer.gate.notify_one();

    let b_status = tokio::task::spawn_blocking(move || b.child.wait().unwrap())
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
            "effects of {}",
            key_of(*id)
        );
    }
    assert_eq!(sent.values().sum::<usize>(), ENTRIES as usize);

    // A reached the server with its first three entries only; B replayed the
    // one A died on (answered from the idempotency store: no second email)
    // and the two A had not started, each only after A's lease ran out.
    let seen = mailer.seen.lock().unwrap().clone();
    let from = |replayer: &str| -> Vec<String> {
        seen.iter()
            .filter(|(r, _)| r == replayer)
            .map(|(_, key)| key.clone())
            .collect()
    };
    assert_eq!(
        from("A"),
        ids[..KILLED_AT]
            .iter()
            .map(|id| key_of(*id))
            .collect::<Vec<_>>()
    );
    let from_b = from("B");
    for (id, a_until) in &a_leased[KILLED_AT - 1..] {
        assert!(from_b.contains(&key_of(*id)), "B replayed {}", key_of(*id));
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
    assert!(
        from_b
            .iter()
            .all(|key| key != &key_of(ids[0]) && key != &key_of(ids[1])),
        "what A completed is not replayed again"
    );
}

/// The replayer process of the test above; does nothing unless run as one.
///
/// Leases `BATCH` entries at a time and reports each (`leased {id}
/// {until_ms}` on stdout) before sending any, sends them one by one with
/// their idempotency key and an `x-replayer` header, completes on a 2xx and
/// fails (retry in 50 ms) otherwise, and exits once nothing is pending,
/// leased or failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayer_child() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let queue = queue_at(&var(CHILD_URL), &var(CHILD_PREFIX)).await;
    let lease = Duration::from_millis(var(CHILD_LEASE_MS).parse().unwrap());
    let client = common::client::<Full<Bytes>>();
    loop {
        let batch = queue.lease(BATCH, lease).await.unwrap();
        if batch.is_empty() {
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
            continue;
        }
        for lease in &batch {
            if let DeadLetterState::Leased { until } = lease.letter.state {
                println!("leased {} {}", lease.letter.id, to_millis(until));
            }
        }
        for lease in batch {
            let letter = &lease.letter.request;
            let mut request = Request::builder()
                .method(letter.method.clone())
                .uri(letter.uri.clone())
                .body(Full::new(letter.body.bytes().unwrap().clone()))
                .unwrap();
            *request.headers_mut() = letter.headers.clone();
            let headers = request.headers_mut();
            if let Some(key) = &letter.idempotency_key {
                headers.insert("idempotency-key", key.parse().unwrap());
            }
            headers.insert("x-replayer", name.parse().unwrap());
            let id = lease.letter.id;
            let outcome = match client.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    if status.is_success() {
                        Ok(status)
                    } else {
                        Err(AttemptOutcome::Status(status))
                    }
                }
                Err(err) => Err(AttemptOutcome::Error(err.to_string())),
            };
            let recorded = match outcome {
                Ok(status) => queue.complete(id, lease.token, status).await,
                Err(outcome) => {
                    queue
                        .fail(id, lease.token, outcome, Duration::from_millis(50))
                        .await
                }
            };
            match recorded {
                Ok(()) | Err(QueueError::LeaseLost) => {}
                Err(err) => panic!("recording the replay of {id}: {err}"),
            }
        }
    }
}
