//! `Once::run_in_transaction` on a `PostgresStore` (see `pg_server`): the
//! closure's writes commit with the stored value, a released failure rolls
//! them back, a stored one keeps them, and a store or handle without
//! transactions runs nothing.
#![cfg(feature = "postgres")]

mod pg_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tower_reissue::idempotency::PgTransaction;
use tower_reissue::idempotency::store::Fingerprint;
use tower_reissue::once::{Failure, OnceError, Ran};
use tower_reissue::{Once, PostgresStore};

/// A fresh database with an `effects` table (no unique constraint) and a
/// migrated store on it.
async fn setup(hint: &str, transactional: bool) -> (PostgresStore, PgPool) {
    let url = pg_server::fresh_database(hint).await;
    let store = PostgresStore::builder(&url)
        .transactional(transactional)
        .connect()
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let pool = PgPool::connect(&url).await.expect("pool");
    sqlx::query("CREATE TABLE effects (message_id bigint NOT NULL, note text NOT NULL)")
        .execute(&pool)
        .await
        .expect("create effects");
    (store, pool)
}

async fn rows(pool: &PgPool, message: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE message_id = $1")
        .bind(message)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// What the test closures return.
type Work = std::pin::Pin<Box<dyn Future<Output = Result<String, Failure<String>>> + Send>>;

/// A closure that INSERTs one row through the transaction, counts its runs,
/// and ends as `then` says.
fn insert(
    runs: &Arc<AtomicUsize>,
    message: i64,
    then: fn(String) -> Result<String, Failure<String>>,
) -> impl FnOnce(PgTransaction) -> Work {
    let runs = runs.clone();
    move |tx: PgTransaction| {
        Box::pin(async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let mut conn = tx
                .acquire()
                .await
                .map_err(|e| Failure::release(e.to_string()))?;
            sqlx::query("INSERT INTO effects (message_id, note) VALUES ($1, $2)")
                .bind(message)
                .bind(format!("run {run}"))
                .execute(&mut *conn)
                .await
                .map_err(|e| Failure::release(e.to_string()))?;
            then(format!("value of run {run}"))
        })
    }
}

