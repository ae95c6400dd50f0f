//! `reqwest::Request` / `reqwest::Response` support.
//!
//! reqwest keeps a request's extensions to itself, so with reqwest the retry
//! layer recognises a key by the `Idempotency-Key` header, and an inner
//! `IdempotencyKeyLayer` receives the key slot of its logical request through
//! [`KeySlot::lend`] instead of an extension.

use http::{Extensions, HeaderMap, HeaderName, Method, StatusCode, Uri};
use tower_service::Service;

use super::{
    KeyableRequest, NotReplayable, RequestTemplate, RequestView, RetryRequest, RetryResponse,
    key_slot_for,
};
use crate::key::KeySlot;

/// The [`RequestTemplate`] of a `reqwest::Request`: a copy made with
/// `try_clone`. A request whose body cannot be copied (a stream) is sent
/// once and not retried ([`NotReplayable::Unclonable`]). The retry layer's
/// `replay_limit` does not apply: reqwest bodies that can be copied are
/// shared, not buffered.
#[derive(Debug)]
pub struct ReqwestTemplate {
    copy: Option<reqwest::Request>,
    method: Method,
    uri: Uri,
    /// The headers of a request that could not be copied, for the view.
    headers: HeaderMap,
    /// Holds the adopted `IdempotencyKey`, for the view.
    extensions: Extensions,
    slot: Option<KeySlot>,
}

impl RetryRequest for reqwest::Request {
    type Attempt = reqwest::Request;
    type Template = ReqwestTemplate;

    fn into_attempt(self, _replay_limit: usize) -> (Self::Attempt, Self::Template) {
        let copy = self.try_clone();
        let headers = match copy {
            Some(_) => HeaderMap::new(),
            None => self.headers().clone(),
        };
        let slot = key_slot_for(self.method(), self.headers(), None);
        let template = ReqwestTemplate {
            method: self.method().clone(),
            uri: to_uri(self.url()),
            copy,
            headers,
            extensions: Extensions::new(),
            slot,
        };
        (self, template)
    }
}

/// The request URL as an `http::Uri` (without its fragment, which is never
/// sent). A URL `http` cannot parse, which reqwest would not send either,
/// is seen as `/`.
fn to_uri(url: &reqwest::Url) -> Uri {
    let text = url.as_str();
    let text = text.split_once('#').map_or(text, |(before, _)| before);
    text.parse().unwrap_or_default()
}

impl RequestTemplate for ReqwestTemplate {
    type Attempt = reqwest::Request;

    fn view(&self) -> RequestView<'_> {
        let headers = self.copy.as_ref().map_or(&self.headers, |r| r.headers());
        RequestView::new(&self.method, &self.uri, headers).with_extensions(&self.extensions)
    }

    fn check_replayable(&self) -> Result<(), NotReplayable> {
        match self.copy {
            Some(_) => Ok(()),
            None => Err(NotReplayable::Unclonable),
        }
    }

    fn kept_body(&self) -> Result<bytes::Bytes, NotReplayable> {
        let copy = self.copy.as_ref().ok_or(NotReplayable::Unclonable)?;
        match copy.body() {
            None => Ok(bytes::Bytes::new()),
            Some(body) => body
                .as_bytes()
                .map(bytes::Bytes::copy_from_slice)
                .ok_or(NotReplayable::Unclonable),
        }
    }

    fn replay(&mut self) -> Result<Self::Attempt, NotReplayable> {
        self.copy
            .as_ref()
            .and_then(reqwest::Request::try_clone)
            .ok_or(NotReplayable::Unclonable)
    }

    fn send<S: Service<Self::Attempt>>(
        &self,
        service: &mut S,
        attempt: Self::Attempt,
    ) -> S::Future {
        KeySlot::lend(self.slot.as_ref(), || service.call(attempt))
    }

    fn attempt_done(&mut self) {
        let Some(slot) = &self.slot else {
            return;
        };
        if let Some((header, key)) = slot.get() {
            // The next copies carry the key as if the caller had set it.
            if let Some(copy) = &mut self.copy {
                insert_header(copy.headers_mut(), header, key.header_value());
            } else {
                insert_header(&mut self.headers, header, key.header_value());
            }
            self.extensions.insert(key.clone());
            self.slot = None;
        }
    }
}

fn insert_header(headers: &mut HeaderMap, name: &HeaderName, value: &http::HeaderValue) {
    if !headers.contains_key(name) {
        headers.insert(name.clone(), value.clone());
    }
}

impl RetryResponse for reqwest::Response {
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

impl KeyableRequest for reqwest::Request {
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
        None
    }

    fn extensions_mut(&mut self) -> Option<&mut Extensions> {
        None
    }
}
