//! The storage contract behind [`IdempotencyLayer`](super::IdempotencyLayer).
//!
//! A store keeps one *record* per [`RecordKey`] (a principal plus an
//! `Idempotency-Key`). A record is either **in flight** (claimed by one request
//! that holds a lease and a [`FencingToken`]) or **completed** (it holds the
//! [`Outcome`] to replay until its time to live runs out).
//!
//! ```text
//!              claim (no live record)               complete(token)
//!   (absent) ───────────────────────▶ in flight ─────────────────────▶ completed
//!      ▲                               │   ▲  │                          │
//!      │          release(token)       │   └──┘ renew(token)             │
//!      ├───────────────────────────────┘                                 │
//!      │          lease runs out (the next claim takes over)             │
//!      ├─────────────────────────────────────────────────────────────────┘
//!                 ttl runs out
//! ```
//!
//! [`MemoryStore`] implements the trait for one process; `RedisStore` (feature
//! `redis`) shares records between many server instances. Any other shared
//! store (Postgres, DynamoDB...) follows the same contract, described on
//! [`IdempotencyStore`].

mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
#[cfg(all(fuzzing, feature = "redis"))]
pub(crate) use self::redis::parse_claim as parse_redis_claim;
#[cfg(feature = "redis")]
pub(crate) use self::redis::{connect_manager, within};
pub use memory::MemoryStore;

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The storage behind [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// # Contract
///
/// Every implementation must provide these guarantees; the layer's
/// exactly-once behaviour rests on them. "Now" is the store's own clock.
///
/// * A record is **live** while it is in flight and `now < lease end`, or
///   completed and `now < completion time + ttl`. A record that is not live
///   behaves exactly as if it were absent (it may be deleted lazily or
///   eagerly; the difference must not be observable).
/// * [`claim`](Self::claim) is **atomic** with respect to every other
///   operation on the same key: of any number of concurrent claims of a key
///   without a live record, exactly one returns [`Claim::Acquired`]; the
///   others see [`Claim::InFlight`] (or [`Claim::Completed`] if the winner has
///   already completed). The acquired record's lease ends `lease` after the
///   claim, and it stores `fingerprint`, which later claims get back so the
///   caller can tell a reused key from a genuine duplicate. A claim never
///   changes a live record.
/// * **Fencing.** Every successful claim returns a [`FencingToken`] that has
///   never been returned before for that key (a store-wide counter that only
///   grows is the usual choice). [`complete`](Self::complete),
///   [`renew`](Self::renew) and [`release`](Self::release) succeed only when
///   the key's record is in flight, **live**, and was acquired with exactly
///   that token; otherwise they change nothing and return
///   [`StoreError::LeaseLost`]. So a worker whose lease ran out (paused by GC,
///   cut off by a partition, or simply slow) can never overwrite, extend or
///   delete the record of the request that took over after it, and its late
///   result is never stored.
/// * [`complete`](Self::complete) atomically turns the record into a
///   completed one holding `outcome`, live for `ttl` from now, and keeps the
///   fingerprint given at claim time. Later claims return it, byte for byte.
/// * [`renew`](Self::renew) moves the lease end to `now + lease`.
/// * [`release`](Self::release) removes the record, so the next claim is
///   acquired at once.
/// * Errors other than [`StoreError::LeaseLost`] mean the operation's effect
///   is unknown (for example a timeout); the layer then treats the store as
///   unavailable. A store never panics on any input.
/// * A store may bound its size. When it cannot take a new record it fails
///   the claim with [`StoreError::Full`]; it must never drop a live in-flight
///   record to make room (that would allow a second execution), but it may
///   drop completed records early, and it should drop records that are no
///   longer live first. It may bound what one principal holds, failing that
///   principal's claims with [`StoreError::QuotaExceeded`] rather than
///   dropping anyone else's records.
///
/// The futures must be `Send` so the layer can be used on a multi-threaded
/// runtime; writing the methods as `async fn` in the `impl` works.
///
/// # Implementing a store
///
/// A shared store maps each operation to one atomic step: for Redis a Lua
/// script (`RedisStore`, feature `redis`: a token counter and `PEXPIRE` for
/// `claim`, token-checking scripts for the others); for SQL an `INSERT ... ON CONFLICT` plus
/// `UPDATE ... WHERE token = $1 AND lease_end > now()`. [`Outcome::to_bytes`]
/// and [`Outcome::from_bytes`] give a compact encoding of a stored result, and
/// [`Fingerprint::as_bytes`] / [`Fingerprint::from_bytes`] one for the
/// fingerprint.
///
/// Each keyed request keeps the store's futures in its own state, which is
/// allocated once per request; a small future keeps that allocation cheap.
/// An `async fn` keeps a second copy of its arguments in its future, an
/// `async` block returned by a plain function keeps one (`MemoryStore`
/// does this; `async fn`, as below, is fine for a networked store).
///
/// # Example
///
/// A store that forwards to another store and counts claims:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::idempotency::store::{
///     Claim, FencingToken, Fingerprint, IdempotencyStore, Outcome, RecordKey, StoreError,
/// };
///
/// #[derive(Clone, Default)]
/// struct Counting {
///     inner: MemoryStore,
///     claims: Arc<AtomicUsize>,
/// }
///
/// impl IdempotencyStore for Counting {
///     async fn claim(
///         &self,
///         key: &RecordKey,
///         fingerprint: &Fingerprint,
///         lease: Duration,
///     ) -> Result<Claim, StoreError> {
///         self.claims.fetch_add(1, Ordering::Relaxed);
///         self.inner.claim(key, fingerprint, lease).await
///     }
///     async fn complete(
///         &self,
///         key: &RecordKey,
///         token: FencingToken,
///         outcome: Outcome,
///         ttl: Duration,
///     ) -> Result<(), StoreError> {
///         self.inner.complete(key, token, outcome, ttl).await
///     }
///     async fn renew(
///         &self,
///         key: &RecordKey,
///         token: FencingToken,
///         lease: Duration,
///     ) -> Result<(), StoreError> {
///         self.inner.renew(key, token, lease).await
///     }
///     async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
///         self.inner.release(key, token).await
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = Counting::default();
/// let key = RecordKey::new("principal", "key-1");
/// let fingerprint = Fingerprint::from_bytes([7; 32]);
/// let Claim::Acquired(token) = store.claim(&key, &fingerprint, Duration::from_secs(60)).await? else {
///     panic!("a fresh key is acquired");
/// };
/// assert!(matches!(
///     store.claim(&key, &fingerprint, Duration::from_secs(60)).await?,
///     Claim::InFlight { .. }
/// ));
/// store.release(&key, token).await?;
/// assert_eq!(store.claims.load(Ordering::Relaxed), 2);
/// # Ok::<_, StoreError>(())
/// # }).unwrap();
/// ```
pub trait IdempotencyStore: Clone + Send + Sync + 'static {
    /// Claims `key` for one execution, or reports the live record that holds it.
    ///
    /// See the [trait documentation](IdempotencyStore#contract) for atomicity
    /// and fencing.
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Stores the result of the execution that holds `token`, live for `ttl`.
    fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: Outcome,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the lease held with `token` to `lease` from now.
    fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives up the claim held with `token`, so the key can execute again.
    fn release(
        &self,
        key: &RecordKey,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Identifies one record: who sent the request and which key it carried.
///
/// ```
/// use tower_reissue::idempotency::store::RecordKey;
///
/// let key = RecordKey::new("3f2a", "order-17");
/// assert_eq!(key.principal(), "3f2a");
/// assert_eq!(key.key(), "order-17");
/// ```
#[derive(Clone, Debug)]
pub struct RecordKey {
    // Borrowed for a principal every request shares, such as
    // `Principal::anonymous`: no copy per request.
    principal: Cow<'static, str>,
    key: String,
    // Whether the principal is a client, subject to a store's quotas (see
    // `MemoryStore`); a `Once` scope is not. Not part of the identity.
    client: bool,
    // The keyed SipHash of the principal, and of the principal and key,
    // computed once: a store looks a key up several times per request.
    principal_hash: u64,
    hash: u64,
}

/// One random SipHash key for the whole process: keys are chosen by clients,
/// so their hashes must not be predictable.
static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// The hashes of `principal` and of `(principal, key)`, from one pass over
/// the principal.
fn hashes(principal: &str, key: &str) -> (u64, u64) {
    let mut hasher = KEY_HASHER.build_hasher();
    principal.hash(&mut hasher);
    let principal_hash = hasher.clone().finish();
    key.hash(&mut hasher);
    (principal_hash, hasher.finish())
}

impl PartialEq for RecordKey {
    fn eq(&self, other: &Self) -> bool {
        (&self.principal, &self.key) == (&other.principal, &other.key)
    }
}

impl Eq for RecordKey {}

impl Hash for RecordKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for RecordKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RecordKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.principal, &self.key).cmp(&(&other.principal, &other.key))
    }
}

