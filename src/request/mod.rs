//! The small traits that let the client middleware work with more than one
//! request and response type.
//!
//! They are implemented for `http::Request<B>` / `http::Response<B>` and,
//! behind the `reqwest` feature, for `reqwest::Request` / `reqwest::Response`.
//! Implement them to use the retry layer with another HTTP client type.

#[cfg(feature = "reqwest")]
mod reqwest;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use self::reqwest::ReqwestTemplate;

use http::{Extensions, HeaderMap, Method, StatusCode};
use tower_service::Service;

mod body;
mod not_replayable;
mod repeat;
mod view;

pub use body::ReplayBody;
pub use not_replayable::NotReplayable;
pub use repeat::{Attempts, Retryable};
pub(crate) use repeat::{Repeat, with_attempts};
pub use view::RequestView;

use crate::key::{IDEMPOTENCY_KEY, IdempotencyKey, KeySlot};

/// A request the retry layer can send more than once.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_reissue::request::{RequestTemplate, RetryRequest};
///
/// let request = http::Request::post("http://api.example/emails")
///     .body(Full::new(Bytes::from("{}")))
///     .unwrap();
/// let (first, mut template) = request.into_attempt(64 * 1024);
/// assert_eq!(first.method(), http::Method::POST);
/// assert_eq!(template.view().uri().path(), "/emails");
/// # drop(first);
/// let second = template.replay().unwrap();
/// assert_eq!(second.uri(), "http://api.example/emails");
/// ```
pub trait RetryRequest: Sized {
    /// The request type the wrapped service takes.
    type Attempt;
    /// What is kept between attempts to make the next one.
    type Template: RequestTemplate<Attempt = Self::Attempt>;

    /// Turns the request into its first attempt and a template for more,
    /// keeping at most `replay_limit` bytes of body for replays.
    fn into_attempt(self, replay_limit: usize) -> (Self::Attempt, Self::Template);
}

/// Makes further attempts of one logical request.
pub trait RequestTemplate {
    /// The request type the wrapped service takes.
    type Attempt;

    /// What a classifier may see of the request.
    fn view(&self) -> RequestView<'_>;

    /// Whether [`replay`](RequestTemplate::replay) would succeed now.
    fn check_replayable(&self) -> Result<(), NotReplayable>;

    /// Makes the next attempt.
    fn replay(&mut self) -> Result<Self::Attempt, NotReplayable>;

    /// The body bytes the template kept, exactly as the server was sent
    /// them, for a dead letter or a reconciler. The default keeps none.
    fn kept_body(&self) -> Result<bytes::Bytes, NotReplayable> {
        Err(NotReplayable::Unclonable)
    }

    /// Passes an attempt to `service`. The default just calls it; a template
    /// may wrap the call to hand context about the logical request to the
    /// layers below.
    #[inline(always)]
    fn send<S: Service<Self::Attempt>>(
        &self,
        service: &mut S,
        attempt: Self::Attempt,
    ) -> S::Future {
        service.call(attempt)
    }

    /// Called when an attempt has finished, before it is classified: lets the
    /// template adopt what the layers below decided for the logical request
    /// (such as the idempotency key an inner `IdempotencyKeyLayer` chose), so
    /// that the classifier, the safety rule and the next attempts see it.
    #[inline(always)]
    fn attempt_done(&mut self) {}
}

/// A request [`IdempotencyKeyLayer`](crate::IdempotencyKeyLayer) can give a
/// key.
///
/// ```
/// use tower_reissue::request::KeyableRequest;
/// let mut request = http::Request::post("http://api.example/").body(()).unwrap();
/// request.headers_mut().insert("idempotency-key", "k-1".parse().unwrap());
/// assert!(KeyableRequest::headers(&request).contains_key("idempotency-key"));
/// assert!(KeyableRequest::extensions(&request).is_some());
/// ```
pub trait KeyableRequest {
    /// The request method.
    fn method(&self) -> &Method;
    /// The request headers.
    fn headers(&self) -> &HeaderMap;
    /// The request headers, mutably.
    fn headers_mut(&mut self) -> &mut HeaderMap;
    /// The request extensions, where the type lets a middleware reach them.
    fn extensions(&self) -> Option<&Extensions>;
    /// The request extensions, mutably, where the type lets a middleware
    /// reach them.
    fn extensions_mut(&mut self) -> Option<&mut Extensions>;
}

impl<B> KeyableRequest for http::Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }

    fn extensions(&self) -> Option<&Extensions> {
        Some(self.extensions())
    }

    fn extensions_mut(&mut self) -> Option<&mut Extensions> {
        Some(self.extensions_mut())
    }
}

/// A slot for the key an inner `IdempotencyKeyLayer` will choose, for a
/// request that may need one and has none yet. Safe methods (GET, HEAD,
/// OPTIONS, TRACE) never get a key, so they get no slot and pay nothing;
/// nor does any request while no key layer exists.
#[inline]
fn key_slot_for(
    method: &Method,
    headers: &HeaderMap,
    extensions: Option<&Extensions>,
) -> Option<KeySlot> {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || !KeySlot::may_be_read()
    {
        return None;
    }
    let keyed =
        has_key_header(headers) || extensions.is_some_and(|e| e.get::<IdempotencyKey>().is_some());
    (!keyed).then(KeySlot::default)
}

