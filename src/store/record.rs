use std::borrow::Cow;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::LazyLock;

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

/// The hasher of [`RecordKey::stable_hash`], its key derived from the context
/// once rather than on every call.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
static TAG_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("tower-reissue 2026 record hash tag v1"));

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

    /// A hash of the principal and key that every process computes alike
    /// (unlike [`record_hash`](Self::record_hash), keyed per process): the
    /// hash tag of the record's key in Redis, so that every instance sends
    /// a record's commands to the same Redis Cluster slot. Computed on each
    /// call; only shared stores need it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn stable_hash(&self) -> u64 {
        // BLAKE3 in its key-derivation mode under a fixed context: the same
        // on every machine and in every release that keeps the context.
        // Lengths in front keep ("ab", "c") apart from ("a", "bc").
        let mut hasher = TAG_HASHER.clone();
        hasher.update(&(self.principal.len() as u64).to_le_bytes());
        hasher.update(self.principal.as_bytes());
        hasher.update(&(self.key.len() as u64).to_le_bytes());
        hasher.update(self.key.as_bytes());
        let bytes = hasher.finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// Whether a store's per-principal quotas apply: true for the requests
    /// [`IdempotencyLayer`](crate::IdempotencyLayer) claims, false for
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
    /// [`Principal`](crate::idempotency::Principal)).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The `Idempotency-Key` value, unquoted.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_is_the_same_everywhere() {
        // Fixed values: a change here changes every Redis key name, which
        // needs the upgrade procedure of a new prefix.
        let a = RecordKey::new("alice", "order-17");
        assert_eq!(
            a.stable_hash(),
            RecordKey::new("alice", "order-17").stable_hash()
        );
        assert_ne!(
            a.stable_hash(),
            RecordKey::new("alic", "eorder-17").stable_hash()
        );
        assert_ne!(
            a.stable_hash(),
            RecordKey::new("alice", "order-18").stable_hash()
        );
        assert_eq!(a.stable_hash(), STABLE_ALICE_ORDER_17);
    }

    const STABLE_ALICE_ORDER_17: u64 = 7_063_991_102_421_269_811;
}
