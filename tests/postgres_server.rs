//! The PostgreSQL test harness itself (see `pg_server`): a fresh database
//! takes writes, and a server this harness started can be taken down and
//! brought back with its data.
#![cfg(feature = "postgres")]

mod pg_server;

use std::time::Duration;

use pg_server::PgServer;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_fresh_database_takes_writes() {
    let url = pg_server::fresh_database("smoke").await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    // Text: the crate's sqlx has no date-time types.
    let now: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!now.is_empty());
    sqlx::raw_sql("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    for id in 0..3_i64 {
        sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("item {id}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 3);

    // Another fresh database does not see the table.
    let other = pg_server::fresh_database("smoke").await;
    assert_ne!(other, url);
    let mut conn = PgConnection::connect(&other).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'items'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_comes_back_with_its_data() {
    if pg_server::own_server().is_none() {
        eprintln!("skipped: DATABASE_URL names a server this harness cannot stop");
        return;
    }
    // A private server: stopping the shared one would fail the other tests.
    let server = PgServer::private();
    let url = pg_server::create_database(&server.url(), "down").await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();

    server.stop();
    assert!(!server.is_running());
    let lost = sqlx::query("SELECT 1").execute(&mut conn).await;
    assert!(lost.is_err(), "the old connection must be cut: {lost:?}");
    let refused = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url))
        .await
        .expect("a down server refuses at once");
    assert!(refused.is_err(), "connected to a stopped server");

    server.start();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 7);
}
