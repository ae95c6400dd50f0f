//! Error types that several folders share: the middleware's boxed error and
//! the errors a classifier must recognise, whichever layer raised them.

mod circuit_open;
mod timeout;

pub use circuit_open::CircuitOpen;
pub use timeout::{AttemptTimedOut, DeadlineExceeded};

/// The error type of the middleware: the wrapped service's error, boxed, or
/// one of this crate's (such as [`AttemptTimedOut`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
