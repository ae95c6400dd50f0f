//! `RedisQueue` (a `redis-server` on loopback, started here unless
//! `REDIS_URL` is set) against `SqliteQueue` (a file under `target/`), in one
//! run, on the same entries:
//!
//! - `dead_letter_queue_ops`: a push, and a replay's two queue calls (lease
//!   one entry, complete it);
//! - `dead_letter_queue_page_100k`: one page of 50 out of 100,000 entries,
//!   first and deep into the queue filtered by host, and the counts.

mod common;

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use tower_reissue::dead_letter::{
    DeadLetterId, DeadLetterQueue, FailedRequest, PageQuery, RedisQueue, SqliteQueue,
};

use tower_reissue::conformance::queue::request;

const ENTRIES: u32 = 100_000;
const HOSTS: u32 = 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Entry `n`: one of ten hosts.
fn failed(n: u32) -> FailedRequest {
    request(&format!("api{}.example", n % HOSTS), "max_attempts", n)
}

async fn redis_queue(url: &str, name: &str) -> RedisQueue {
    RedisQueue::connect(url)
        .await
        .unwrap()
        .prefix(format!("bench-{name}-{}", uuid::Uuid::new_v4()))
}

async fn sqlite_queue(name: &str) -> SqliteQueue {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-dead-letters");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("redis-peer-{name}.sqlite"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    SqliteQueue::open(&path).await.unwrap()
}

/// Pushes entries `0..ENTRIES` to Redis, many at once (the connection
/// pipelines them).
async fn fill_redis(queue: &RedisQueue) {
    let mut pushes = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let queue = queue.clone();
        pushes.spawn(async move {
            for n in (worker..ENTRIES).step_by(16) {
                queue.push(failed(n)).await.unwrap();
            }
        });
    }
    pushes.join_all().await;
}

/// Pushes entries `0..ENTRIES` to SQLite, 10,000 to a transaction.
async fn fill_sqlite(queue: &SqliteQueue) {
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(10_000) {
        queue
            .push_all(chunk.iter().map(|&n| failed(n)).collect())
            .await
            .unwrap();
    }
}

/// `iters` replays' queue calls (lease one entry, complete it) on entries
/// pushed beforehand, untimed; the time they took.
fn lease_and_complete<Q: DeadLetterQueue>(
    rt: &tokio::runtime::Runtime,
    queue: &Q,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        for _ in 0..iters {
            queue.push(failed(1)).await.unwrap();
        }
        let began = Instant::now();
        for _ in 0..iters {
            let lease = queue
                .lease(1, Duration::from_secs(60))
                .await
                .unwrap()
                .pop()
                .expect("an entry was pushed for every lease");
            queue
                .complete(lease.letter.id, lease.token, StatusCode::OK)
                .await
                .unwrap();
        }
        began.elapsed()
    })
}

fn ops(c: &mut Criterion) {
    let rt = runtime();
    let server = redis_server::RedisServer::shared();
    let redis = rt.block_on(redis_queue(server.url(), "ops"));
    let sqlite = rt.block_on(sqlite_queue("ops"));
    let mut group = c.benchmark_group("dead_letter_queue_ops");
    group.bench_function("redis/push", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(redis.push(failed(1)).await.unwrap()) })
    });
    group.bench_function("redis/lease_complete", |b| {
        b.iter_custom(|iters| lease_and_complete(&rt, &redis, iters))
    });
    group.sample_size(20);
    group.bench_function("sqlite/push", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(sqlite.push(failed(1)).await.unwrap()) })
    });
    group.bench_function("sqlite/lease_complete", |b| {
        b.iter_custom(|iters| lease_and_complete(&rt, &sqlite, iters))
    });
    group.finish();
}

fn page(c: &mut Criterion) {
    let rt = runtime();
    let server = redis_server::RedisServer::shared();
    let redis = rt.block_on(redis_queue(server.url(), "page"));
    let sqlite = rt.block_on(sqlite_queue("page"));
    rt.block_on(fill_redis(&redis));
    rt.block_on(fill_sqlite(&sqlite));
    let deep = DeadLetterId::new(u64::from(ENTRIES) - 1_000);
    let queries = [
        ("first", PageQuery::new(50)),
        (
            "deep_by_host",
            PageQuery::new(50).host("api7.example").after(deep),
        ),
    ];
    let mut group = c.benchmark_group("dead_letter_queue_page_100k");
    for (name, query) in &queries {
        assert_eq!(rt.block_on(redis.page(query)).unwrap().entries.len(), 50);
        assert_eq!(rt.block_on(sqlite.page(query)).unwrap().entries.len(), 50);
        group.bench_function(format!("redis/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(redis.page(query).await.unwrap()) })
        });
        group.bench_function(format!("sqlite/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(sqlite.page(query).await.unwrap()) })
        });
    }
    group.sample_size(20);
    group.bench_function("redis/counts", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(redis.counts().await.unwrap()) })
    });
    group.bench_function("sqlite/counts", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(sqlite.counts().await.unwrap()) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = ops, page
}
criterion_main!(benches);
