use std::error::Error as StdError;
use std::fmt;

/// Why a queue operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// The token does not hold the entry (any more): it was leased again,
    /// completed, failed or discarded. Nothing was changed.
    LeaseLost,
    /// The entry was replayed already; it cannot be discarded.
    Finished,
    /// The queue holds no entry with this id.
    NotFound,
    /// The queue could not be reached or did not answer; the operation's
    /// effect is unknown.
    Unavailable(Box<dyn StdError + Send + Sync>),
    /// The queue returned data this crate cannot decode.
    Corrupt(String),
}

impl QueueError {
    /// An [`Unavailable`](Self::Unavailable) error wrapping the cause.
    ///
    /// ```
    /// use tower_reissue::dead_letter::QueueError;
    /// let err = QueueError::unavailable(std::io::Error::other("disk full"));
    /// assert_eq!(err.to_string(), "dead-letter queue unavailable: disk full");
    /// ```
    pub fn unavailable(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        QueueError::Unavailable(cause.into())
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::LeaseLost => {
                f.write_str("dead-letter lease lost: leased again, finished or discarded")
            }
            QueueError::Finished => f.write_str("the dead letter was replayed already"),
            QueueError::NotFound => f.write_str("no such dead letter"),
            QueueError::Unavailable(cause) => write!(f, "dead-letter queue unavailable: {cause}"),
            QueueError::Corrupt(what) => {
                write!(f, "dead-letter queue returned corrupt data: {what}")
            }
        }
    }
}

impl StdError for QueueError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            QueueError::Unavailable(cause) => Some(&**cause),
            _ => None,
        }
    }
}

impl crate::error::Corrupt for QueueError {
    const KEEPS: &'static str = "stored dead letter";
    const CORRUPT: fn(String) -> Self = QueueError::Corrupt;
}
