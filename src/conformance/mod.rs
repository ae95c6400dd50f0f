//! The contract tests every store and queue must pass, for anyone writing
//! their own [`IdempotencyStore`](crate::IdempotencyStore) or
//! [`DeadLetterQueue`](crate::DeadLetterQueue) (on DynamoDB, MySQL, ...).
//!
//! The crate runs these same suites against its own `MemoryStore`,
//! `RedisStore`, `MemoryQueue`, `SqliteQueue` and `RedisQueue`, so a store
//! that passes them behaves as the built-in ones do in every rule the
//! middleware relies on:
//!
//! - [`store`]: claims, fencing tokens, leases and their renewal, completion
//!   with an outcome kept byte for byte, release, time to live, and
//!   concurrent claims of one key ([`store::check_contract`],
//!   [`store::check_concurrent_claims`]);
//! - [`queue`]: entries given back exactly, exclusive leases (also between
//!   two handles on one shared queue, with [`queue::Either`]), fencing,
//!   failures and their history, discarding, paging, counts and purging
//!   ([`queue::check_contract`]).
//!
//! Enable the `conformance` feature in your dev-dependencies and call a suite
//! from a test; a failed rule panics with what was expected and what the
//! store answered:
//!
//! ```toml
//! [dev-dependencies]
//! tower-reissue = { version = "0.1", features = ["conformance"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "test-util"] }
//! ```
//!
//! ```
//! use tower_reissue::conformance::store::{Timing, check_concurrent_claims, check_contract};
//! use tower_reissue::MemoryStore;
//!
//! // In your crate: `#[tokio::test(start_paused = true)]` on an `async fn`.
//! #[tokio::main(flavor = "current_thread", start_paused = true)]
//! async fn main() {
//!     // On tokio's paused clock, the suite's waits cost no real time; a
//!     // store on another clock (a database's) runs with `Timing::REAL`.
//!     check_contract(&MemoryStore::new(), Timing::PAUSED).await;
//!     check_concurrent_claims(&MemoryStore::new()).await;
//! }
//! ```
//!
//! The queue suite takes a factory, since each of its checks starts from an
//! empty queue:
//!
//! ```
//! use tower_reissue::MemoryQueue;
//! use tower_reissue::conformance::queue::check_contract;
//!
//! #[tokio::main]
//! async fn main() {
//!     check_contract(|| async { MemoryQueue::new() }).await;
//! }
//! ```
//!
//! The suites need a tokio runtime (they spawn tasks and sleep) and take
//! about half a second of real time each on a real clock.

pub mod queue;
pub mod store;
