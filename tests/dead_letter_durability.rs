//! Durability of `SqliteQueue` across a crash: a child process parks 1,000
//! requests during an outage and starts replaying them; the test SIGKILLs it
//! mid-drain, then opens the same file and drains the rest. Nothing is lost,
//! and behind `IdempotencyLayer` nothing takes effect twice.
//!
//! The child is this test binary run again with `CHILD_ENV` set: the test
//! `child_process` does its work then, and nothing otherwise.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_reissue::dead_letter::{
    AttemptOutcome, DeadLetterQueue, DeadLetterState, PageQuery, Replayer, SqliteQueue, StateKind,
};
use tower_reissue::{IdempotencyKeyLayer, IdempotencyLayer, MemoryStore, ReplayBody, RetryLayer};

const CHILD_ENV: &str = "TOWER_REISSUE_DURABILITY_CHILD";
const ENTRIES: u64 = 1000;
/// Short, so that the entries the killed child held are soon taken over.
const LEASE: Duration = Duration::from_millis(300);

#[derive(Clone, Default)]
struct Api {
    down: Arc<AtomicBool>,
    /// Side effects per idempotency key.
    effects: Arc<Mutex<HashMap<String, u32>>>,
}

impl Api {
    fn effects(&self) -> u64 {
        self.effects
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n))
            .sum()
    }
}

async fn send_email(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    *api.effects.lock().unwrap().entry(key).or_default() += 1;
    (StatusCode::CREATED, "sent")
}

/// The outage, in front of the idempotency layer so that no 503 is stored.
async fn outage(State(api): State<Api>, request: Request, next: Next) -> Response {
    if api.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    next.run(request).await
}

async fn recover(State(api): State<Api>) -> StatusCode {
    api.down.store(false, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn serve(api: Api) -> SocketAddr {
    let emails = Router::new()
        .route("/emails", post(send_email))
        .layer(IdempotencyLayer::new(MemoryStore::with_max_records(10_000)))
        .layer(middleware::from_fn_with_state(api.clone(), outage));
    let app = Router::new()
        .route("/recover", post(recover))
        .merge(emails)
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

type Client = tower_reissue::idempotency_key::SetIdempotencyKey<
    tower_reissue::Retry<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            ReplayBody<Full<Bytes>>,
        >,
        tower_reissue::DefaultClassifier,
    >,
>;

/// The application's client stack: a key per request, no retries of its
/// own (the queue is the retry), parking into `queue` if given one.
fn client(queue: Option<SqliteQueue>) -> Client {
    let mut retry = RetryLayer::new().max_attempts(1);
    if let Some(queue) = queue {
        retry = retry.dead_letters(queue);
    }
    ServiceBuilder::new()
        .layer(IdempotencyKeyLayer::new())
        .layer(retry)
        .service(common::client::<ReplayBody<Full<Bytes>>>())
}

fn replayer(queue: SqliteQueue) -> Replayer<SqliteQueue, Client> {
    Replayer::new(queue, client(None))
        .concurrency(8)
        .lease(LEASE)
        .retry_in(Duration::ZERO)
}

/// The child: parks `ENTRIES` requests while the API is down, ends the
/// outage, and drains until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(setup) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, addr) = setup.split_once('|').unwrap();
    let queue = SqliteQueue::open(path).await.unwrap();
    let client = client(Some(queue.clone()));
    for n in 0..ENTRIES {
        let request = http::Request::post(format!("http://{addr}/emails"))
            .body(Full::new(Bytes::from(format!("email {n}"))))
            .unwrap();
        let status = client.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    while queue.counts().await.unwrap().total() < ENTRIES {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("parked {ENTRIES}");
    let recovered = common::client::<Full<Bytes>>()
        .request(
            http::Request::post(format!("http://{addr}/recover"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(recovered.status(), StatusCode::NO_CONTENT);
    replayer(queue)
        .rate(1000, Duration::from_secs(1))
        .drain(std::future::pending())
        .await
        .unwrap();
    println!("drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_killed_midway_loses_nothing_and_duplicates_no_effect() {
    let api = Api::default();
    api.down.store(true, Ordering::SeqCst);
    let addr = serve(api.clone()).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dead-letters.sqlite");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{addr}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let parked = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.ends_with(&format!("parked {ENTRIES}")))
    });
    assert!(parked.await.unwrap(), "the child parked its requests");

    // Kill it once a good part of the drain has taken effect.
    let killed_at = tokio::time::timeout(Duration::from_secs(60), async {
        while api.effects() < ENTRIES / 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        api.effects()
    })
    .await
    .expect("the child's drain made progress");
    assert!(
        killed_at < ENTRIES,
        "killed mid-drain, after {killed_at} effects"
    );

    // A new process opens the file: every entry is there, replayed or not.
    let queue = SqliteQueue::open(&path).await.unwrap();
    let counts = queue.counts().await.unwrap();
    assert_eq!(counts.total(), ENTRIES, "0 lost: {counts}");
    eprintln!("killed after {killed_at} effects; the file then held {counts}");
    assert!(counts.state(StateKind::Replayed) < ENTRIES, "{counts}");
    assert!(
        counts.state(StateKind::Leased) <= 8,
        "at most one lease per slot: {counts}"
    );
    assert_eq!(
        counts.state(StateKind::Replayed)
            + counts.state(StateKind::Pending)
            + counts.state(StateKind::Leased),
        ENTRIES,
        "{counts}"
    );

    // Drain the rest; the killed child's leases run out and are taken over.
    let replayer = replayer(queue.clone());
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            replayer.drain(std::future::pending()).await.unwrap();
            if queue.counts().await.unwrap().state(StateKind::Replayed) == ENTRIES {
                break;
            }
            tokio::time::sleep(LEASE / 4).await;
        }
    })
    .await
    .expect("the rest is drained");

    let mut entries = Vec::new();
    let mut page = PageQuery::new(100);
    loop {
        let found = queue.page(&page).await.unwrap();
        entries.extend(found.entries);
        match found.next {
            Some(cursor) => page = page.after(cursor),
            None => break,
        }
    }
    assert_eq!(entries.len() as u64, ENTRIES);
    for entry in &entries {
        assert_eq!(
            entry.state,
            DeadLetterState::Replayed {
                status: StatusCode::CREATED
            }
        );
        // Marked once: a replay cut off by the kill recorded nothing.
        assert_eq!(entry.history.len(), 1, "{entry:?}");
        assert_eq!(
            entry.history[0].outcome,
            AttemptOutcome::Status(StatusCode::CREATED)
        );
    }
    let effects = api.effects.lock().unwrap();
    assert_eq!(effects.len() as u64, ENTRIES, "every parked email went out");
    assert!(effects.values().all(|&n| n == 1), "0 duplicate effects");
    let keys: std::collections::HashSet<_> = entries
        .iter()
        .map(|e| e.request.idempotency_key.clone().unwrap())
        .collect();
    assert_eq!(keys, effects.keys().cloned().collect());
    drop(effects);
    let _ = std::fs::remove_dir_all(&dir);
}
