//! `RedisStore` and `RedisQueue` on a real Redis Cluster (three masters,
//! three replicas) that this binary starts once and shares among its tests
//! (see `redis_server::cluster`), or the one in `REDIS_CLUSTER_URLS`: the
//! conformance suites, two instances spreading keys over every master, and
//! a zombie holder fenced out after its record expired. Failover is in
//! `redis_cluster_failover.rs`, on a cluster of its own.
#![cfg(feature = "redis")]

mod redis_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use http::{HeaderMap, Request, StatusCode};
use redis::cluster_async::ClusterConnection;
use redis_server::cluster::{self, RedisCluster};
use tower::ServiceExt;
use tower_reissue::conformance::queue as queue_conformance;
use tower_reissue::conformance::store::{self as store_conformance, Timing};
use tower_reissue::dead_letter::RedisQueue;
use tower_reissue::{IdempotencyLayer, RedisStore};

fn unique_prefix() -> String {
    format!("cluster-{}", uuid::Uuid::new_v4().simple())
}

async fn store(prefix: &str) -> RedisStore<ClusterConnection> {
    RedisStore::connect_cluster(RedisCluster::shared().urls())
        .await
        .expect("connect to the cluster")
        .prefix(prefix)
}

async fn queue(prefix: &str) -> RedisQueue<ClusterConnection> {
    RedisQueue::connect_cluster(RedisCluster::shared().urls())
        .await
        .expect("connect to the cluster")
        .prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_meets_the_contract() {
    let store = store(&unique_prefix()).await;
    store_conformance::check_contract(&store, Timing::REAL).await;
    store_conformance::check_concurrent_claims(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_queue_meets_the_contract() {
    queue_conformance::check_contract(|| async { queue(&unique_prefix()).await }).await;
    // Two connections on one queue, as two instances would have.
    queue_conformance::check_contract(|| async {
        let prefix = unique_prefix();
        queue_conformance::Either::new(queue(&prefix).await, queue(&prefix).await)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_zombie_holder_cannot_settle_the_newer_claim() {
    // Two instances, each with its own cluster connection.
    let prefix = unique_prefix();
    let (a, b) = (store(&prefix).await, store(&prefix).await);
    store_conformance::check_takeover(&a, &b, Timing::REAL).await;
}

/// Counts the runs of each key, as the side effect a duplicate would repeat.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, usize>>>);

async fn charge(State(runs): State<Runs>, headers: HeaderMap) -> StatusCode {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    *runs.0.lock().unwrap().entry(key).or_default() += 1;
    StatusCode::CREATED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_instances_spread_keys_over_every_master_and_run_each_once() {
    const KEYS: usize = 2_000;
    let prefix = unique_prefix();
    let runs = Runs::default();
    let mut instances = Vec::new();
    for _ in 0..2 {
        // Each instance has its own cluster connection, as separate
        // processes would.
        let layer =
            IdempotencyLayer::new(store(&prefix).await).wait_for_result(Duration::from_secs(10));
        let app: Router = Router::new()
            .route("/charges", post(charge))
            .layer(layer)
            .with_state(runs.clone());
        instances.push(app);
    }

    // Every key goes to both instances at once: 4,000 requests, 64 in flight.
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (next, instances) = (next.clone(), instances.clone());
        workers.spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= 2 * KEYS {
                    return statuses;
                }
                let request = Request::post("/charges")
                    .header("idempotency-key", format!("order-{}", n / 2))
                    .body(Body::empty())
                    .unwrap();
                let response = tokio::time::timeout(
                    Duration::from_secs(20),
                    instances[n % 2].clone().oneshot(request),
                )
                .await
                .expect("an answer within 20 s")
                .unwrap();
                statuses.push(response.status());
            }
        });
    }
    let mut statuses = Vec::new();
    while let Some(done) = workers.join_next().await {
        statuses.extend(done.unwrap());
    }
    assert_eq!(statuses.len(), 2 * KEYS);
    assert!(
        statuses.iter().all(|status| *status == StatusCode::CREATED),
        "{:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::CREATED)
            .collect::<Vec<_>>()
    );
    let runs = runs.0.lock().unwrap().clone();
    assert_eq!(runs.len(), KEYS);
    let duplicates = runs.values().filter(|n| **n > 1).count();
    println!("{KEYS} keys from two instances: {duplicates} duplicate runs");
    assert_eq!(duplicates, 0);

    // Where the records went: counted on each master.
    let cluster = RedisCluster::shared();
    let masters = cluster.masters().unwrap();
    let mut total = 0;
    for master in &masters {
        let count: usize = cluster::command(
            master.port,
            &[
                "EVAL",
                "return #redis.call('KEYS', ARGV[1])",
                "0",
                &format!("{prefix}:*"),
            ],
        )
        .unwrap()
        .parse()
        .unwrap();
        println!(
            "master 127.0.0.1:{} (slots {:?}): {count} records",
            master.port, master.slots
        );
        assert!(
            count > KEYS / 6,
            "keys are not spread: {count} on {master:?}"
        );
        total += count;
    }
    assert_eq!(total, KEYS);
}

#[test]
fn cluster_slots_are_computed_as_redis_does() {
    // The helper's CRC16 against the cluster's own CLUSTER KEYSLOT.
    let cluster = RedisCluster::shared();
    let port = cluster.masters().unwrap()[0].port;
    for key in [
        "a",
        "idempotency:{00ff}:p:k",
        "{user1000}.following",
        "x{}y",
    ] {
        let theirs: u16 = cluster::command(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(cluster::slot(key), theirs, "{key}");
    }
}
