//! The shared dead-letter queue conformance suite against `MemoryQueue` and
//! `SqliteQueue` (on real files), plus what is particular to SQLite: the
//! file outlives the queue, and its schema version is checked.

use tower_reissue::conformance::queue as dead_letter_conformance;
use tower_reissue::dead_letter::MemoryQueue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_meets_the_contract() {
    dead_letter_conformance::check_contract(|| async { MemoryQueue::new() }).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use tower_reissue::dead_letter::{
        DeadLetterQueue, DeadLetterState, PageQuery, QueueError, SqliteQueue, StateKind,
    };

    use tower_reissue::conformance::queue::{self as dead_letter_conformance, request};

    /// A fresh file under Cargo's per-target temporary directory.
    fn fresh_file(name: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "dead-letters-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_queue_meets_the_contract() {
        dead_letter_conformance::check_contract(|| async {
            SqliteQueue::open(fresh_file("queue.sqlite")).await.unwrap()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_never_share_a_lease() {
        // Two connections, as two processes would have.
        dead_letter_conformance::check_contract(|| async {
            let path = fresh_file("shared.sqlite");
            let a = SqliteQueue::open(&path).await.unwrap();
            let b = SqliteQueue::open(&path).await.unwrap();
            dead_letter_conformance::Either::new(a, b)
        })
        .await;
    }

    #[tokio::test]
    async fn entries_survive_reopening_the_file() {
        let path = fresh_file("reopen.sqlite");
        let queue = SqliteQueue::open(&path).await.unwrap();
        let kept = queue
            .push(request("api.example", "not_safe", 1))
            .await
            .unwrap();
        let replayed = queue
            .push(request("api.example", "not_safe", 2))
            .await
            .unwrap();
        let leases = queue
            .lease(2, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        queue
            .complete(replayed, leases[1].token, StatusCode::OK)
            .await
            .unwrap();
        drop(queue);

        let queue = SqliteQueue::open(&path).await.unwrap();
        let entry = queue.get(kept).await.unwrap().unwrap();
        assert_eq!(entry.request, request("api.example", "not_safe", 1));
        assert!(matches!(entry.state, DeadLetterState::Leased { .. }));
        assert_eq!(
            queue.get(replayed).await.unwrap().unwrap().state,
            DeadLetterState::Replayed {
                status: StatusCode::OK
            }
        );
        let counts = queue.counts().await.unwrap();
        assert_eq!(counts.state(StateKind::Leased), 1);
        assert_eq!(counts.state(StateKind::Replayed), 1);
        // New ids continue after the old ones.
        let next = queue
            .push(request("api.example", "not_safe", 3))
            .await
            .unwrap();
        assert!(next > replayed);
        let page = queue.page(&PageQuery::new(10)).await.unwrap();
        assert_eq!(page.entries.len(), 3);
    }

    #[tokio::test]
    async fn a_newer_schema_or_a_foreign_file_is_refused() {
        let path = fresh_file("newer.sqlite");
        drop(SqliteQueue::open(&path).await.unwrap());
        set_user_version(&path, 2);
        let err = SqliteQueue::open(&path).await.unwrap_err();
        assert!(matches!(err, QueueError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("schema version 2"), "{err}");

        let path = fresh_file("not-a-database.sqlite");
        std::fs::write(
            &path,
            b"this is not a SQLite file, it is a text file of some length",
        )
        .unwrap();
        let err = SqliteQueue::open(&path).await.unwrap_err();
        assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
    }

    /// Sets the file's schema version as a newer release would.
    fn set_user_version(path: &std::path::Path, version: u32) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "user_version", version).unwrap();
    }
}
