//! `RedisStore` against a real `redis-server` (see `redis_server`): the shared
//! store-conformance suite on Redis's clock, fencing between two instances,
//! the key layout and expiries Redis holds, and bad data or addresses.
#![cfg(feature = "redis")]

mod redis_server;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis_server::RedisServer;
use tower_reissue::RedisStore;
use tower_reissue::conformance::store::{
    self as store_conformance, Timing, acquire, assert_fenced, fingerprint, outcome,
};
use tower_reissue::idempotency::store::{Claim, IdempotencyStore, RecordKey, StoreError};

/// A prefix no other test uses, so tests can share a server.
fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4())
}

async fn store_at(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(server.url())
        .await
        .expect("connect to redis")
        .prefix(prefix)
}

async fn store(server: &RedisServer) -> RedisStore {
    store_at(server, &unique_prefix()).await
}

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let server = RedisServer::shared();
    store_conformance::check_contract(&store(&server).await, Timing::REAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_acquire_once() {
    let server = RedisServer::shared();
    store_conformance::check_concurrent_claims(&store(&server).await).await;
}

#[tokio::test]
async fn a_late_holder_cannot_overwrite_the_next_one() {
    // Two instances, each with its own connection, share the records.
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let a = store_at(&server, &prefix).await;
    let b = store_at(&server, &prefix).await;
    store_conformance::check_takeover(&a, &b, Timing::REAL).await;
}

#[tokio::test]
async fn records_are_namespaced_and_expired_by_redis() {
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let store = store_at(&server, &prefix).await;
    let mut redis = admin(&server).await;
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(600);

    let key = RecordKey::new("tenant:7", "order-1");
    let name = store.key_of(&key);
    // The hash tag first, then the principal (escaped) and the key.
    assert!(name.starts_with(&format!("{prefix}:{{")), "{name}");
    assert!(name.ends_with("}:tenant%3A7:order-1"), "{name}");
    let token = acquire(&store, &key, &fingerprint(1), lease).await;
    let pttl: i64 = redis.pttl(&name).await.unwrap();
    assert!(0 < pttl && pttl <= 30_000, "in-flight pttl {pttl}");
    let stored_token: String = redis.hget(&name, "token").await.unwrap();
    assert_eq!(
        stored_token,
        format!("{}:{}", token.get() >> 12, token.get() & 0xfff)
    );
    let fp: Vec<u8> = redis.hget(&name, "fp").await.unwrap();
    assert_eq!(&fp[..], fingerprint(1).as_bytes());

    store
        .complete(&key, token, outcome("done"), ttl)
        .await
        .unwrap();
    let pttl: i64 = redis.pttl(&name).await.unwrap();
    assert!(30_000 < pttl && pttl <= 600_000, "completed pttl {pttl}");
    let has_token: bool = redis.hexists(&name, "token").await.unwrap();
    assert!(!has_token, "a completed record keeps no token");

    let released = RecordKey::new("tenant:7", "order-2");
    let token = acquire(&store, &released, &fingerprint(1), lease).await;
    store.release(&released, token).await.unwrap();

    // Under the prefix: the one completed record, which expires. No
    // counter, nothing else, and nothing outside the prefix.
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).await.unwrap();
    assert_eq!(keys, [name]);
}

#[tokio::test]
async fn tokens_follow_redis_clock_and_differ_between_claims() {
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let store = store_at(&server, &prefix).await;
    let key = RecordKey::new("p", "k");

    let first = acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
    // Redis's clock in microseconds, above the 12 random bits, kept intact
    // (Lua numbers are doubles).
    assert!(first.get() >> 12 > 1_600_000_000_000_000, "{first:?}");
    store.release(&key, first).await.unwrap();

    // The next claim of the key reads a later time.
    let second = acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
    assert!(second > first, "{second:?} after {first:?}");
    assert_fenced(&store, &key, first, Duration::from_secs(60)).await;

    // The low 12 bits are the claiming instance's random ones, not a
    // constant: over 16 claims they take more than one value.
    store.release(&key, second).await.unwrap();
    let mut low = std::collections::HashSet::new();
    for _ in 0..16 {
        let token = acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
        low.insert(token.get() & 0xfff);
        store.release(&key, token).await.unwrap();
    }
    assert!(low.len() > 1, "the random bits: {low:?}");
}

