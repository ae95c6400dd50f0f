//! A payments server to crash on purpose: `POST /payments` with an
//! `Idempotency-Key` and `{"reference": "...", "amount": 100}` inserts one
//! row into `payments` and answers 201 `{"id": ..., "reference": ...}`.
//!
//! With `--store postgres` (the default) the row is written through the
//! layer's transaction ([`PgTransaction`]), so it commits with the
//! idempotency record; with `--store memory` or `--store redis` it is
//! autocommitted on a plain pool, apart from the record. Two headers hold
//! the request so that a test can kill the process at a known point:
//! `x-hold-ms` inside the handler (after the INSERT, before the commit) and
//! `x-hold-after-commit-ms` outside the layer (after the commit, before the
//! response is written). Each INSERT prints `inserted REFERENCE`.
//!
//! ```text
//! cargo run --example payments --features postgres -- \
//!     --database-url postgres://postgres@127.0.0.1/app [--listen 127.0.0.1:3000] \
//!     [--store postgres|memory|redis] [--redis-url redis://127.0.0.1] [--lease-ms 10000]
//! ```
//!
//! `--store redis` needs `--features postgres,redis`. See
//! `tests/postgres_crash.rs` for the crashes it is put through.

use std::io::Write;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, StatusCode, header};
use sqlx::PgPool;
use tower_reissue::idempotency::PgTransaction;
use tower_reissue::{IdempotencyLayer, MemoryStore, PostgresStore};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// postgres, memory or redis (with the `redis` feature).
    #[arg(long, default_value = "postgres")]
    store: String,
    #[arg(long, default_value = "redis://127.0.0.1/")]
    redis_url: String,
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// How long a handler may sit idle in its transaction before PostgreSQL
    /// ends it (`--store postgres`; default twice the lease).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Payment {
    reference: String,
    amount: i64,
}

/// Prints one line and flushes it: the tests read stdout as it comes.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn hold_of(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let ms = headers.get(name)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

async fn pay(
    State(pool): State<PgPool>,
    tx: Option<Extension<PgTransaction>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, [(header::HeaderName, &'static str); 1], String), StatusCode> {
    let payment: Payment = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let insert = sqlx::query_scalar::<_, i64>(
        "INSERT INTO payments (reference, amount) VALUES ($1, $2) RETURNING id",
    )
    .bind(&payment.reference)
    .bind(payment.amount);
    let id = match tx {
        Some(Extension(tx)) => {
            let mut conn = tx
                .acquire()
                .await
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
            insert.fetch_one(&mut *conn).await
        }
        None => insert.fetch_one(&pool).await,
    }
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    say(&format!("inserted {}", payment.reference));
    if let Some(hold) = hold_of(&headers, "x-hold-ms") {
        tokio::time::sleep(hold).await;
    }
    let answer = serde_json::json!({ "id": id, "reference": payment.reference });
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    ))
}

/// Outside the idempotency layer: holds the (already committed) response.
async fn hold_after_commit(request: Request, next: Next) -> Response {
    let hold = hold_of(request.headers(), "x-hold-after-commit-ms");
    let response = next.run(request).await;
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let lease = Duration::from_millis(args.lease_ms);
    let routes = |pool: PgPool| Router::new().route("/payments", post(pay)).with_state(pool);
    let (pool, app) = match args.store.as_str() {
        "postgres" => {
            let mut builder = PostgresStore::builder(&args.database_url).work_connections(100);
            if let Some(ms) = args.idle_timeout_ms {
                builder = builder.idle_timeout(Duration::from_millis(ms));
            }
            let store = builder.connect().await?;
            store.migrate().await?;
            let pool = store.pool().clone();
            let layer = IdempotencyLayer::new(store)
                .required_for([Method::POST])
                .lease(lease);
            (pool.clone(), routes(pool).layer(layer))
        }
        "memory" => {
            let pool = PgPool::connect(&args.database_url).await?;
            let layer = IdempotencyLayer::new(MemoryStore::new())
                .required_for([Method::POST])
                .lease(lease);
            (pool.clone(), routes(pool).layer(layer))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let pool = PgPool::connect(&args.database_url).await?;
            let store = tower_reissue::RedisStore::connect(&args.redis_url).await?;
            let layer = IdempotencyLayer::new(store)
                .required_for([Method::POST])
                .lease(lease);
            (pool.clone(), routes(pool).layer(layer))
        }
        other => return Err(format!("unknown --store {other} (postgres, memory, redis)").into()),
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS payments (id bigserial PRIMARY KEY, reference text NOT NULL, \
         amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let app = app.layer(from_fn(hold_after_commit));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    say(&format!("listening on http://{}", listener.local_addr()?));
    axum::serve(listener, app).await?;
    Ok(())
}
