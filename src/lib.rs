//! Tower middleware that makes HTTP retries safe.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod idempotency;

pub use idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore};