impl RecordKey {
    /// A record key from a principal and an idempotency key.
    pub fn new(principal: impl Into<String>, key: impl Into<String>) -> Self {
        Self::with_client(Cow::Owned(principal.into()), key.into(), false)
    }

    /// The key of a request from a client, whose principal a store may hold
    /// to quotas.
    pub(crate) fn of_client(principal: Cow<'static, str>, key: String) -> Self {
        Self::with_client(principal, key, true)
    }

    fn with_client(principal: Cow<'static, str>, key: String, client: bool) -> Self {
        let (principal_hash, hash) = hashes(&principal, &key);
        Self {
            principal,
            key,
            client,
            principal_hash,
            hash,
        }
    }

    /// The principal as held, borrowed when it is shared by every request.
    pub(crate) fn shared_principal(&self) -> &Cow<'static, str> {
        &self.principal
    }

    /// The keyed hash of the principal alone.
    pub(crate) fn principal_hash(&self) -> u64 {
        self.principal_hash
    }

    /// The keyed hash of the principal and key, the one `Hash` writes.
    pub(crate) fn record_hash(&self) -> u64 {
        self.hash
    }

    /// Whether a store's per-principal quotas apply: true for the requests
    /// [`IdempotencyLayer`](super::IdempotencyLayer) claims, false for
    /// [`Once`](crate::once::Once) runs and keys made with
    /// [`new`](Self::new).
    ///
    /// ```
    /// use tower_reissue::idempotency::store::RecordKey;
    ///
    /// assert!(!RecordKey::new("welcome-email", "user-17").is_client());
    /// ```
    pub fn is_client(&self) -> bool {
        self.client
    }

    /// The principal the record belongs to (see
    /// [`Principal`](super::Principal)).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The `Idempotency-Key` value, unquoted.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A BLAKE3 digest of what a request asked for: method, path, query and body.
