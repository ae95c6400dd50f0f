//! The `payments` example as real processes on a real PostgreSQL (see
//! `pg_server`), crashed on purpose: SIGKILL before and after the commit,
//! SIGSTOP past the lease, the database going away, a COMMIT that fails.
//! Rows are counted in the database. The example binary must be built
//! (`cargo test` builds the examples; a missing one is built here).
#![cfg(feature = "postgres")]

mod pg_server;
#[cfg(feature = "redis")]
mod redis_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The crash runs hold ~100 connections each: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn payments_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/postgres_crash-<hash> -> target/<profile>/examples/payments
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let path = dir.join("examples").join("payments");
        if !path.exists() {
            let features = if cfg!(feature = "redis") {
                "postgres,redis"
            } else {
                "postgres"
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--example", "payments", "--features", features])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the payments example failed");
        }
        assert!(path.exists(), "{} is missing", path.display());
        path
    })
    .clone()
}

/// A running `payments` process, SIGKILLed when dropped.
struct Instance {
    pid: libc::pid_t,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    _child: Child,
}

impl Instance {
    async fn start(url: &str, store: &str, lease_ms: u64, redis_url: Option<&str>) -> Instance {
        Self::start_with(url, store, lease_ms, redis_url, &[]).await
    }

    async fn start_with(
        url: &str,
        store: &str,
        lease_ms: u64,
        redis_url: Option<&str>,
        more: &[&str],
    ) -> Instance {
        let mut command = Command::new(payments_binary());
        command
            .args(["--database-url", url, "--store", store])
            .args(["--lease-ms", &lease_ms.to_string()])
            .args(more)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(redis_url) = redis_url {
            command.args(["--redis-url", redis_url]);
        }
        let mut child = command.spawn().expect("payments starts");
        let pid = child.id().expect("pid") as libc::pid_t;
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("payments listens within 30 s")
            .unwrap()
            .expect("payments exited before listening: was it built with this test's features? `cargo test` builds the examples");
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Instance {
            pid,
            addr,
            lines,
            _child: child,
        }
    }

