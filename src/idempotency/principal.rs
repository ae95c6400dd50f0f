//! Who a request is from, so one client never sees another's stored reply.

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
pub struct Principal(String);

impl Principal {
    /// A principal with this identifier (a user or tenant id, for example).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// A principal derived from a credential: the hex SHA-256 of `credentials`.
    pub fn from_credentials(credentials: &[u8]) -> Self {
        let digest = Sha256::digest(credentials);
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The principal of requests without credentials.
    ///
    /// ```
    /// # use tower_reissue::idempotency::Principal;
    /// assert_eq!(Principal::anonymous().as_str(), "anonymous");
    /// ```
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
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
