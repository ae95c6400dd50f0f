//! Paging the admin page through 100,000 dead letters in a SQLite file:
//! each page through the router (HTML and JSON), against the bare
//! `SqliteQueue::page` call it is built on, same run.
//!
//! The file is filled once (with the queue's own `push_all`) and kept under
//! `target/` for later runs.

mod common;

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_reissue::dead_letter::{
    AttemptOutcome, DeadLetterId, DeadLetterQueue, FailedRequest, KeptBody, PageQuery, Replayer,
    SqliteQueue, admin,
};

const ENTRIES: u64 = 100_000;

fn request(n: u64) -> FailedRequest {
    let host = ["api.mail.example", "api.pay.example", "api.sms.example"][(n % 3) as usize];
    let reason = if n % 10 == 0 {
        "budget_exhausted"
    } else {
        "max_attempts"
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    FailedRequest {
        at: SystemTime::now(),
        method: Method::POST,
        uri: format!("http://{host}/v1/send?n={n}").parse().unwrap(),
        headers,
        body: KeptBody::Kept(Bytes::from(format!(
            "{{\"to\":\"user{n}@example.com\",\"subject\":\"receipt {n}\"}}"
        ))),
        idempotency_key: Some(format!("key-{n}")),
        reason: reason.into(),
        attempts: 3,
        last: AttemptOutcome::Status(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn filled_queue() -> SqliteQueue {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-admin-100k.sqlite");
    let queue = SqliteQueue::open(&path).await.unwrap();
    let mut have = queue.counts().await.unwrap().total();
    while have < ENTRIES {
        let batch = (have..ENTRIES.min(have + 10_000)).map(request).collect();
        have += queue.push_all(batch).await.unwrap().len() as u64;
    }
    queue
}

fn app(queue: SqliteQueue) -> Router {
    let client = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    Router::new().nest(
        "/admin",
        admin::router(queue.clone(), Replayer::new(queue, client)),
    )
}

async fn fetch(app: &Router, uri: &str) -> usize {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{uri}");
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn paging(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queue = runtime.block_on(filled_queue());
    let app = app(queue.clone());
    let middle = ENTRIES / 2;
    let pages = [
        ("first", String::new(), PageQuery::new(50)),
        (
            "middle",
            format!("after={middle}"),
            PageQuery::new(50).after(DeadLetterId::new(middle)),
        ),
        (
            "host and reason",
            format!("host=api.pay.example&reason=budget_exhausted&after={middle}"),
            PageQuery::new(50)
                .host("api.pay.example")
                .reason("budget_exhausted")
                .after(DeadLetterId::new(middle)),
        ),
    ];
    let mut group = c.benchmark_group("admin page of 50 over 100k SQLite entries");
    for (name, params, query) in &pages {
        let html = format!("/admin?{params}");
        let json = format!("/admin/api/entries?limit=50&{params}");
        for uri in [&html, &json] {
            // Each page, cold, well under the 50 ms target.
            let began = std::time::Instant::now();
            let bytes = runtime.block_on(fetch(&app, uri));
            let took = began.elapsed();
            assert!(took < Duration::from_millis(50), "{uri}: {took:?}");
            assert!(bytes > 10_000, "{uri}: a page of 50 entries");
        }
        group.bench_function(format!("{name}: HTML through the router"), |b| {
            b.to_async(&runtime).iter(|| fetch(&app, &html))
        });
        group.bench_function(format!("{name}: JSON through the router"), |b| {
            b.to_async(&runtime).iter(|| fetch(&app, &json))
        });
        group.bench_function(format!("{name}: SqliteQueue::page alone"), |b| {
            b.to_async(&runtime)
                .iter(|| async { queue.page(query).await.unwrap().entries.len() })
        });
    }
    group.finish();
    // The HTML page also counts every state and reason; that is its cost
    // over the bare page.
    c.bench_function("admin counts over 100k SQLite entries", |b| {
        b.to_async(&runtime)
            .iter(|| async { queue.counts().await.unwrap().total() })
    });
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = paging
}
criterion_main!(benches);
