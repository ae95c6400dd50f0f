//! Server-side idempotency: run each `Idempotency-Key` once, replay its result.

pub mod store;

pub use store::{IdempotencyStore, MemoryStore};
