//! IdempotencyLayer on a transactional `PostgresStore` over real HTTP: an
//! axum app on 127.0.0.1:0 whose handler writes through the layer's
//! transaction into a real PostgreSQL (see `pg_server`). Rows are counted
//! in the database: what a crash or a retry left behind is there to see.
#![cfg(feature = "postgres")]

mod pg_server;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_reissue::idempotency::PgTransaction;
use tower_reissue::idempotency::store::{IdempotencyStore, RecordKey};
use tower_reissue::{IdempotencyLayer, PostgresStore};

/// Inserts one row through the layer's transaction, then answers as the
/// `x-then` header says: `201` (default), `500`, `panic`, `escape` (keeps
/// the handle in a spawned task), `hold` (waits a long time).
async fn pay(
    tx: PgTransaction,
    headers: HeaderMap,
    body: String,
) -> Result<(StatusCode, String), StatusCode> {
    {
        let mut conn = tx.acquire().await.map_err(|_| StatusCode::IM_A_TEAPOT)?;
        sqlx::query("INSERT INTO payments (reference) VALUES ($1)")
            .bind(&body)
            .execute(&mut *conn)
            .await
            .map_err(|_| StatusCode::IM_A_TEAPOT)?;
    }
    match headers.get("x-then").map(|v| v.to_str().unwrap_or("")) {
        Some("500") => Err(StatusCode::INTERNAL_SERVER_ERROR),
        Some("failed-statement") => {
            // A statement fails and the handler answers anyway: the
            // transaction is aborted, so nothing of it can commit.
            let mut conn = tx.acquire().await.map_err(|_| StatusCode::IM_A_TEAPOT)?;
            let failed = sqlx::query("INSERT INTO no_such_table VALUES (1)")
                .execute(&mut *conn)
                .await;
            assert!(failed.is_err());
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        }
        Some("panic") => panic!("the handler panics after its write"),
        Some("escape") => {
            // Kept past the handler, where the test finds it.
            *KEPT.lock().unwrap() = Some(tx.clone());
            Ok((StatusCode::CREATED, body))
        }
        Some("hold") => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok((StatusCode::CREATED, body))
        }
        _ => Ok((StatusCode::CREATED, body)),
    }
}

/// The handle an `escape` request keeps past its handler.
static KEPT: std::sync::Mutex<Option<PgTransaction>> = std::sync::Mutex::new(None);

/// A handler that takes the transaction on a route without a key.
async fn no_key(_tx: PgTransaction) -> StatusCode {
    StatusCode::OK
}

struct Server {
    addr: SocketAddr,
    pool: PgPool,
    store: PostgresStore,
}

async fn serve() -> Server {
    serve_with(|layer| layer).await
}

/// A handler that ignores the transaction: its write autocommits on a
/// pool of its own, outside the guarantee.
async fn outside(
    axum::extract::State(pool): axum::extract::State<PgPool>,
    body: String,
) -> (StatusCode, String) {
    sqlx::query("INSERT INTO payments (reference) VALUES ($1)")
        .bind(&body)
        .execute(&pool)
        .await
        .unwrap();
    (StatusCode::CREATED, body)
}