///
/// BLAKE3 rather than SHA-256: it is as strong, and fast on every CPU, while
/// SHA-256 is fast only where the CPU has SHA extensions (in software it is
/// about 3,500 instructions per 64-byte block, on the path of every keyed
/// request).
///
/// The same key sent with a different fingerprint is a client bug (a key
/// reused for another operation) and is answered with 422.
///
/// ```
/// use tower_reissue::idempotency::store::Fingerprint;
///
/// let a = Fingerprint::of_request(&http::Method::POST, &"/emails?x=1".parse().unwrap(), b"hi");
/// let b = Fingerprint::of_request(&http::Method::POST, &"/emails?x=2".parse().unwrap(), b"hi");
/// assert_ne!(a, b);
/// assert_eq!(Fingerprint::from_bytes(*a.as_bytes()), a);
/// assert_eq!(a.to_string().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request with this method, URI and body.
    ///
    /// Only the path and query of `uri` count, so the same request seen
    /// through an absolute-form URI has the same fingerprint.
    pub fn of_request(method: &http::Method, uri: &http::Uri, body: &[u8]) -> Self {
        // One pass over everything, the body included: a separate digest of
        // the body would cost more compressions for a small request. The
        // body comes last, so it needs no length; the other fields' lengths
        // keep their boundaries unambiguous, and four bytes hold them (the
        // `http` crate keeps a URI under 64 KiB, and no server reads a 4 GiB
        // method).
        let fields = [
            method.as_str().as_bytes(),
            uri.path().as_bytes(),
            uri.query().unwrap_or("").as_bytes(),
        ];
        let mut hasher = blake3::Hasher::new();
        // Every update has a fixed cost, so a usual head (method, path and
        // query with their lengths) goes in as one.
        let mut head = [0u8; 192];
        if fields.iter().map(|field| 4 + field.len()).sum::<usize>() <= head.len() {
            let mut at = 0;
            for field in fields {
                head[at..at + 4].copy_from_slice(&(field.len() as u32).to_be_bytes());
                head[at + 4..at + 4 + field.len()].copy_from_slice(field);
                at += 4 + field.len();
            }
            hasher.update(&head[..at]);
        } else {
            for field in fields {
                hasher.update(&(field.len() as u32).to_be_bytes());
                hasher.update(field);
            }
        }
        hasher.update(body);
        Self(hasher.finalize().into())
    }

    /// The fingerprint of an arbitrary payload, such as a queue message's
    /// body: its BLAKE3 digest.
    ///
    /// ```
    /// use tower_reissue::idempotency::store::Fingerprint;
    ///
    /// assert_eq!(Fingerprint::of(b"welcome alice"), Fingerprint::of("welcome alice"));
    /// assert_ne!(Fingerprint::of("welcome alice"), Fingerprint::of("welcome bob"));
    /// ```
    pub fn of(payload: impl AsRef<[u8]>) -> Self {
        Self(blake3::hash(payload.as_ref()).into())
    }

    /// A fingerprint from its 32 raw bytes, as read back from a store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Proof of holding a claim; see [fencing](IdempotencyStore#contract).
