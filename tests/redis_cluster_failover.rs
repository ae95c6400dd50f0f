//! `IdempotencyLayer` with `RedisStore` through a Redis Cluster master's
//! failover, on a cluster of its own (three masters, three replicas; see
//! `redis_server::cluster`).
//!
//! Replication on loopback is too fast for a lost write to show by itself,
//! so the test makes it show: it SIGSTOPs one master's replica (and has
//! the master drop its replication link, which the stalled replica cannot
//! restore), sends keys
//! of that master's slots, SIGKILLs the master and SIGCONTs the replica,
//! which takes the slots over (`CLUSTER FAILOVER TAKEOVER`) with what it had,
//! then sends every key again. Without `wait_for_replicas` the keys run
//! twice (printed: the test can fail); with it on claims and completions,
//! none does, and every request is answered or refused with 503 and
//! `Retry-After` while the slots move.
#![cfg(feature = "redis")]

mod redis_server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use http::{HeaderMap, Request, StatusCode};
use redis_server::cluster::{self, Master, RedisCluster};
use tower::ServiceExt;
use tower_reissue::conformance::store::fingerprint;
use tower_reissue::idempotency::store::{IdempotencyStore, RecordKey};
use tower_reissue::{IdempotencyLayer, RedisStore};

#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, usize>>>);

async fn charge(State(runs): State<Runs>, headers: HeaderMap) -> StatusCode {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    *runs.0.lock().unwrap().entry(key).or_default() += 1;
    StatusCode::CREATED
}

/// What one request got: its status, and whether a 503 said when to retry.
async fn send(app: &Router, key: &str) -> StatusCode {
    let request = Request::post("/charges")
        .header("idempotency-key", key)
        .body(Body::empty())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), app.clone().oneshot(request))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let status = response.status();
    match status {
        StatusCode::CREATED => {}
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => assert!(
            response.headers().contains_key("retry-after"),
            "{status} without Retry-After"
        ),
        other => panic!("{key}: unexpected {other}"),
    }
    status
}

/// Sends every key at once; their statuses.
async fn send_all(app: &Router, keys: &[String]) -> Vec<StatusCode> {
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let (app, key) = (app.clone(), key.clone());
        tasks.spawn(async move { send(&app, &key).await });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses
}

/// `n` keys whose records the store puts in `master`'s slots.
fn keys_on(store: &RedisStore<impl Sized>, master: &Master, n: usize, tag: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .filter(|key| {
            master.serves(cluster::slot(
                &store.key_of(&RecordKey::new("anonymous", key)),
            ))
        })
        .take(n)
        .collect()
}

struct Run {
    duplicates: usize,
    first_round: Vec<StatusCode>,
    elsewhere: Vec<StatusCode>,
}

/// One failover of `masters[which]`, with or without waiting for replicas.
async fn failover_run(cluster: &mut RedisCluster, which: usize, wait: bool) -> Run {
    const KEYS: usize = 30;
    let masters = cluster.masters().unwrap();
    let (master, other) = (&masters[which], &masters[(which + 1) % masters.len()]);
    let replica = master.replicas[0];
    let prefix = format!("failover-{}", uuid::Uuid::new_v4().simple());
    let runs = Runs::default();
    let instance = async |urls: Vec<String>| {
        let mut store = RedisStore::connect_cluster(urls)
            .await
            .unwrap()
            .prefix(&prefix);
        if wait {
            store = store
                .wait_for_replicas(1, Duration::from_millis(100))
                .wait_on_claims(true);
        }
        let app: Router = Router::new()
            .route("/charges", post(charge))
            .layer(IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(2)))
            .with_state(runs.clone());
        (store, app)
    };
    let (store, app) = instance(cluster.urls()).await;
    let keys = keys_on(&store, master, KEYS, "moved");
    let unmoved = keys_on(&store, other, 5, "stays");

    // The replica stalls, and the master drops its link (what it had sent
    // is already in the replica's socket buffer, which a SIGCONT would
    // deliver): from now on the master's writes reach no one.
    cluster.pause(replica);
    cluster::command(master.port, &["CLIENT", "KILL", "TYPE", "replica"]).unwrap();
    let first_round = send_all(&app, &keys).await;
    // Another master's replica still acknowledges: the WAIT goes to the
    // record's own primary, not to every primary.
    let elsewhere = send_all(&app, &unmoved).await;

    // The master crashes; the replica comes back and takes its slots over
    // with what it had.
    cluster.kill(master.port);
    cluster.resume(replica);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = cluster::command(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]) {
        assert!(Instant::now() < deadline, "takeover refused: {err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old master comes back as the new one's replica, so that WAIT has
    // a replica again.
    cluster.restart(master.port);
    tokio::task::block_in_place(|| cluster.wait_until_settled());
    assert!(
        cluster
            .masters()
            .unwrap()
            .iter()
            .any(|m| m.port == replica && m.slots == master.slots),
        "the replica did not take the slots over"
    );

    // Every client retries until answered, through the same instance: its
    // cluster connection follows the failover (or, where the redis crate's
    // connection deadlocked, the store replaces it; see `docs::redis`).
    let recovering = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<String> = keys.clone();
    while !pending.is_empty() {
        let statuses = send_all(&app, &pending).await;
        if Instant::now() > deadline {
            // What the store says, for the failure message.
            let probe = keys_on(&store, master, 1, "probe");
            let claim = store
                .claim(
                    &RecordKey::new("anonymous", &probe[0]),
                    &fingerprint(1),
                    Duration::from_secs(1),
                )
                .await;
            panic!("still refused: {pending:?}: {statuses:?}; a claim now: {claim:?}");
        }
        let answered = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        if answered == pending.len() {
            break;
        }
        // Which ones: send them one by one (a key answered once replays).
        let mut still = Vec::new();
        for key in pending {
            if send(&app, &key).await != StatusCode::CREATED {
                still.push(key);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "the instance answered every key again {:?} after the failover",
        recovering.elapsed()
    );

    let runs = runs.0.lock().unwrap().clone();
    for key in &keys {
        assert!(runs.get(key).copied().unwrap_or(0) >= 1, "{key} never ran");
    }
    let duplicates = keys.iter().filter(|key| runs[*key] > 1).count();
    Run {
        duplicates,
        first_round,
        elsewhere,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_runs_keys_twice_without_wait_and_once_with_it() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);

    let without = failover_run(&mut cluster, 0, false).await;
    println!(
        "without wait_for_replicas: {} of 30 keys ran twice after the failover",
        without.duplicates
    );
    assert!(
        without
            .first_round
            .iter()
            .all(|s| *s == StatusCode::CREATED),
        "{:?}",
        without.first_round
    );
    assert!(
        without.duplicates > 0,
        "the failover lost nothing: the test cannot fail"
    );

    let with = failover_run(&mut cluster, 1, true).await;
    println!(
        "with wait_for_replicas on claims and completions: {} of 30 keys ran twice; \
         while the replica stalled: {:?}; on another master: {:?}",
        with.duplicates, with.first_round, with.elsewhere
    );
    assert_eq!(with.duplicates, 0);
    // While the master could not replicate, its keys were refused (503 with
    // Retry-After, checked in `send`), not run.
    assert!(
        with.first_round
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{:?}",
        with.first_round
    );
    // The other masters' keys ran: their WAIT went to their own primary.
    assert!(
        with.elsewhere.iter().all(|s| *s == StatusCode::CREATED),
        "{:?}",
        with.elsewhere
    );
}