#[tokio::test]
async fn the_row_commits_with_the_value_and_a_redelivery_replays() {
    let (store, pool) = setup("once_commit", true).await;
    let once = Once::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let fingerprint = Fingerprint::of("message 1");
    let first = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await
        .expect("first");
    assert_eq!(first, Ran::Executed("value of run 1".to_owned()));
    assert_eq!(rows(&pool, 1).await, 1);
    let again = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await
        .expect("again");
    assert_eq!(again, Ran::Replayed("value of run 1".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the closure ran once");
    assert_eq!(rows(&pool, 1).await, 1);
    // Another key is another unit of work.
    let other = once
        .run_in_transaction(
            "inbox",
            "message-2",
            Fingerprint::of("message 2"),
            insert(&runs, 2, Ok),
        )
        .await
        .expect("other");
    assert!(other.executed());
    assert_eq!(rows(&pool, 2).await, 1);
    // The same key for other work is refused, and runs nothing.
    let mismatch = once
        .run_in_transaction(
            "inbox",
            "message-1",
            Fingerprint::of("something else"),
            insert(&runs, 1, Ok),
        )
        .await;
    assert!(
        matches!(mismatch, Err(OnceError::FingerprintMismatch)),
        "{mismatch:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(rows(&pool, 1).await, 1);
}

#[tokio::test]
async fn a_released_failure_rolls_the_row_back_and_runs_again() {
    let (store, pool) = setup("once_release", true).await;
    let once = Once::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let fingerprint = Fingerprint::of("message 1");
    let failed = once
        .run_in_transaction(
            "inbox",
            "message-1",
            fingerprint,
            insert(&runs, 1, |_| {
                Err(Failure::release("mail refused".to_owned()))
            }),
        )
        .await;
    assert!(
        matches!(&failed, Err(OnceError::Failed(e)) if e == "mail refused"),
        "{failed:?}"
    );
    assert_eq!(rows(&pool, 1).await, 0, "the INSERT was rolled back");
    let again = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await
        .expect("again");
    assert_eq!(again, Ran::Executed("value of run 2".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(rows(&pool, 1).await, 1);
}

#[tokio::test]
async fn a_stored_failure_keeps_its_rows_and_the_failure() {
    let (store, pool) = setup("once_store", true).await;
    let once = Once::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let fingerprint = Fingerprint::of("message 1");
    let failed = once
        .run_in_transaction(
            "inbox",
            "message-1",
            fingerprint,
            insert(&runs, 1, |_| {
                Err(Failure::store("receipt not saved".to_owned()))
            }),
        )
        .await;
    assert!(
        matches!(&failed, Err(OnceError::Failed(e)) if e == "receipt not saved"),
        "{failed:?}"
    );
    assert_eq!(
        rows(&pool, 1).await,
        1,
        "the INSERT committed with the failure"
    );
    let again = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await;
    assert!(
        matches!(&again, Err(OnceError::StoredFailure(m)) if m.contains("receipt not saved")),
        "{again:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the closure did not run again"
    );
    assert_eq!(rows(&pool, 1).await, 1);
}

#[tokio::test]
async fn a_store_without_transactions_runs_nothing() {
    let (store, pool) = setup("once_not_transactional", false).await;
    let once = Once::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let fingerprint = Fingerprint::of("message 1");
    let refused = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await;
    assert!(
        matches!(refused, Err(OnceError::NotTransactional)),
        "{refused:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(rows(&pool, 1).await, 0);
    // The claim was released: `run` may take the key at once.
    let ran = once
        .run("inbox", "message-1", fingerprint, || async {
            Ok::<_, Failure<String>>(17)
        })
        .await
        .expect("run");
    assert_eq!(ran, Ran::Executed(17));
}

#[tokio::test]
async fn a_handle_of_another_type_runs_nothing() {
    let (store, pool) = setup("once_wrong_handle", true).await;
    let once = Once::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let fingerprint = Fingerprint::of("message 1");
    let counted = runs.clone();
    let refused = once
        .run_in_transaction(
            "inbox",
            "message-1",
            fingerprint,
            |_tx: String| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Failure<String>>(1)
            },
        )
        .await;
    assert!(
        matches!(refused, Err(OnceError::NotTransactional)),
        "{refused:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // The claim was released and the transaction rolled back: the right
    // handle runs at once.
    let ran = once
        .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
        .await
        .expect("right handle");
    assert!(ran.executed());
    assert_eq!(rows(&pool, 1).await, 1);
}

/// A worker dying mid-closure, in-process: the future is dropped after its
/// INSERT. The row goes with the transaction, and the key is free again.
#[tokio::test]
async fn a_dropped_closure_rolls_back_and_releases_the_key() {
    let (store, pool) = setup("once_dropped", true).await;
    let once = Once::new(store).lease(Duration::from_secs(30));
    let fingerprint = Fingerprint::of("message 1");
    let (inserted_tx, inserted) = tokio::sync::oneshot::channel();
    let pending = once.run_in_transaction(
        "inbox",
        "message-1",
        fingerprint,
        |tx: PgTransaction| async move {
            let mut conn = tx
                .acquire()
                .await
                .map_err(|e| Failure::release(e.to_string()))?;
            sqlx::query("INSERT INTO effects (message_id, note) VALUES (1, 'dropped')")
                .execute(&mut *conn)
                .await
                .map_err(|e| Failure::release(e.to_string()))?;
            drop(conn);
            let _ = inserted_tx.send(());
            std::future::pending::<()>().await;
            Ok::<_, Failure<String>>(0)
        },
    );
    tokio::select! {
        _ = pending => panic!("the closure never finishes"),
        _ = inserted => {}
    }
    // The rollback and the release happen in the background.
    let runs = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ran = loop {
        match once
            .run_in_transaction("inbox", "message-1", fingerprint, insert(&runs, 1, Ok))
            .await
        {
            Err(OnceError::InFlight) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.expect("after the drop"),
        }
    };
    assert!(ran.executed(), "released well before the 30 s lease");
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM effects WHERE message_id = 1")
        .fetch_all(&pool)
        .await
        .expect("notes");
    assert_eq!(
        notes,
        ["run 1"],
        "the dropped closure's row was rolled back"
    );
}
