//! IdempotencyLayer with `RedisStore` over real HTTP: axum apps on
//! 127.0.0.1:0 sharing a `redis-server` (see `redis_server`). Time is real
//! here (Redis keeps its own clock); waits are short and bounded.
#![cfg(feature = "redis")]

mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower_reissue::idempotency::store::RecordKey;
use tower_reissue::{IdempotencyLayer, RedisStore};

// ---------- harness ----------

#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    /// When set, each run waits for `notify_one` before answering.
    gate: Option<Arc<Notify>>,
    delay: Duration,
    instance: &'static str,
}

impl Handler {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Charges a card: answers 201 with headers and a body unique to this run,
/// so a second run could not pass for a replay.
async fn charge(State(handler): State<Handler>) -> impl IntoResponse {
    let run = handler.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(gate) = &handler.gate {
        gate.notified().await;
    }
    tokio::time::sleep(handler.delay).await;
    (
        StatusCode::CREATED,
        [
            ("x-charge-run", run.to_string()),
            ("x-served-by", handler.instance.to_owned()),
            ("cache-control", "no-store".to_owned()),
        ],
        format!(
            r#"{{"charge":"{}","run":{run}}}"#,
            uuid::Uuid::new_v4().simple()
        ),
    )
}

async fn failing(State(handler): State<Handler>) -> StatusCode {
    handler.runs.fetch_add(1, Ordering::SeqCst);
    StatusCode::INTERNAL_SERVER_ERROR
}

struct App {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn serve(handler: &Handler, layer: IdempotencyLayer<RedisStore>) -> App {
    let app = Router::new()
        .route("/charges", post(charge))
        .route("/failing", post(failing))
        .layer(layer)
        .with_state(handler.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    App { addr, task }
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The headers a replay must reproduce: all but the per-transfer `date`
    /// and the replay marker.
    fn result_headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(name, _)| *name != "date" && *name != "idempotent-replayed")
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        headers.sort();
        headers
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    key: &str,
) -> Reply {
    let request = Request::post(format!("http://{addr}{path}"))
        .header("idempotency-key", key)
        .header("authorization", "Bearer shop-1")
        .body(Full::new(Bytes::from_static(br#"{"amount":1200}"#)))
        .unwrap();
    // Bounded: a request that hangs fails the test instead of stalling it.
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("no answer within 10 s")
        .expect("the server answered");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(server.url())
        .await
        .expect("connect to redis")
        .prefix(format!("http-{}", uuid::Uuid::new_v4()))
}

// ---------- many instances ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_run_a_key_once() {
    let server = RedisServer::shared();
    let prefix = format!("http-{}", uuid::Uuid::new_v4());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut apps = Vec::new();
    for instance in ["a", "b"] {
        // Each instance has its own connection, as separate processes would.
        let store = RedisStore::connect(server.url())
            .await
            .unwrap()
            .prefix(&prefix);
        let handler = Handler {
            runs: runs.clone(),
            delay: Duration::from_millis(300),
            instance,
            ..Handler::default()
        };
        let layer = IdempotencyLayer::new(store).wait_for_result(Duration::from_secs(10));
        apps.push(serve(&handler, layer).await);
    }

    let client = client();
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let (client, addr) = (client.clone(), apps[i % 2].addr);
            tokio::spawn(async move { (addr, send(&client, addr, "/charges", "charge-42").await) })
        })
        .collect();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.unwrap());
    }

    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler ran once in total"
    );
    let (first_addr, first) = replies
        .iter()
        .find(|(_, reply)| !reply.replayed())
        .cloned()
        .expect("one reply is the original");
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(replies.iter().filter(|(_, r)| r.replayed()).count(), 199);
    for (addr, reply) in &replies {
        assert_eq!(reply.status, first.status, "from {addr}");
        assert_eq!(
            reply.result_headers(),
            first.result_headers(),
            "from {addr}"
        );
        assert_eq!(reply.body, first.body, "from {addr}");
    }

    // Afterwards, the instance that did not run it replays it identically.
    let other = apps.iter().find(|app| app.addr != first_addr).unwrap();
    let replay = send(&client, other.addr, "/charges", "charge-42").await;
    assert!(replay.replayed());
    assert_eq!(replay.status, first.status);
    assert_eq!(replay.result_headers(), first.result_headers());
    assert_eq!(replay.body, first.body);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

