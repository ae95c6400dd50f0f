//! Idempotency keys on the client side.

use http::{HeaderName, HeaderValue};
use std::fmt;

/// The `Idempotency-Key` header name.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The idempotency key of one logical request.
///
/// Found in request extensions (so the retry layer knows the request is safe
/// to repeat, whatever header name carries it) and in response extensions (so
/// callers can log or persist it). A key is 1 to 255 visible ASCII
/// characters.
///
/// ```
/// use tower_reissue::IdempotencyKey;
///
/// let key = IdempotencyKey::new("order-42").unwrap();
/// assert_eq!(key.as_str(), "order-42");
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("naïve").is_err());
///
/// let generated = IdempotencyKey::new_v4();
/// assert_eq!(generated.as_str().len(), 36);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    value: HeaderValue,
}

impl IdempotencyKey {
    /// Validates `key`: 1 to 255 visible ASCII characters (`0x21..=0x7e`).
    pub fn new(key: &str) -> Result<Self, InvalidIdempotencyKey> {
        Self::from_header_value(HeaderValue::from_str(key).map_err(|_| InvalidIdempotencyKey(()))?)
    }

    /// Validates a header value as a key (see [`IdempotencyKey::new`]).
    ///
    /// ```
    /// use http::HeaderValue;
    /// use tower_reissue::IdempotencyKey;
    /// let key = IdempotencyKey::from_header_value(HeaderValue::from_static("k1")).unwrap();
    /// assert_eq!(key.header_value(), &HeaderValue::from_static("k1"));
    /// ```
    pub fn from_header_value(value: HeaderValue) -> Result<Self, InvalidIdempotencyKey> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(InvalidIdempotencyKey(()));
        }
        Ok(IdempotencyKey { value })
    }

    /// A fresh random key (UUID v4).
    pub fn new_v4() -> Self {
        Self::from_uuid(uuid::Uuid::new_v4())
    }

    /// A fresh time-ordered key (UUID v7), friendlier to B-tree indexes.
    ///
    /// ```
    /// use tower_reissue::IdempotencyKey;
    /// let a = IdempotencyKey::new_v7();
    /// assert_ne!(a, IdempotencyKey::new_v7());
    /// ```
    pub fn new_v7() -> Self {
        Self::from_uuid(uuid::Uuid::now_v7())
    }

    fn from_uuid(id: uuid::Uuid) -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buf);
        IdempotencyKey {
            // A hyphenated UUID is always a valid header value.
            value: HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        // Validated as visible ASCII on construction.
        self.value.to_str().unwrap_or_default()
    }

    /// The key as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a valid idempotency key: keys are 1 to 255 visible
/// ASCII characters.
///
/// ```
/// use tower_reissue::IdempotencyKey;
/// let err = IdempotencyKey::new("has space").unwrap_err();
/// assert_eq!(err.to_string(), "an idempotency key must be 1 to 255 visible ASCII characters");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIdempotencyKey(());

impl fmt::Display for InvalidIdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an idempotency key must be 1 to 255 visible ASCII characters")
    }
}

impl std::error::Error for InvalidIdempotencyKey {}
