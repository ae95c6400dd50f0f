//! Dead letters: the requests the retry layer gave up on, parked so that
//! nothing is lost.
//!
//! [`RetryLayer::dead_letters`](crate::RetryLayer::dead_letters) pushes every
//! give-up (except a [`Permanent`](crate::retry::GiveUpReason::Permanent) one,
//! whose answer the caller already has for good) to a [`DeadLetterQueue`]
//! with the whole request: method, URI, headers (credentials left out unless
//! [kept](DeadLetters::keep_header)), the body bytes the replay copy kept,
//! the idempotency key, why it gave up, how many attempts were made and how
//! the last one ended. A [`Replayer`] later sends the queued requests again
//! through the application's own client stack.
//!
//! Each entry is in one [state](DeadLetterState):
//!
//! ```text
//!            push                 lease                 complete(token)
//!   (new) ──────────▶ pending ──────────▶ leased ─────────────────────▶ replayed(status)
//!                                       ▲  │  │
//!         lease (once retry_at passed)  │  │  │ lease runs out: leasable again
//!             failed again ◀────────────┼──┘  └──────────────────────────▶ (re-leased)
//!                          fail(token)  │
//!   any state but replayed ── discard ──▶ discarded
//! ```
//!
//! [`MemoryQueue`] keeps entries in this process (tests, or where losing them
//! on restart is acceptable); `SqliteQueue` (feature `sqlite`) keeps them in
//! a SQLite file, durable on one machine and inspectable with `sqlite3`;
//! `RedisQueue` (feature `redis`) is shared by every instance using one Redis.

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod codec;
mod error;
mod memory;
mod model;
mod queue;
#[cfg(feature = "redis")]
mod redis;
mod replayer;
mod sink;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisQueue;
pub use codec::{
    decode_headers, decode_history, encode_headers, encode_history, from_millis, to_millis,
};
pub use error::QueueError;
pub use memory::MemoryQueue;
pub use model::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterState, FailedRequest, KeptBody,
    Lease, LeaseToken, Page, PageQuery, ReplayRecord, StateKind,
};
pub use queue::DeadLetterQueue;
pub use replayer::{DrainReport, ReplayOf, Replayer};
pub use sink::DeadLetters;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteQueue;
