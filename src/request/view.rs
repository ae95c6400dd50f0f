use http::{Extensions, HeaderMap, Method, Uri};
use std::fmt;

use crate::key::{IDEMPOTENCY_KEY, IdempotencyKey};

/// What a classifier may know about the request behind an attempt.
///
/// ```
/// use http::{HeaderMap, Method, Uri};
/// use tower_reissue::classify::RequestView;
///
/// let uri = Uri::from_static("http://api.example/emails");
/// let mut headers = HeaderMap::new();
/// headers.insert("idempotency-key", "k-1".parse().unwrap());
/// let view = RequestView::new(&Method::POST, &uri, &headers);
/// assert!(view.has_idempotency_key());
/// assert!(!view.is_idempotent_method());
/// assert_eq!(view.attempt(), 1);
/// ```
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: Option<&'a Extensions>,
    attempt: u32,
}

impl<'a> RequestView<'a> {
    /// A view of a request on its first attempt.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        RequestView {
            method,
            uri,
            headers,
            extensions: None,
            attempt: 1,
        }
    }

    /// Adds the request's extensions (where the request type has them).
    ///
    /// ```
    /// # use http::{Extensions, HeaderMap, Method, Uri};
    /// # use tower_reissue::classify::RequestView;
    /// use tower_reissue::IdempotencyKey;
    ///
    /// let (uri, headers) = (Uri::from_static("/"), HeaderMap::new());
    /// let mut ext = Extensions::new();
    /// ext.insert(IdempotencyKey::new("order-7").unwrap());
    /// let view = RequestView::new(&Method::POST, &uri, &headers).with_extensions(&ext);
    /// assert!(view.has_idempotency_key());
    /// ```
    pub fn with_extensions(mut self, extensions: &'a Extensions) -> Self {
        self.extensions = Some(extensions);
        self
    }

    /// Sets which attempt (1-based) the outcome belongs to.
    ///
    /// ```
    /// # use http::{HeaderMap, Method, Uri};
    /// # use tower_reissue::classify::RequestView;
    /// # let (uri, headers) = (Uri::from_static("/"), HeaderMap::new());
    /// let view = RequestView::new(&Method::GET, &uri, &headers).with_attempt(3);
    /// assert_eq!(view.attempt(), 3);
    /// ```
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions, where the request type has them.
    pub fn extensions(&self) -> Option<&'a Extensions> {
        self.extensions
    }

    /// Which attempt (1-based) the outcome belongs to.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the method is idempotent (RFC 9110 9.2.2): GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE.
    pub fn is_idempotent_method(&self) -> bool {
        is_idempotent(self.method)
    }

    /// The request's idempotency key: the [`IdempotencyKey`] extension, or
    /// else an `Idempotency-Key` header.
    ///
    /// ```
    /// # use http::{HeaderMap, Method, Uri};
    /// # use tower_reissue::classify::RequestView;
    /// # let uri = Uri::from_static("/");
    /// let mut headers = HeaderMap::new();
    /// headers.insert("idempotency-key", "abc".parse().unwrap());
    /// let view = RequestView::new(&Method::POST, &uri, &headers);
    /// assert_eq!(view.idempotency_key(), Some("abc"));
    /// ```
    pub fn idempotency_key(&self) -> Option<&'a str> {
        if let Some(key) = self.extensions.and_then(|e| e.get::<IdempotencyKey>()) {
            return Some(key.as_str());
        }
        self.headers
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    }

    /// Whether the request carries an idempotency key the server
    /// deduplicates on: a key marked
    /// [`correlation_only`](IdempotencyKey::correlation_only) does not count.
    pub fn has_idempotency_key(&self) -> bool {
        match self.extensions.and_then(|e| e.get::<IdempotencyKey>()) {
            Some(key) => !key.is_correlation_only(),
            None => self.idempotency_key().is_some(),
        }
    }
}

impl fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestView")
            .field("method", self.method)
            .field("uri", self.uri)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Whether a method is idempotent (RFC 9110 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
