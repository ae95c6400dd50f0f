use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The token does not hold the record (any more): its lease ran out, or
    /// the record was completed, released or taken over. Nothing was changed.
    LeaseLost,
    /// The store is at its size limit and holds only live in-flight records.
    Full,
    /// The claim's principal holds as many records as its quota allows (see
    /// [`MemoryStore`'s quotas](crate::MemoryStore#quotas)); nothing was changed.
    QuotaExceeded {
        /// When the principal may expect room again.
        retry_after: Duration,
    },
    /// The store could not be reached or did not answer; the operation's effect
    /// is unknown.
    Unavailable(Box<dyn StdError + Send + Sync>),
    /// The store returned data this crate cannot decode.
    Corrupt(String),
}

impl StoreError {
    /// An [`Unavailable`](Self::Unavailable) error wrapping the cause.
    ///
    /// ```
    /// use tower_reissue::idempotency::store::StoreError;
    ///
    /// let err = StoreError::unavailable(std::io::Error::other("connection refused"));
    /// assert_eq!(err.to_string(), "idempotency store unavailable");
    /// assert!(std::error::Error::source(&err).is_some());
    /// ```
    pub fn unavailable(cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError::Unavailable(cause.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::LeaseLost => {
                f.write_str("idempotency claim lost: lease expired or taken over")
            }
            StoreError::Full => f.write_str("idempotency store full of in-flight records"),
            StoreError::QuotaExceeded { retry_after } => write!(
                f,
                "idempotency quota of this principal exceeded; room again in {retry_after:?}"
            ),
            StoreError::Unavailable(_) => f.write_str("idempotency store unavailable"),
            StoreError::Corrupt(what) => {
                write!(f, "idempotency store returned corrupt data: {what}")
            }
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            StoreError::Unavailable(cause) => Some(&**cause),
            _ => None,
        }
    }
}

impl crate::error::Corrupt for StoreError {
    const KEEPS: &'static str = "stored record";
    const CORRUPT: fn(String) -> Self = StoreError::Corrupt;
}
