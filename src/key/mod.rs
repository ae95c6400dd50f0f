//! The idempotency key: its type, its header and its parsing, and the slot
//! that carries one logical request's key to every attempt.

mod header;

pub(crate) use header::{KeyError, parse};

use http::{HeaderName, HeaderValue};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

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
    /// Sent as a reference only: the server does not deduplicate on it.
    correlation_only: bool,
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
        Ok(IdempotencyKey {
            value,
            correlation_only: false,
        })
    }

    /// A fresh random key (UUID v4).
    pub fn new_v4() -> Self {
        // The thread-local CSPRNG of `rand` rather than `Uuid::new_v4`, which
        // asks the OS for every key: one system call per request.
        Self::from_uuid(uuid::Builder::from_random_bytes(rand::random()).into_uuid())
    }

    /// A fresh time-ordered key (UUID v7), friendlier to B-tree indexes.
    ///
    /// ```
    /// use tower_reissue::IdempotencyKey;
    /// let a = IdempotencyKey::new_v7();
    /// assert_ne!(a, IdempotencyKey::new_v7());
    /// ```
    pub fn new_v7() -> Self {
        // Millisecond order is what an index needs; the rest is random bits
        // from `rand`'s thread-local generator, as for v4.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self::from_uuid(
            uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid(),
        )
    }

    fn from_uuid(id: uuid::Uuid) -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buf);
        IdempotencyKey {
            // A hyphenated UUID is always a valid header value.
            value: HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("")),
            correlation_only: false,
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

    /// Marks the key as a correlation id only, for an API that stores it as
    /// a reference but does not deduplicate on it: the retry layer does not
    /// count a request carrying it as safe to repeat, and a
    /// [reconciler](crate::reconcile) can look the request up by it.
    ///
    /// ```
    /// use tower_reissue::IdempotencyKey;
    /// let reference = IdempotencyKey::new("ref-7").unwrap().correlation_only();
    /// assert!(reference.is_correlation_only());
    /// assert_eq!(reference.as_str(), "ref-7");
    /// ```
    pub fn correlation_only(mut self) -> Self {
        self.correlation_only = true;
        self
    }

    /// Whether the key is a correlation id only (see
    /// [`correlation_only`](IdempotencyKey::correlation_only)).
    pub fn is_correlation_only(&self) -> bool {
        self.correlation_only
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

/// Where one logical request keeps its key across attempts when the key layer
/// sits inside the retry layer: the retry layer makes it, the key layer fills
/// it on the first attempt (with the header name it uses) and reads it back.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySlot(Arc<OnceLock<(HeaderName, IdempotencyKey)>>);

/// Whether an [`IdempotencyKeyLayer`] has been made in this process. Until
/// one is, no request can meet one and the retry layer gives none a slot:
/// the slot and the extension map that carries it are most of what an
/// unkeyed POST costs that layer. A layer is made before the requests that
/// pass through it, and handed to them through whatever synchronises the
/// two, so a relaxed flag is seen in time.
static KEY_LAYER_MADE: AtomicBool = AtomicBool::new(false);

impl KeySlot {
    /// Records that an `IdempotencyKeyLayer` exists.
    pub(crate) fn layer_made() {
        KEY_LAYER_MADE.store(true, Ordering::Relaxed);
    }

    /// Whether a request may meet an `IdempotencyKeyLayer`, which is the
    /// only reader of slots.
    #[inline]
    pub(crate) fn may_be_read() -> bool {
        KEY_LAYER_MADE.load(Ordering::Relaxed)
    }

    /// The key and its header name, once an attempt has been given one.
    pub(crate) fn get(&self) -> Option<&(HeaderName, IdempotencyKey)> {
        self.0.get()
    }

    /// The slot's key, setting it to `key()` if it has none yet.
    pub(crate) fn get_or_init(
        &self,
        key: impl FnOnce() -> (HeaderName, IdempotencyKey),
    ) -> &IdempotencyKey {
        &self.0.get_or_init(key).1
    }

    /// Runs `call` with this slot visible to [`KeySlot::current`]. Request
    /// types whose extensions are out of reach (`reqwest::Request`) hand the
    /// slot over this way, for the span of the synchronous `Service::call`
    /// that passes the attempt down the stack.
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn lend<R>(slot: Option<&KeySlot>, call: impl FnOnce() -> R) -> R {
        let Some(slot) = slot else {
            return call();
        };
        let previous = LENT.with(|lent| lent.replace(Some(slot.clone())));
        // Restored even if `call` panics, so a slot never outlives its call.
        struct Restore(Option<KeySlot>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                LENT.with(|lent| *lent.borrow_mut() = previous);
            }
        }
        let _restore = Restore(previous);
        call()
    }

    /// The slot lent by the retry layer around the current call, if any.
    pub(crate) fn current() -> Option<KeySlot> {
        LENT.with(|lent| lent.borrow().clone())
    }
}

thread_local! {
    static LENT: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}