/// Whether `headers` hold an `Idempotency-Key`. A small map is scanned:
/// comparing a few names costs less than hashing this one for a lookup.
#[inline]
fn has_key_header(headers: &HeaderMap) -> bool {
    if headers.keys_len() <= 8 {
        headers.keys().any(|name| *name == IDEMPOTENCY_KEY)
    } else {
        headers.contains_key(IDEMPOTENCY_KEY)
    }
}

/// A response the retry layer can classify and annotate.
///
/// ```
/// use http::StatusCode;
/// use tower_reissue::request::RetryResponse;
///
/// let mut response = http::Response::builder().status(503).body(()).unwrap();
/// assert_eq!(RetryResponse::status(&response), StatusCode::SERVICE_UNAVAILABLE);
/// response.extensions_mut().insert(tower_reissue::Attempts(1));
/// ```
pub trait RetryResponse {
    /// The response status.
    fn status(&self) -> StatusCode;
    /// The response headers.
    fn headers(&self) -> &HeaderMap;
    /// The response extensions.
    fn extensions_mut(&mut self) -> &mut Extensions;
}

/// The [`RequestTemplate`] of an `http::Request<B>`.
#[derive(Debug)]
pub struct HttpTemplate<B> {
    parts: http::request::Parts,
    body: ReplayBody<B>,
    /// Until an attempt has filled it.
    slot: Option<KeySlot>,
}

impl<B> RetryRequest for http::Request<B>
where
    B: http_body::Body,
    B::Error: Into<crate::BoxError>,
{
    type Attempt = http::Request<ReplayBody<B>>;
    type Template = HttpTemplate<B>;

    // Inlined so that the request and its template are built in place
    // rather than copied out of a returned tuple (measured: fewer bytes
    // moved per call).
    #[inline(always)]
    fn into_attempt(self, replay_limit: usize) -> (Self::Attempt, Self::Template) {
        let (parts, body) = self.into_parts();
        let slot = key_slot_for(&parts.method, &parts.headers, Some(&parts.extensions));
        // The first attempt gets the caller's own parts and the template the
        // copy: a copied header map has no room left, and the layers below
        // add headers (hyper-util's client a `Host`, `IdempotencyKeyLayer` its
        // key), which in a copy would reallocate on every request.
        let kept = parts.clone();
        let (first, handle) = ReplayBody::new(body, replay_limit);
        let mut attempt = http::Request::from_parts(parts, first);
        // Only attempts carry the slot: the template's extensions stay as the
        // caller left them, cheap to copy for each attempt.
        if let Some(slot) = &slot {
            attempt.extensions_mut().insert(slot.clone());
        }
        (
            attempt,
            HttpTemplate {
                parts: kept,
                body: handle,
                slot,
            },
        )
    }
}

impl<B: http_body::Body> HttpTemplate<B> {
    /// A template for copies of `attempt`, a request whose body is already a
    /// [`ReplayBody`] (an attempt of a retry layer above): the attempt is
    /// handed back unchanged, to be sent first. Its extensions are copied as
    /// they are, a key slot among them, so that copies share the slot the
    /// first one may fill.
    #[inline]
    pub(crate) fn of_attempt(
        attempt: http::Request<ReplayBody<B>>,
    ) -> (http::Request<ReplayBody<B>>, Self) {
        let (parts, body) = attempt.into_parts();
        // As in `into_attempt`: the copy goes to the template, whose header
        // map no layer below writes to.
        let kept = parts.clone();
        let handle = body.handle();
        (
            http::Request::from_parts(parts, body),
            HttpTemplate {
                parts: kept,
                body: handle,
                slot: None,
            },
        )
    }
}

impl<B: http_body::Body> RequestTemplate for HttpTemplate<B> {
    type Attempt = http::Request<ReplayBody<B>>;

    fn view(&self) -> RequestView<'_> {
        RequestView::new(&self.parts.method, &self.parts.uri, &self.parts.headers)
            .with_extensions(&self.parts.extensions)
    }

    fn check_replayable(&self) -> Result<(), NotReplayable> {
        self.body.is_replayable()
    }

    fn kept_body(&self) -> Result<bytes::Bytes, NotReplayable> {
        self.body.kept_bytes()
    }

    fn replay(&mut self) -> Result<Self::Attempt, NotReplayable> {
        let body = self.body.replay()?;
        let mut attempt = http::Request::from_parts(self.parts.clone(), body);
        if let Some(slot) = &self.slot {
            // No attempt has been given a key yet: this one may be.
            attempt.extensions_mut().insert(slot.clone());
        }
        Ok(attempt)
    }

    fn attempt_done(&mut self) {
        let Some(slot) = &self.slot else {
            return;
        };
        if let Some((_, key)) = slot.get() {
            // From now on the request is keyed like one the caller keyed:
            // the view shows the key and the key layer reuses it.
            self.parts.extensions.insert(key.clone());
            self.slot = None;
        }
    }
}

impl<B> RetryResponse for http::Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        self.extensions_mut()
    }
}