// ---------- outage ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers_without_a_restart() {
    let mut server = RedisServer::start();
    let gate = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        instance: "a",
        ..Handler::default()
    };
    let layer =
        IdempotencyLayer::new(store(&server).await).store_retry_after(Duration::from_secs(3));
    let app = serve(&handler, layer).await;
    let client = client();

    gate.notify_one();
    let before = send(&client, app.addr, "/charges", "before").await;
    assert_eq!(before.status, StatusCode::CREATED);

    // Redis dies while a request is running: its caller still gets the
    // handler's answer (the result just cannot be stored).
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, app.addr, "/charges", "mid-run").await })
    };
    while handler.runs() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.stop();
    gate.notify_one();
    assert_eq!(in_flight.await.unwrap().status, StatusCode::CREATED);
    let runs_when_down = handler.runs();

    // While it is down, keyed requests fail closed, fast, and never run.
    let mut slowest = Duration::ZERO;
    for key in ["down-1", "down-2", "down-3", "before"] {
        let started = Instant::now();
        let reply = send(&client, app.addr, "/charges", key).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{key}");
        assert_eq!(reply.headers["retry-after"], "3");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
        let problem: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("#store-unavailable")
        );
        slowest = slowest.max(started.elapsed());
        assert!(slowest < Duration::from_secs(4), "{key} took {slowest:?}");
    }
    assert_eq!(handler.runs(), runs_when_down);

    // Redis comes back (empty, as it kept nothing on disk); the same server
    // process reconnects on its own.
    server.restart();
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        gate.notify_one();
        let reply = send(&client, app.addr, "/charges", "after").await;
        if reply.status == StatusCode::CREATED {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "no recovery within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(handler.runs(), runs_when_down + 1);
    println!(
        "outage: slowest 503 {slowest:?}; first success {:?} after restart",
        restarted.elapsed()
    );
    let replay = send(&client, app.addr, "/charges", "after").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, after.body);
    assert_eq!(handler.runs(), runs_when_down + 1);
    assert!(!app.task.is_finished(), "the server kept running");
}

// ---------- round trips ----------

/// Watches every command a private Redis runs, through `MONITOR`.
struct Monitor {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    admin: redis::aio::MultiplexedConnection,
    marks: usize,
}

/// One client command as MONITOR shows it (commands run by scripts are not
/// round trips and are left out).
#[derive(Debug, Clone, PartialEq)]
struct Command {
    name: String,
    script: Option<String>,
}