#[tokio::test]
async fn a_claim_no_replica_confirms_is_given_back_and_refused() {
    // The shared server has no replica: `WAIT 1` times out unconfirmed.
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let store = store_at(&server, &prefix)
        .await
        .wait_for_replicas(1, Duration::from_millis(50))
        .wait_on_claims(true);
    let key = RecordKey::new("p", "unconfirmed");
    let refused = store
        .claim(&key, &fingerprint(1), Duration::from_secs(60))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    // The claim was given back: the record is gone, and a store that does
    // not wait takes the key at once.
    let mut redis = admin(&server).await;
    let exists: bool = redis.exists(store.key_of(&key)).await.unwrap();
    assert!(!exists, "the unconfirmed claim is released");
    acquire(
        &store_at(&server, &prefix).await,
        &key,
        &fingerprint(1),
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn foreign_or_damaged_records_are_errors() {
    let server = RedisServer::shared();
    let prefix = unique_prefix();
    let store = store_at(&server, &prefix).await;
    let mut redis = admin(&server).await;
    let name = |key: &str| store.key_of(&RecordKey::new("p", key));

    let _: () = redis.set(name("string"), "not ours").await.unwrap();
    let _: () = redis.hset(name("no-fp"), "other", "x").await.unwrap();
    let _: () = redis.hset(name("short-fp"), "fp", "abc").await.unwrap();
    let _: () = redis
        .hset_multiple(
            name("bad-outcome"),
            &[("fp", &[1u8; 32][..]), ("outcome", b"zz")],
        )
        .await
        .unwrap();

    for (key, corrupt) in [
        ("string", false),
        ("no-fp", false),
        ("short-fp", true),
        ("bad-outcome", true),
    ] {
        let result = store
            .claim(
                &RecordKey::new("p", key),
                &fingerprint(1),
                Duration::from_secs(1),
            )
            .await;
        match result {
            Err(StoreError::Corrupt(_)) if corrupt => {}
            Err(StoreError::Unavailable(_)) if !corrupt => {}
            other => panic!("{key}: {other:?}"),
        }
    }
    // None of them was overwritten.
    let value: String = redis.get(name("string")).await.unwrap();
    assert_eq!(value, "not ours");
    let fields: Vec<String> = redis.hkeys(name("no-fp")).await.unwrap();
    assert_eq!(fields, ["other"]);
}

#[tokio::test]
async fn bad_addresses_are_errors() {
    let err = RedisStore::connect("postgres://127.0.0.1/")
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // TLS needs a feature of the redis crate this build does not enable.
    let err = RedisStore::connect("rediss://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("tls"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    assert!(RedisStore::connect(&url).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_unresponsive_redis_times_out() {
    // A peer that accepts connections and never answers, like a Redis that
    // is frozen or behind a black-holed route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let manager = redis::aio::ConnectionManager::new_lazy_with_config(
        redis::Client::open(url).unwrap(),
        RedisStore::manager_config(),
    )
    .unwrap();
    let store = RedisStore::from_connection(manager).timeout(Duration::from_millis(300));

    let started = Instant::now();
    let result = store
        .claim(
            &RecordKey::new("p", "k"),
            &fingerprint(1),
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = std::error::Error::source(&result.unwrap_err())
        .unwrap()
        .to_string();
    assert!(message.contains("did not answer"), "{message}");
}

#[tokio::test]
async fn an_existing_multiplexed_connection_works() {
    let server = RedisServer::shared();
    let connection = admin(&server).await;
    let store = RedisStore::from_connection(connection).prefix(unique_prefix());
    let key = RecordKey::new("p", "k");
    let token = acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
    assert!(matches!(
        store
            .claim(&key, &fingerprint(1), Duration::from_secs(60))
            .await,
        Ok(Claim::InFlight { .. })
    ));
    store.release(&key, token).await.unwrap();
}