async fn serve_with(
    configure: impl FnOnce(IdempotencyLayer<PostgresStore>) -> IdempotencyLayer<PostgresStore>,
) -> Server {
    let url = pg_server::fresh_database("http").await;
    let store = PostgresStore::builder(&url)
        .connect()
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    sqlx::raw_sql("CREATE TABLE payments (id bigserial PRIMARY KEY, reference text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let app = Router::new()
        .route("/payments", post(pay))
        .route("/open", post(no_key))
        .route("/outside", post(outside))
        .with_state(pool.clone())
        .layer(configure(IdempotencyLayer::new(store.clone())))
        // Outside the layer, as servers run it: a request past it is
        // answered 408 and its future (the handler's too) dropped.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(300),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, pool, store }
}

/// One HTTP/1.1 request on its own connection: (status, headers and body).
async fn post_raw(
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    then: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let key = key
        .map(|k| format!("idempotency-key: \"{k}\"\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\n{key}x-then: {then}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

async fn rows(pool: &PgPool, reference: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments WHERE reference = $1")
        .bind(reference)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether the key is free: a claim acquires it at once.
async fn released(store: &PostgresStore, key: &str) -> bool {
    let record = RecordKey::new("anonymous", key);
    let fingerprint = tower_reissue::idempotency::store::Fingerprint::of("probe");
    matches!(
        store
            .claim(&record, &fingerprint, Duration::from_secs(60))
            .await,
        Ok(tower_reissue::idempotency::store::Claim::Acquired(_))
    )
}

/// Sends the same keyed request twice: the first answer is `status`, the
/// second the same, replayed; the reference has one row.
async fn sent_twice_replays(
    server: &Server,
    path: &str,
    key: &str,
    then: &str,
    reference: &str,
    status: u16,
) {
    let (first, answer) = post_raw(server.addr, path, Some(key), then, reference).await;
    assert_eq!(first, status, "{answer}");
    let (again, answer) = post_raw(server.addr, path, Some(key), then, reference).await;
    assert_eq!(again, status, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{answer}"
    );
    assert_eq!(rows(&server.pool, reference).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_and_the_record_commit_together_and_replay() {
    let server = serve().await;
    sent_twice_replays(&server, "/payments", "k1", "201", "order-1", 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_rolls_the_write_back_and_releases_the_key() {
    let server = serve().await;
    let (status, _) = post_raw(server.addr, "/payments", Some("k2"), "500", "order-2").await;
    assert_eq!(status, 500);
    assert_eq!(rows(&server.pool, "order-2").await, 0);
    // The retry runs at once (no 409) and once.
    let (status, answer) = post_raw(server.addr, "/payments", Some("k2"), "201", "order-2").await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(rows(&server.pool, "order-2").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_the_write_back_and_releases_the_key() {
    let server = serve().await;
    let (status, _) = post_raw(server.addr, "/payments", Some("k3"), "panic", "order-3").await;
    assert_ne!(status, 201);
    // The rollback and release run on the runtime after the unwind.
    let mut waited = 0;
    while rows(&server.pool, "order-3").await != 0
        || !released_soon(&server, "k3", &mut waited).await
    {}
    let (status, answer) = post_raw(server.addr, "/payments", Some("k3"), "201", "order-3").await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(rows(&server.pool, "order-3").await, 1);
}

/// Polls the record (no claim) until the key is gone, for at most 5 s.
async fn released_soon(server: &Server, key: &str, waited: &mut u32) -> bool {
    let gone: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM tower_reissue_records WHERE key = $1)",
    )
    .bind(key)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    if !gone {
        *waited += 1;
        assert!(*waited < 500, "the key {key} was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handler_rolls_back_and_releases_the_key() {
    // The server's timeout gives up on the request and drops its future
    // while the handler holds its transaction, after its write.
    let server = serve().await;
    let (status, _) = post_raw(server.addr, "/payments", Some("k4"), "hold", "order-4").await;
    assert_eq!(status, 408);
    let mut waited = 0;
    while !released_soon(&server, "k4", &mut waited).await {}
    assert_eq!(rows(&server.pool, "order-4").await, 0);
    // The retry runs at once (no 409) and once.
    let (status, answer) = post_raw(server.addr, "/payments", Some("k4"), "201", "order-4").await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(rows(&server.pool, "order-4").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kept_past_the_handler_is_refused_and_rolled_back() {
    let server = serve().await;
    let (status, answer) =
        post_raw(server.addr, "/payments", Some("k5"), "escape", "order-5").await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("transaction-escaped"), "{answer}");
    assert_eq!(rows(&server.pool, "order-5").await, 0);
    assert!(released(&server.store, "k5").await);
    // The handle kept can no longer reach the transaction.
    let kept = KEPT
        .lock()
        .unwrap()
        .take()
        .expect("the handler kept its handle");
    assert!(kept.acquire().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_without_a_transaction_says_why() {
    let server = serve().await;
    let (status, answer) = post_raw(server.addr, "/open", None, "201", "").await;
    assert_eq!(status, 500);
    assert!(answer.contains("no idempotency transaction"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_5xx_commits_with_its_write() {
    // `store_server_errors`: the 500 is the result, stored and replayed,
    // and the write made before it commits with it.
    let server = serve_with(|layer| layer.store_server_errors()).await;
    sent_twice_replays(&server, "/payments", "k6", "500", "order-6", 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_the_transaction_still_works() {
    let server = serve().await;
    sent_twice_replays(&server, "/outside", "k7", "201", "order-7", 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_answers_as_the_handler_did_and_stores_nothing() {
    let server = serve().await;
    // 422 would be stored; the transaction it ran in cannot commit, so the
    // answer goes out unstored, and the key is released.
    let (status, answer) = post_raw(
        server.addr,
        "/payments",
        Some("k8"),
        "failed-statement",
        "order-8",
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(rows(&server.pool, "order-8").await, 0);
    let (status, answer) = post_raw(server.addr, "/payments", Some("k8"), "201", "order-8").await;
    assert_eq!(status, 201, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("idempotent-replayed"),
        "{answer}"
    );
    assert_eq!(rows(&server.pool, "order-8").await, 1);
}