impl Monitor {
    async fn start(server: &RedisServer) -> Monitor {
        let client = redis::Client::open(server.url()).unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .unwrap();
        stream.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "+OK");
        Monitor {
            lines,
            admin: client.get_multiplexed_async_connection().await.unwrap(),
            marks: 0,
        }
    }

    /// The client commands since the last call, and the `EVALSHA` count of
    /// `INFO commandstats` over the same span.
    async fn take(&mut self) -> (Vec<Command>, u64) {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.admin)
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.admin)
            .await
            .unwrap();
        let evalsha = stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap());

        // MONITOR is ordered: everything before this marker has been logged.
        self.marks += 1;
        let marker = format!("round-trip-mark-{}", self.marks);
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.admin)
            .await
            .unwrap();
        let mut commands = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
                .await
                .expect("MONITOR went quiet")
                .unwrap()
                .unwrap();
            if line.contains(&marker) {
                break;
            }
            // `+1700000000.000000 [0 127.0.0.1:5555] "EVALSHA" "sha" ...`;
            // commands run inside a script show `[0 lua]`.
            let (source, args) = line.split_once(']').unwrap();
            if source.ends_with(" lua") {
                continue;
            }
            let args: Vec<&str> = args.split('"').skip(1).step_by(2).collect();
            let name = args[0].to_ascii_uppercase();
            if ["INFO", "CONFIG", "ECHO"].contains(&name.as_str()) {
                continue; // this monitor's own
            }
            commands.push(Command {
                script: (name == "EVALSHA").then(|| args[1].to_owned()),
                name,
            });
        }
        (commands, evalsha)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_request() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let gate = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        instance: "a",
        ..Handler::default()
    };
    let app = serve(&handler, IdempotencyLayer::new(store.clone())).await;
    let slow_handler = Handler {
        delay: Duration::from_millis(450),
        instance: "a",
        ..Handler::default()
    };
    let short_lease = IdempotencyLayer::new(store).lease(Duration::from_millis(300));
    let slow = serve(&slow_handler, short_lease).await;
    let client = client();
    let mut monitor = Monitor::start(&server).await;
    monitor.take().await;

    // Cold: Redis does not know the scripts yet; each is loaded once.
    gate.notify_one();
    send(&client, app.addr, "/charges", "cold").await;
    let (cold, _) = monitor.take().await;
    let names: Vec<_> = cold.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "EVALSHA", "SCRIPT", "EVALSHA", "EVALSHA", "SCRIPT", "EVALSHA"
        ]
    );

    // The other scripts' first use (release, renew) loads them too; from
    // here on every script is known, as on a long-running Redis.
    send(&client, app.addr, "/failing", "cold-release").await;
    send(&client, slow.addr, "/charges", "cold-renew").await;
    monitor.take().await;

    // First execution: claim + complete.
    gate.notify_one();
    let first = send(&client, app.addr, "/charges", "k1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let (commands, evalsha) = monitor.take().await;
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(evalsha, 2);
    let (claim, complete) = (commands[0].clone(), commands[1].clone());
    assert!(claim.script.is_some() && complete.script.is_some());
    assert_ne!(claim, complete);
    assert_eq!(&cold[0], &claim);

    // Replay: one claim, which returns the stored response.
    let replay = send(&client, app.addr, "/charges", "k1").await;
    assert!(replay.replayed());
    let (commands, evalsha) = monitor.take().await;
    assert_eq!(commands, std::slice::from_ref(&claim));
    assert_eq!(evalsha, 1);

    // A duplicate of a running request: one claim, then 409. The running
    // request's completion is one more.
    let runs_before = handler.runs();
    let running = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, app.addr, "/charges", "k2").await })
    };
    while handler.runs() == runs_before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    monitor.take().await;
    let conflict = send(&client, app.addr, "/charges", "k2").await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let (commands, _) = monitor.take().await;
    assert_eq!(commands, std::slice::from_ref(&claim));
    gate.notify_one();
    assert_eq!(running.await.unwrap().status, StatusCode::CREATED);
    let (commands, _) = monitor.take().await;
    assert_eq!(commands, std::slice::from_ref(&complete));

    // A 5xx: claim + release.
    let failed = send(&client, app.addr, "/failing", "k3").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let (commands, evalsha) = monitor.take().await;
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(evalsha, 2);
    assert_eq!(commands[0], claim);
    let release = commands[1].clone();
    assert!(release != claim && release != complete);

    // A handler that outlives the renewal interval (a third of the lease):
    // claim, renewals, complete.
    let slow_reply = send(&client, slow.addr, "/charges", "k4").await;
    assert_eq!(slow_reply.status, StatusCode::CREATED);
    let (commands, evalsha) = monitor.take().await;
    assert_eq!(evalsha as usize, commands.len());
    let renewals = &commands[1..commands.len() - 1];
    assert_eq!(commands.first(), Some(&claim));
    assert_eq!(commands.last(), Some(&complete));
    assert!(!renewals.is_empty(), "{commands:?}");
    let renew = &renewals[0];
    assert!(renew.script.is_some() && ![&claim, &complete, &release].contains(&renew));
    assert!(renewals.iter().all(|c| c == renew), "{commands:?}");
    println!(
        "round trips: cold first execution {}, first execution 2, replay 1, 409 1, \
         5xx 2, 450 ms handler with 300 ms lease {} ({} renewals)",
        cold.len(),
        commands.len(),
        renewals.len()
    );
}

// ---------- Redis restarts and replicas ----------

