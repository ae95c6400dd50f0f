//! Dead letters, in one run:
//!
//! - `dead_letter_give_up`: what one give-up costs the caller (a keyless
//!   POST answered 503, so the retry layer gives up after one attempt):
//!   without a queue, with the hand-built list an `on_give_up` hook keeps
//!   (the peer: method, URI and key pushed into a `Mutex<Vec>`), and with
//!   `dead_letters(MemoryQueue)`, which keeps the whole request. The push to
//!   any queue runs on a task of its own, so this is the caller's cost for
//!   `SqliteQueue` too; `sqlite_push` is that task's own cost, one durable
//!   write.
//! - `dead_letter_page_100k`: one page of 50 out of 100,000 entries, first
//!   and deep into the queue, filtered by host and by reason, in SQLite and
//!   in memory; and the counts.

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_reissue::RetryLayer;
use tower_reissue::dead_letter::{
    AttemptOutcome, DeadLetterId, DeadLetterQueue, FailedRequest, KeptBody, MemoryQueue, PageQuery,
    SqliteQueue,
};

const ENTRIES: u64 = 100_000;
const HOSTS: u64 = 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request() -> Request<Full<Bytes>> {
    Request::post("http://api.example/emails")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"to":"ada@example.com","subject":"Your receipt"}"#,
        )))
        .unwrap()
}

/// `iters` give-ups through `layer`, on `rt`; the time per give-up.
fn give_ups(rt: &tokio::runtime::Runtime, layer: RetryLayer, iters: u64) -> Duration {
    let upstream = tower::service_fn(
        |_req: Request<tower_reissue::ReplayBody<Full<Bytes>>>| async {
            let mut response = Response::new(Full::<Bytes>::default());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, Infallible>(response)
        },
    );
    let client = layer.max_attempts(1).layer(upstream);
    rt.block_on(async {
        let began = Instant::now();
        for _ in 0..iters {
            let response = client.clone().oneshot(request()).await.unwrap();
            black_box(response);
        }
        let elapsed = began.elapsed();
        // Let the spawned pushes run (untimed) so that they do not pile up.
        tokio::task::yield_now().await;
        elapsed
    })
}

/// What the hand-built list keeps: method, URI and key.
type GaveUp = (Method, String, Option<String>);

const VARIANTS: [&str; 3] = ["no_queue", "on_give_up_vec", "memory_queue"];

/// The retry layer of one variant: no queue, the hand-built list, or a
/// `MemoryQueue`.
fn layer(variant: &str) -> RetryLayer {
    match variant {
        "no_queue" => RetryLayer::new(),
        "on_give_up_vec" => {
            let list: Arc<Mutex<Vec<GaveUp>>> = Arc::default();
            RetryLayer::new().on_give_up(move |event| {
                list.lock().unwrap().push((
                    event.request.method().clone(),
                    event.request.uri().to_string(),
                    event.request.idempotency_key().map(str::to_owned),
                ));
            })
        }
        "memory_queue" => RetryLayer::new().dead_letters(MemoryQueue::new()),
        other => panic!("unknown variant {other:?}, expected one of {VARIANTS:?}"),
    }
}

