use std::fmt;

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