/// Sends `key` through a retrying client, as a caller would: a 503 (store
/// unreachable) or a 409 (a first delivery still in flight) is retried
/// with the same key until an answer comes.
async fn send_retrying(addr: SocketAddr, key: String) -> StatusCode {
    use tower::{Layer, ServiceExt};
    use tower_reissue::{Backoff, DefaultClassifier, ReplayBody, RetryLayer};
    let client: Client<HttpConnector, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let retrying = RetryLayer::new()
        .classifier(DefaultClassifier::new().retry_status(StatusCode::CONFLICT))
        .max_attempts(200)
        .no_budget()
        .backoff(Backoff::fixed(Duration::from_millis(50)))
        .deadline(Duration::from_secs(60))
        .layer(client);
    let request = Request::post(format!("http://{addr}/charges"))
        .header("idempotency-key", key)
        .header("authorization", "Bearer shop-1")
        .body(Full::new(Bytes::from_static(br#"{"amount":1200}"#)))
        .unwrap();
    retrying.oneshot(request).await.unwrap().status()
}

// A killed process leaves its writes in the OS's page cache, so this shows
// what the append-only file keeps over a crash of Redis (without it, the
// same run repeats keys), not what `fsync` keeps over a power loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_and_restarted_with_the_append_only_file_loses_no_key() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let handler = Handler::default();
    // A short lease: a claim whose holder never learnt it was acquired (the
    // reply died with Redis) blocks its key only this long.
    let layer = |store: RedisStore| {
        IdempotencyLayer::new(store)
            .lease(Duration::from_secs(3))
            .store_retry_after(Duration::from_millis(100))
            .conflict_retry_after(Duration::from_millis(100))
    };
    // One prefix, one connection per instance.
    let prefix = format!("restart-{}", uuid::Uuid::new_v4());
    let store = || async {
        RedisStore::connect(server.url())
            .await
            .expect("connect to redis")
            .prefix(&prefix)
    };
    let apps = [
        serve(&handler, layer(store().await)).await,
        serve(&handler, layer(store().await)).await,
    ];
    let (a, b) = (apps[0].addr, apps[1].addr);

    // Every operation is delivered twice, once to each instance, the second
    // a little later: 4,000 requests for 2,000 keys, 32 operations at a time.
    let ops = 2_000;
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..ops {
        let (limit, started) = (limit.clone(), started.clone());
        let (first, second) = if i % 2 == 0 { (a, b) } else { (b, a) };
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            started.fetch_add(1, Ordering::SeqCst);
            let key = format!("charge-{i}");
            let duplicate = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                send_retrying(second, format!("charge-{i}")).await
            });
            let statuses = [send_retrying(first, key).await, duplicate.await.unwrap()];
            assert_eq!(statuses, [StatusCode::CREATED; 2], "charge-{i}");
        }));
    }
    // Mid-run, Redis dies without warning and comes back from its files.
    while started.load(Ordering::SeqCst) < ops / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        handler.runs(),
        ops,
        "duplicate executions: {}",
        handler.runs() - ops
    );
}

/// The replica's `INFO replication` field `name`.
async fn replication_field(url: &str, name: &str) -> String {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_replicas_a_completion_is_on_the_replica_before_the_answer() {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while replication_field(replica.url(), "master_link_status").await != "up" {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prefix = format!("wait-{}", uuid::Uuid::new_v4());
    let store = RedisStore::connect(primary.url())
        .await
        .unwrap()
        .prefix(prefix.clone())
        .wait_for_replicas(1, Duration::from_millis(500));
    let handler = Handler::default();
    let names = store.clone();
    let app = serve(&handler, IdempotencyLayer::new(store)).await;
    let client = client();
    let mut on_replica = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    for i in 0..20 {
        let key = format!("k-{i}");
        let reply = send(&client, app.addr, "/charges", &key).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        // Read at once, before any asynchronous replication could catch up.
        let record = names.key_of(&RecordKey::new(principal_of("Bearer shop-1"), &key));
        let outcome: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&record)
            .arg("outcome")
            .query_async(&mut on_replica)
            .await
            .unwrap();
        assert!(outcome.is_some(), "{record} is not on the replica yet");
    }

    // Without its replica the completion still stands (after the WAIT
    // timeout), and a retry is a replay.
    replica.stop();
    let started = Instant::now();
    let first = send(&client, app.addr, "/charges", "alone").await;
    assert_eq!(first.status, StatusCode::CREATED);
    // WAIT was sent: with no replica left it holds the answer its timeout.
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        send(&client, app.addr, "/charges", "alone")
            .await
            .replayed()
    );
    assert_eq!(handler.runs(), 21);
    app.task.abort();
}

/// The principal the layer derives from an `Authorization` value.
fn principal_of(authorization: &str) -> String {
    tower_reissue::idempotency::Principal::from_credentials(authorization.as_bytes())
        .as_str()
        .to_owned()
}