///
/// ```
/// use tower_reissue::idempotency::store::FencingToken;
///
/// assert_eq!(FencingToken::new(42).get(), 42);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with this value.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Clone, Debug)]
pub enum Claim {
    /// There was no live record: the caller now holds the key and must run the
    /// request, then [`complete`](IdempotencyStore::complete) or
    /// [`release`](IdempotencyStore::release) it with this token.
    Acquired(FencingToken),
    /// Another request holds the key and has not finished.
    InFlight {
        /// The fingerprint of the request holding the key.
        fingerprint: Fingerprint,
    },
    /// The key's request has finished and its outcome is stored.
    Completed {
        /// The fingerprint of the request that produced `outcome`.
        fingerprint: Fingerprint,
        /// The stored outcome.
        outcome: Outcome,
    },
}

/// The stored result of a completed request or [`Once`](crate::once::Once) run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The response, replayed to every duplicate.
    Response(StoredResponse),
    /// The request ran, but its response could not be kept (its body was over
    /// the layer's `max_body`, or it carried trailers). Duplicates get an
    /// error instead of a second execution.
    NotStored {
        /// The status the original response had.
        status: StatusCode,
    },
    /// The value a [`Once`](crate::once::Once) run returned, as JSON.
    Value(Bytes),
    /// A [`Once`](crate::once::Once) run that failed after taking effect
    /// (see [`Failure::store`](crate::once::Failure::store)), kept so it does
    /// not run again: the error's message.
    Failed(String),
}

/// A response as kept in a store: status, headers and the whole body.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers (without connection-level headers).
    pub headers: HeaderMap,
    /// The full response body.
    pub body: Bytes,
}

const ENCODING_VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 0;
const KIND_NOT_STORED: u8 = 1;
const KIND_VALUE: u8 = 2;
const KIND_FAILED: u8 = 3;