fn give_up(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("dead_letter_give_up");
    for variant in VARIANTS {
        // A fresh layer (and queue) per sample keeps memory bounded.
        group.bench_function(variant, |b| {
            b.iter_custom(|iters| give_ups(&rt, layer(variant), iters))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("dead_letter_push");
    let dir = bench_dir();
    let path = dir.join("push.sqlite");
    let _ = std::fs::remove_file(&path);
    let queue = rt.block_on(SqliteQueue::open(&path)).unwrap();
    group.sample_size(20);
    group.bench_function("sqlite_push", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(queue.push(failed(0)).await.unwrap()) })
    });
    // A burst, as during an outage: pushes waiting together share a commit.
    group.bench_function("sqlite_push_burst_of_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let queue = queue.clone();
            async move {
                let began = Instant::now();
                for _ in 0..iters {
                    let pushes: Vec<_> = (0..100)
                        .map(|n| {
                            let queue = queue.clone();
                            tokio::spawn(async move { queue.push(failed(n)).await.unwrap() })
                        })
                        .collect();
                    for push in pushes {
                        black_box(push.await.unwrap());
                    }
                }
                began.elapsed()
            }
        })
    });
    let memory = MemoryQueue::new();
    group.bench_function("memory_push", |b| {
        b.iter_custom(|iters| {
            let memory = memory.clone();
            rt.block_on(async move {
                let began = Instant::now();
                for _ in 0..iters {
                    black_box(memory.push(failed(0)).await.unwrap());
                }
                began.elapsed()
            })
        })
    });
    group.finish();
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-dead-letters");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Entry `n`: one of ten hosts, every tenth given up as not safe.
fn failed(n: u64) -> FailedRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("x-request-id", format!("req-{n}").parse().unwrap());
    FailedRequest {
        at: SystemTime::now(),
        method: Method::POST,
        uri: format!("http://api{}.example/emails?n={n}", n % HOSTS)
            .parse()
            .unwrap(),
        headers,
        body: KeptBody::Kept(Bytes::from(format!(
            r#"{{"to":"user{n}@example.com","subject":"Your receipt","amount":{n}}}"#
        ))),
        idempotency_key: Some(format!("0193a5c2-7e1f-7d3b-9c4a-{n:012}")),
        reason: if n % 10 == 0 {
            "not_safe"
        } else {
            "max_attempts"
        }
        .into(),
        attempts: 3,
        last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// The 100,000-entry SQLite file, built once and reused by later runs.
async fn sqlite_100k() -> SqliteQueue {
    let path = bench_dir().join("page-100k.sqlite");
    let queue = SqliteQueue::open(&path).await.unwrap();
    let have = queue.counts().await.unwrap().total();
    if have != ENTRIES {
        drop(queue);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let queue = SqliteQueue::open(&path).await.unwrap();
        for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(10_000) {
            queue
                .push_all(chunk.iter().map(|&n| failed(n)).collect())
                .await
                .unwrap();
        }
        return queue;
    }
    queue
}

async fn memory_100k() -> MemoryQueue {
    let queue = MemoryQueue::new();
    for n in 0..ENTRIES {
        queue.push(failed(n)).await.unwrap();
    }
    queue
}

fn page(c: &mut Criterion) {
    let rt = runtime();
    let sqlite = rt.block_on(sqlite_100k());
    let memory = rt.block_on(memory_100k());
    let deep = DeadLetterId::new(ENTRIES - 1_000);
    let queries = [
        ("first", PageQuery::new(50)),
        ("deep", PageQuery::new(50).after(deep)),
        (
            "by_host",
            PageQuery::new(50).host("api7.example").after(deep),
        ),
        (
            "by_reason",
            PageQuery::new(50).reason("not_safe").after(deep),
        ),
    ];
    let mut group = c.benchmark_group("dead_letter_page_100k");
    for (name, query) in &queries {
        assert_eq!(rt.block_on(sqlite.page(query)).unwrap().entries.len(), 50);
        group.bench_function(format!("sqlite/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(sqlite.page(query).await.unwrap()) })
        });
        group.bench_function(format!("memory/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(memory.page(query).await.unwrap()) })
        });
    }
    group.sample_size(20);
    group.bench_function("sqlite/counts", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(sqlite.counts().await.unwrap()) })
    });
    group.bench_function("memory/counts", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(memory.counts().await.unwrap()) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = give_up, page
}

/// `CALLGRIND_GIVE_UPS=N` with `CALLGRIND_VARIANT` one of `VARIANTS`
/// runs N give-ups of one variant and exits, for instruction counts under
/// `valgrind --tool=callgrind` (the difference between two values of N is
/// the cost of the extra give-ups, free of setup).
fn main() {
    if let Ok(n) = std::env::var("CALLGRIND_GIVE_UPS") {
        let n: u64 = n.parse().expect("CALLGRIND_GIVE_UPS is a count");
        let variant = std::env::var("CALLGRIND_VARIANT").unwrap_or_default();
        black_box(give_ups(&runtime(), layer(&variant), n));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
