//! Error types that several folders share: the middleware's boxed error and
//! the errors a classifier must recognise, whichever layer raised them.

mod circuit_open;
mod timeout;

pub use circuit_open::CircuitOpen;
pub use timeout::{AttemptTimedOut, DeadlineExceeded};

/// The error type of the middleware: the wrapped service's error, boxed, or
/// one of this crate's (such as [`AttemptTimedOut`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error type with a variant for stored data this crate cannot decode.
/// The message is written here, once for every store and queue.
#[cfg_attr(
    not(any(feature = "redis", feature = "sqlite", feature = "postgres")),
    allow(
        dead_code,
        reason = "only the stores and queues behind features decode stored data"
    )
)]
pub(crate) trait Corrupt: Sized {
    /// What the owner keeps, leading the message (`redis record`).
    const KEEPS: &'static str;

    /// The variant for data this crate cannot decode.
    const CORRUPT: fn(String) -> Self;

    /// The store holds something that is not what the owner keeps:
    /// `{KEEPS}: {what}`.
    fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::CORRUPT(format!("{}: {what}", Self::KEEPS))
    }
}