impl Outcome {
    /// A compact, self-describing binary encoding, for stores that keep bytes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{HeaderMap, StatusCode};
    /// use tower_reissue::idempotency::store::{Outcome, StoredResponse};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("content-type", "text/plain".parse().unwrap());
    /// let outcome = Outcome::Response(StoredResponse {
    ///     status: StatusCode::CREATED,
    ///     headers,
    ///     body: Bytes::from_static(b"done"),
    /// });
    /// assert_eq!(Outcome::from_bytes(&outcome.to_bytes()).unwrap(), outcome);
    /// ```
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(ENCODING_VERSION);
        match self {
            Outcome::NotStored { status } => {
                out.put_u8(KIND_NOT_STORED);
                out.put_u16(status.as_u16());
            }
            Outcome::Response(response) => {
                out.put_u8(KIND_RESPONSE);
                out.put_u16(response.status.as_u16());
                out.put_u32(response.headers.len() as u32);
                for (name, value) in &response.headers {
                    out.put_u32(name.as_str().len() as u32);
                    out.put_slice(name.as_str().as_bytes());
                    out.put_u32(value.len() as u32);
                    out.put_slice(value.as_bytes());
                }
                out.put_slice(&response.body);
            }
            Outcome::Value(value) => {
                out.put_u8(KIND_VALUE);
                out.put_slice(value);
            }
            Outcome::Failed(message) => {
                out.put_u8(KIND_FAILED);
                out.put_slice(message.as_bytes());
            }
        }
        out.freeze()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) produced.
    ///
    /// Anything else is a [`StoreError::Corrupt`], never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut input = bytes;
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored outcome: {what}"));
        if input.remaining() < 2 {
            return Err(corrupt("truncated header"));
        }
        if input.get_u8() != ENCODING_VERSION {
            return Err(corrupt("unknown encoding version"));
        }
        let kind = input.get_u8();
        match kind {
            KIND_VALUE => return Ok(Outcome::Value(Bytes::copy_from_slice(input))),
            KIND_FAILED => {
                return String::from_utf8(input.to_vec())
                    .map(Outcome::Failed)
                    .map_err(|_| corrupt("failure message is not UTF-8"));
            }
            _ => {}
        }
        if input.remaining() < 2 {
            return Err(corrupt("truncated header"));
        }
        let status =
            StatusCode::from_u16(input.get_u16()).map_err(|_| corrupt("invalid status"))?;
        match kind {
            KIND_NOT_STORED if input.is_empty() => Ok(Outcome::NotStored { status }),
            KIND_RESPONSE => {
                let count = take_len(&mut input).ok_or_else(|| corrupt("truncated headers"))?;
                let mut headers = HeaderMap::with_capacity(count.min(64));
                for _ in 0..count {
                    let name = take_field(&mut input).ok_or_else(|| corrupt("truncated header"))?;
                    let value =
                        take_field(&mut input).ok_or_else(|| corrupt("truncated header"))?;
                    let name =
                        HeaderName::from_bytes(name).map_err(|_| corrupt("invalid header name"))?;
                    let value = HeaderValue::from_bytes(value)
                        .map_err(|_| corrupt("invalid header value"))?;
                    headers
                        .try_append(name, value)
                        .map_err(|_| corrupt("too many headers"))?;
                }
                Ok(Outcome::Response(StoredResponse {
                    status,
                    headers,
                    body: Bytes::copy_from_slice(input),
                }))
            }
            _ => Err(corrupt("unknown kind")),
        }
    }
}

fn take_len(input: &mut &[u8]) -> Option<usize> {
    (input.remaining() >= 4).then(|| input.get_u32() as usize)
}

fn take_field<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_len(input)?;
    let bytes: &'a [u8] = input;
    if bytes.len() < len {
        return None;
    }
    let (field, rest) = bytes.split_at(len);
    *input = rest;
    Some(field)
}

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
    /// [`MemoryStore`'s quotas](MemoryStore#quotas)); nothing was changed.
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

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    /// The documented encoding: each of method, path and query after its
    /// length in four bytes, then the body.
    fn expected(method: &str, path: &str, query: &str, body: &[u8]) -> Fingerprint {
        let mut encoded = Vec::new();
        for field in [method, path, query] {
            encoded.extend_from_slice(&(field.len() as u32).to_be_bytes());
            encoded.extend_from_slice(field.as_bytes());
        }
        encoded.extend_from_slice(body);
        Fingerprint(blake3::hash(&encoded).into())
    }

    #[test]
    fn a_short_and_a_long_request_hash_the_same_encoding() {
        let long_path = format!("/emails/{}", "x".repeat(300));
        for (path, query) in [("/emails", "to=ada"), (long_path.as_str(), "to=ada")] {
            let uri: http::Uri = format!("http://api.example{path}?{query}").parse().unwrap();
            assert_eq!(
                Fingerprint::of_request(&http::Method::POST, &uri, b"{}"),
                expected("POST", path, query, b"{}"),
                "{path}"
            );
        }
    }
}
