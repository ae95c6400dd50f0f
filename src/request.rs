//! The small traits that let the client middleware work with more than one
//! request and response type.
//!
//! They are implemented for `http::Request<B>` / `http::Response<B>` and,
//! behind the `reqwest` feature, for `reqwest::Request` / `reqwest::Response`.
//! Implement them to use the retry layer with another HTTP client type.

use http::{Extensions, HeaderMap, StatusCode};

use crate::ReplayBody;
use crate::classify::RequestView;
use crate::retry::NotReplayable;

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
}

impl<B: http_body::Body> RetryRequest for http::Request<B> {
    type Attempt = http::Request<ReplayBody<B>>;
    type Template = HttpTemplate<B>;

    fn into_attempt(self, replay_limit: usize) -> (Self::Attempt, Self::Template) {
        let (parts, body) = self.into_parts();
        let (first, handle) = ReplayBody::new(body, replay_limit);
        let attempt = http::Request::from_parts(parts.clone(), first);
        (
            attempt,
            HttpTemplate {
                parts,
                body: handle,
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

    fn replay(&mut self) -> Result<Self::Attempt, NotReplayable> {
        let body = self.body.replay()?;
        Ok(http::Request::from_parts(self.parts.clone(), body))
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
