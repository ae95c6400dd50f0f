//! `PostgresStore` against a real PostgreSQL (see `pg_server`): the shared
//! store-conformance suite on the database's clock, two pools on one
//! database, a claim taken over after its lease, the versioned schema, the
//! purge, and a claim that times out on a row lock.
#![cfg(feature = "postgres")]

mod pg_server;

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tower_reissue::PostgresStore;
use tower_reissue::conformance::store::{
    self as store_conformance, Timing, acquire, assert_completed, fingerprint, outcome,
};
use tower_reissue::idempotency::store::{Claim, IdempotencyStore, PostgresError, RecordKey};

async fn store_at(url: &str) -> PostgresStore {
    let store = PostgresStore::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let url = pg_server::fresh_database("contract").await;
    store_conformance::check_contract(&store_at(&url).await, Timing::REAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_acquire_once() {
    let url = pg_server::fresh_database("concurrent").await;
    store_conformance::check_concurrent_claims(&store_at(&url).await).await;
}

#[tokio::test]
async fn two_pools_share_records_and_a_late_holder_is_fenced_out() {
    // Two instances, each with its own pools, on one database.
    let url = pg_server::fresh_database("two_pools").await;
    let (a, b) = (store_at(&url).await, store_at(&url).await);
    store_conformance::check_takeover(&a, &b, Timing::REAL).await;
}

#[tokio::test]
async fn migrate_is_versioned_and_repeatable() {
    let url = pg_server::fresh_database("migrate").await;
    let store = PostgresStore::builder(&url)
        .table("payment_keys")
        .connect()
        .await
        .unwrap();
    // Twice, and from two instances at once: one schema, version 1.
    store.migrate().await.unwrap();
    let other = store.clone();
    let (first, second) = tokio::join!(store.migrate(), other.migrate());
    first.unwrap();
    second.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM payment_keys_schema")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, [1]);
    // The records live in the configured table.
    let key = RecordKey::new("p", "k");
    acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_keys")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // A newer release migrated the table: this one refuses it.
    sqlx::query("INSERT INTO payment_keys_schema (version) VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, PostgresError::SchemaTooNew { found: 7, known: 1 }),
        "{err}"
    );
}

#[tokio::test]
async fn the_shipped_sql_is_the_schema_migrate_creates() {
    // Teams that run their own migrations apply the file as shipped.
    let url = pg_server::fresh_database("shipped").await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(include_str!(
        "../migrations/postgres/store/0001_records.sql"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tower_reissue_records_schema (version) VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    let store = store_at(&url).await;
    let key = RecordKey::new("p", "k");
    let token = acquire(&store, &key, &fingerprint(1), Duration::from_secs(60)).await;
    store
        .complete(&key, token, outcome("done"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_completed(&store, &key, &fingerprint(1), &outcome("done")).await;
}

#[tokio::test]
async fn bad_table_names_and_urls_are_typed_errors() {
    let err = PostgresStore::builder("postgres://127.0.0.1:1/x")
        .table("records; DROP TABLE users")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, PostgresError::InvalidTableName(_)), "{err}");
    let err = PostgresStore::connect("postgres://app@localhost:notaport/app")
        .await
        .unwrap_err();
    assert!(matches!(err, PostgresError::InvalidUrl(_)), "{err}");
}

#[tokio::test]
async fn purge_deletes_only_expired_records() {
    let url = pg_server::fresh_database("purge").await;
    let store = store_at(&url).await;
    let short = Duration::from_millis(100);
    let long = Duration::from_secs(60);
    for n in 0..5 {
        acquire(
            &store,
            &RecordKey::new("p", format!("short-{n}")),
            &fingerprint(1),
            short,
        )
        .await;
    }
    let kept = RecordKey::new("p", "long");
    let token = acquire(&store, &kept, &fingerprint(1), long).await;
    store
        .complete(&kept, token, outcome("kept"), long)
        .await
        .unwrap();
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 5);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
    assert_completed(&store, &kept, &fingerprint(1), &outcome("kept")).await;
}

#[tokio::test]
async fn a_claim_that_waits_past_the_lock_timeout_is_in_flight() {
    // A completion being committed holds the record's row; a duplicate's
    // claim waits on it up to `lock_timeout`, then counts it in flight.
    let url = pg_server::fresh_database("lock_timeout").await;
    let store = PostgresStore::builder(&url)
        .lock_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = RecordKey::new("p", "k");
    acquire(&store, &key, &fingerprint(3), Duration::from_secs(60)).await;
    let mut holder = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1 FROM tower_reissue_records FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let claim = store
        .claim(&key, &fingerprint(3), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::InFlight { fingerprint } if fingerprint == self::fingerprint(3)),
        "{claim:?}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_waits_for_a_commit_replays_it() {
    // A completion's commit holds the record's row; a duplicate arriving
    // then waits for the commit and gets the stored result, not a 409.
    let url = pg_server::fresh_database("wait_commit").await;
    let store = store_at(&url).await;
    let key = RecordKey::new("p", "k");
    let token = acquire(&store, &key, &fingerprint(4), Duration::from_secs(60)).await;
    let mut holder = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    let done = sqlx::query(
        "UPDATE tower_reissue_records SET completed = true, outcome = $1, \
         expires_at = clock_timestamp() + interval '1 hour' WHERE key = 'k' AND token = $2",
    )
    .bind(&outcome("done").to_bytes()[..])
    .bind(token.get() as i64)
    .execute(&mut holder)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    let waiting = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move {
            store
                .claim(&key, &fingerprint(4), Duration::from_secs(60))
                .await
        })
    };
    // The claim is now waiting on the row's lock (its lock_timeout is 2 s).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the claim waits for the commit");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    let claim = waiting.await.unwrap().unwrap();
    assert!(
        matches!(&claim, Claim::Completed { outcome: stored, .. } if *stored == outcome("done")),
        "{claim:?}"
    );
}
