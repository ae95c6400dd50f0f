//! Who a request is from, so one client never sees another's stored reply.

use std::borrow::Cow;

use http::request::Parts;
use sha2::{Digest, Sha256};

/// The identity that scopes idempotency records.
///
/// Two requests share a record only if they carry the same key **and** the
/// same principal. Keep it stable per client and free of secrets: it is
/// stored as is.
///
/// ```
/// use tower_reissue::idempotency::Principal;
///
/// let a = Principal::from_credentials(b"Bearer alice");
/// assert_ne!(a, Principal::from_credentials(b"Bearer bob"));
/// assert_eq!(a.as_str().len(), 64); // hex SHA-256: the credential itself is not stored
/// assert_eq!(Principal::new("tenant-7").as_str(), "tenant-7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(Cow<'static, str>);

impl Principal {
    /// A principal with this identifier (a user or tenant id, for example).
    pub fn new(id: impl Into<String>) -> Self {
        Self(Cow::Owned(id.into()))
    }

    /// A principal derived from a credential: the hex SHA-256 of `credentials`.
    pub fn from_credentials(credentials: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(credentials);
        let mut hex = String::with_capacity(2 * digest.len());
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Self(Cow::Owned(hex))
    }

    /// The principal of requests without credentials.
    ///
    /// ```
    /// # use tower_reissue::idempotency::Principal;
    /// assert_eq!(Principal::anonymous().as_str(), "anonymous");
    /// ```
    pub fn anonymous() -> Self {
        Self(Cow::Borrowed("anonymous"))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_cow(self) -> Cow<'static, str> {
        self.0
    }
}

/// Finds the [`Principal`] of a request.
///
/// Implemented for [`AuthorizationPrincipal`] (the default) and for any
/// `Fn(&http::request::Parts) -> Principal + Clone + Send + Sync + 'static`,
/// so a closure can read a tenant header or an extension set by an
/// authentication layer:
///
/// ```
/// use tower_reissue::idempotency::{Principal, PrincipalExtractor};
///
/// let by_tenant = |parts: &http::request::Parts| {
///     parts
///         .headers
///         .get("x-tenant")
///         .and_then(|v| v.to_str().ok())
///         .map_or_else(Principal::anonymous, Principal::new)
/// };
/// let (parts, ()) = http::Request::builder().header("x-tenant", "t1").body(()).unwrap().into_parts();
/// assert_eq!(by_tenant.principal(&parts), Principal::new("t1"));
/// ```
pub trait PrincipalExtractor: Clone + Send + Sync + 'static {
    /// The principal `request` acts for.
    fn principal(&self, request: &Parts) -> Principal;
}

impl<F> PrincipalExtractor for F
where
    F: Fn(&Parts) -> Principal + Clone + Send + Sync + 'static,
{
    fn principal(&self, request: &Parts) -> Principal {
        self(request)
    }
}

/// The default [`PrincipalExtractor`]: a SHA-256 of the `Authorization`
/// header, or [`Principal::anonymous`] without one.
///
/// ```
/// use tower_reissue::idempotency::{AuthorizationPrincipal, Principal, PrincipalExtractor};
///
/// let (parts, ()) = http::Request::builder()
///     .header("authorization", "Bearer alice")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(
///     AuthorizationPrincipal.principal(&parts),
///     Principal::from_credentials(b"Bearer alice"),
/// );
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizationPrincipal;

impl PrincipalExtractor for AuthorizationPrincipal {
    fn principal(&self, request: &Parts) -> Principal {
        request
            .headers
            .get(http::header::AUTHORIZATION)
            .map_or_else(Principal::anonymous, |value| {
                Principal::from_credentials(value.as_bytes())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_give_the_lowercase_hex_of_their_sha256() {
        let credentials = b"Bearer alice";
        let expected: String = Sha256::digest(credentials)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(Principal::from_credentials(credentials).as_str(), expected);
        assert_eq!(
            Principal::from_credentials(b"").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
