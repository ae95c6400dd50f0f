use std::fmt;

/// The per-attempt timeout elapsed before the server answered.
///
/// ```
/// use tower_reissue::retry::AttemptTimedOut;
/// assert_eq!(AttemptTimedOut.to_string(), "the attempt timed out");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptTimedOut;

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the attempt timed out")
    }
}

impl std::error::Error for AttemptTimedOut {}

/// The overall deadline passed while an attempt was in flight.
///
/// ```
/// use tower_reissue::retry::DeadlineExceeded;
/// assert_eq!(DeadlineExceeded.to_string(), "the request deadline passed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request deadline passed")
    }
}

impl std::error::Error for DeadlineExceeded {}