    fn inserted(&self) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.starts_with("inserted ")).count()
    }

    fn inserted_of(&self, reference: &str) -> usize {
        let line = format!("inserted {reference}");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == line)
            .count()
    }

    async fn wait_inserted(&self, n: usize) {
        poll(
            Duration::from_secs(30),
            &format!("{n} inserted lines"),
            || async { self.inserted() >= n },
        )
        .await;
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(self.pid, signal) };
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Polls `done` every 20 ms until it holds; panics after `limit`.
async fn poll<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One keyed POST on its own connection: (status, whole answer); status 0
/// when the connection failed or closed without an answer.
async fn post(
    addr: SocketAddr,
    key: &str,
    reference: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, "connect failed".into());
    };
    let body = format!(r#"{{"reference":"{reference}","amount":100}}"#);
    let extra: String = extra.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let request = format!(
        "POST /payments HTTP/1.1\r\nhost: test\r\nidempotency-key: \"{key}\"\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, "write failed".into());
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// Sends the request until it is answered 201 (409 and 503 wait 50 ms),
/// for at most 30 s: (the answer, how many attempts).
async fn until_created(addr: SocketAddr, key: &str, reference: &str) -> (String, u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (status, answer) = post(addr, key, reference, &[]).await;
        match status {
            201 => return (answer, attempts),
            409 | 503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("{reference}: unexpected answer after {attempts} attempts: {answer}"),
        }
    }
}

async fn test_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows_of(pool: &PgPool, reference: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments WHERE reference = $1")
        .bind(reference)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Rows past the first of each reference.
async fn duplicates(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(n - 1), 0)::bigint FROM \
         (SELECT count(*) AS n FROM payments GROUP BY reference) AS per_reference",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn requests(n: usize) -> Vec<(String, String)> {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    (0..n)
        .map(|i| (format!("{tag}-key-{i}"), format!("{tag}-ref-{i}")))
        .collect()
}

fn spawn_posts(
    addr: SocketAddr,
    requests: &[(String, String)],
    hold: (&'static str, &'static str),
) -> Vec<JoinHandle<(u16, String)>> {
    requests
        .iter()
        .cloned()
        .map(|(key, reference)| {
            tokio::spawn(async move { post(addr, &key, &reference, &[hold]).await })
        })
        .collect()
}

struct Run {
    pool: PgPool,
    requests: Vec<(String, String)>,
    /// The second instance's 201s.
    answers: Vec<String>,
}

/// Two instances on one database; 40 requests in flight on the first,
/// which is SIGKILLed before its commit (`after_commit: false`: once the
/// 40 rows are inserted) or after it (once the 40 rows are committed);
/// then every request again on the second until 201.
async fn crash_run(store: &str, after_commit: bool, redis_url: Option<&str>) -> Run {
    let _heavy = HEAVY.lock().await;
    let url = pg_server::fresh_database(&format!("crash_{store}_{after_commit}")).await;
    let first = Instance::start(&url, store, 1000, redis_url).await;
    let second = Instance::start(&url, store, 1000, redis_url).await;
    let pool = test_pool(&url).await;
    let requests = requests(40);
    let hold = if after_commit {
        ("x-hold-after-commit-ms", "60000")
    } else {
        ("x-hold-ms", "60000")
    };
    let started = Instant::now();
    let in_flight = spawn_posts(first.addr, &requests, hold);
    if after_commit {
        poll(Duration::from_secs(30), "40 committed rows", || async {
            count(&pool).await == 40
        })
        .await;
    } else {
        first.wait_inserted(40).await;
    }
    let in_flight_after = started.elapsed();
    first.signal(libc::SIGKILL);
    let killed = Instant::now();
    for request in in_flight {
        let (status, answer) = request.await.unwrap();
        assert_ne!(status, 201, "answered before the kill: {answer}");
    }
    let retries: Vec<_> = requests
        .iter()
        .cloned()
        .map(|(key, reference)| {
            let addr = second.addr;
            tokio::spawn(async move { until_created(addr, &key, &reference).await })
        })
        .collect();
    let mut answers = Vec::new();
    let mut attempts = 0;
    for retry in retries {
        let (answer, tries) = retry.await.unwrap();
        answers.push(answer);
        attempts += tries;
    }
    eprintln!(
        "{store} kill {} the commit: 40 in flight after {in_flight_after:?}; all 40 retried to 201 \
         {:?} after the kill, {attempts} attempts in all",
        if after_commit { "after" } else { "before" },
        killed.elapsed()
    );
    Run {
        pool,
        requests,
        answers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_before_the_commit_rolls_back_and_the_retry_runs_once() {
    let run = crash_run("postgres", false, None).await;
    assert_eq!(count(&run.pool).await, 40);
    for (_, reference) in &run.requests {
        assert_eq!(rows_of(&run.pool, reference).await, 1, "{reference}");
    }
    for answer in &run.answers {
        assert!(
            !answer
                .to_ascii_lowercase()
                .contains("idempotent-replayed: true"),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b_kill_after_the_commit_replays() {
    let run = crash_run("postgres", true, None).await;
    assert_eq!(count(&run.pool).await, 40);
    assert_eq!(duplicates(&run.pool).await, 0);
    for answer in &run.answers {
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("idempotent-replayed: true"),
            "{answer}"
        );
    }
}

/// Records in Redis, rows autocommitted apart from them: a kill between
/// the two lets the retry insert again.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_with_redis_records_a_kill_before_the_result_duplicates() {
    let server = redis_server::RedisServer::shared();
    let before = crash_run("redis", false, Some(server.url())).await;
    let before_dups = duplicates(&before.pool).await;
    let after = crash_run("redis", true, Some(server.url())).await;
    let after_dups = duplicates(&after.pool).await;
    eprintln!(
        "redis store: {before_dups} duplicate rows of 40 when killed before the result was stored \
         ({} rows), {after_dups} when killed after it ({} rows)",
        count(&before.pool).await,
        count(&after.pool).await
    );
    assert!(before_dups > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn d_a_stopped_instance_past_its_lease_cannot_commit() {
    // The first instance's transactions are kept open by the database for
    // a minute, so what stops its commits is the fenced write, not the
    // database ending its sessions.
    let url = pg_server::fresh_database("crash_sigstop").await;
    let idle = ["--idle-timeout-ms", "60000"];
    let first = Instance::start_with(&url, "postgres", 500, None, &idle).await;
    let second = Instance::start(&url, "postgres", 500, None).await;
    let pool = test_pool(&url).await;
    let requests = requests(10);
    let in_flight = spawn_posts(first.addr, &requests, ("x-hold-ms", "100"));
    first.wait_inserted(10).await;
    first.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut attempts = 0;
    for (key, reference) in &requests {
        attempts += until_created(second.addr, key, reference).await.1;
    }
    eprintln!(
        "SIGSTOP: 10 taken over on the second instance {:?} after the stop ({attempts} attempts)",
        stopped.elapsed()
    );
    first.signal(libc::SIGCONT);
    for (request, (_, reference)) in in_flight.into_iter().zip(&requests) {
        let (status, answer) = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("the stopped instance answers once resumed")
            .unwrap();
        let head = answer.lines().next().unwrap_or("");
        eprintln!("SIGSTOP: the first instance answered {reference}: {status} {head:?}");
        // Its fenced write found the record taken over: rolled back, 409.
        assert_eq!(status, 409, "{answer}");
    }
    for (_, reference) in &requests {
        assert_eq!(rows_of(&pool, reference).await, 1, "{reference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e_the_database_down_answers_503_then_runs_once() {
    let server = pg_server::PgServer::private();
    let url = pg_server::create_database(&server.url(), "crash_down").await;
    let instance = Instance::start(&url, "postgres", 2000, None).await;
    let requests = requests(1);
    let (key, reference) = &requests[0];
    server.stop();
    let started = Instant::now();
    let (status, answer) = post(instance.addr, key, reference, &[]).await;
    eprintln!("database down: {status} after {:?}", started.elapsed());
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    assert_eq!(instance.inserted(), 0);
    server.start();
    let started = Instant::now();
    let (answer, attempts) = until_created(instance.addr, key, reference).await;
    eprintln!(
        "database back: 201 after {attempts} attempts, {:?}",
        started.elapsed()
    );
    assert!(
        !answer.to_ascii_lowercase().contains("idempotent-replayed"),
        "{answer}"
    );
    let pool = test_pool(&url).await;
    assert_eq!(rows_of(&pool, reference).await, 1);
    assert_eq!(instance.inserted_of(reference), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f_a_failed_commit_answers_5xx_and_the_retry_runs_once() {
    let url = pg_server::fresh_database("crash_commit").await;
    let instance = Instance::start(&url, "postgres", 2000, None).await;
    let pool = test_pool(&url).await;
    let requests = requests(1);
    let (key, reference) = &requests[0];
    let in_flight = spawn_posts(instance.addr, &requests, ("x-hold-ms", "1000"));
    instance.wait_inserted(1).await;
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE state = 'idle in transaction' AND datname = current_database()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(terminated, [true], "one backend idle in its transaction");
    let (status, answer) = in_flight.into_iter().next().unwrap().await.unwrap();
    eprintln!("failed commit: {}", answer.lines().next().unwrap_or(""));
    assert!((500..600).contains(&status), "{answer}");
    let started = Instant::now();
    let (_, attempts) = until_created(instance.addr, key, reference).await;
    eprintln!(
        "failed commit: the retry got 201 after {attempts} attempts, {:?}",
        started.elapsed()
    );
    assert_eq!(rows_of(&pool, reference).await, 1);
    assert_eq!(instance.inserted_of(reference), 2);
}
