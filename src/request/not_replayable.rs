use std::fmt;

/// Why a request's body cannot be sent again.
///
/// ```
/// use tower_reissue::retry::NotReplayable;
/// let reason = NotReplayable::TooLarge { limit: 65536 };
/// assert_eq!(reason.to_string(), "the request body is over the replay limit of 65536 bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotReplayable {
    /// The body was larger than the replay limit, so no copy was kept.
    TooLarge {
        /// The replay limit in bytes.
        limit: usize,
    },
    /// Reading the original body failed.
    BodyFailed,
    /// An earlier attempt still holds the unread rest of the body (for
    /// example a connection still writing it after the server answered).
    InUse,
    /// The request type cannot be copied (for example a `reqwest` request
    /// with a streaming body).
    Unclonable,
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReplayable::TooLarge { limit } => write!(
                f,
                "the request body is over the replay limit of {limit} bytes"
            ),
            NotReplayable::BodyFailed => f.write_str("reading the request body failed"),
            NotReplayable::InUse => {
                f.write_str("an earlier attempt still holds the rest of the request body")
            }
            NotReplayable::Unclonable => f.write_str("the request cannot be copied"),
        }
    }
}

impl std::error::Error for NotReplayable {}
