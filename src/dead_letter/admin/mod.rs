//! An admin page for dead letters (feature `admin`): look at what the retry
//! layer gave up on, replay it, or discard it.
//!
//! [`router`] returns an axum [`Router`] to [`nest`](Router::nest) wherever
//! the host application wants it; every link it renders carries the prefix
//! it is mounted under (read from the request's
//! [`OriginalUri`]). Nested under `/admin`, the
//! list is at `/admin` (axum does not route `/admin/` to a nested `/`). It
//! serves:
//!
//! | Path (under the prefix) | |
//! |---|---|
//! | `GET /` | the list: counts by state, filters (state, reason, host), pages of 50, a checkbox per entry |
//! | `GET /entries/{id}` | one entry: method, URI, headers, body (text, or hex when not UTF-8), attempts, replay history |
//! | `POST /entries/{id}/replay`, `POST /entries/{id}/discard` | replay or discard one, then show the outcome |
//! | `POST /replay`, `POST /discard` | the same for the entries ticked in the list (form field `id`, repeated) |
//! | `GET /api/entries?state=&reason=&host=&after=&limit=` | a page as JSON: `{"entries": [...], "next": id or null}` |
//! | `GET /api/counts` | `{"by_state": {...}, "by_reason": {...}}` |
//! | `GET /api/entries/{id}` | one entry as JSON |
//! | `POST /api/entries/{id}/replay`, `POST /api/entries/{id}/discard` | replay (answers the entry afterwards) or discard (204) one |
//! | `POST /api/replay` | replay every entry matching a JSON filter `{"state", "reason", "host", "limit"}` (all optional; at most `limit`, default 100) |
//!
//! A replay goes through the [`Replayer`]'s client stack at once, whatever
//! the entry's retry time; finished entries and entries another replayer
//! holds are left alone (409 in the API). Pages are plain HTML forms, with no
//! script and nothing loaded from elsewhere; every value is escaped by the
//! template engine ([maud]).
//!
//! # Cross-site requests
//!
//! Everything that changes the queue is a POST, and a POST that the browser
//! marks as coming from another origin (`Sec-Fetch-Site` other than
//! `same-origin`, or, in browsers without it, an `Origin` that is not the
//! request's host) is refused with 403 before it reaches the queue. This
//! rather than a token: the router has no session to bind a token to (the
//! host application's auth, whatever it is, sits in front), the check needs
//! no state and no secret, and it holds for the JSON API as for the forms.
//! Requests without either header are not from a browser and pass, so
//! scripts and `curl` work against the API.
//!
//! # Auth
//!
//! The router has none of its own: put the host application's in front of
//! it, as a layer on the nested router.
//!
//! ```
//! use std::convert::Infallible;
//! use axum::{Router, extract::Request, middleware::{self, Next}, response::Response};
//! use bytes::Bytes;
//! use http::{Request as HttpRequest, StatusCode, header};
//! use http_body_util::Full;
//! use tower::ServiceExt;
//! use tower_reissue::dead_letter::{MemoryQueue, Replayer, admin};
//!
//! async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     match request.headers().get(header::AUTHORIZATION) {
//!         Some(value) if value == "Bearer s3cret" => Ok(next.run(request).await),
//!         _ => Err(StatusCode::UNAUTHORIZED),
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let queue = MemoryQueue::new();
//! let client = tower::service_fn(|_: HttpRequest<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(http::Response::new(()))
//! });
//! let replayer = Replayer::new(queue.clone(), client);
//! let app: Router = Router::new().nest(
//!     "/ops/dead-letters",
//!     admin::router(queue, replayer).layer(middleware::from_fn(operators_only)),
//! );
//!
//! let anonymous = HttpRequest::get("/ops/dead-letters").body(axum::body::Body::empty())?;
//! assert_eq!(app.clone().oneshot(anonymous).await?.status(), StatusCode::UNAUTHORIZED);
//! let operator = HttpRequest::get("/ops/dead-letters/api/counts")
//!     .header(header::AUTHORIZATION, "Bearer s3cret")
//!     .body(axum::body::Body::empty())?;
//! assert_eq!(app.oneshot(operator).await?.status(), StatusCode::OK);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod api;
mod guard;
mod html;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::OriginalUri;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tower_service::Service;

use super::{
    Counts, DeadLetter, DeadLetterId, DeadLetterQueue, Page, PageQuery, QueueError, Replayer,
};
use crate::BoxError;
use crate::classify::Classifier;

/// The most entries one page or one bulk replay takes.
const MAX_LIMIT: usize = 500;

/// The admin pages and JSON API over `queue`, replaying through `replayer`
/// (see the [module docs](self) for the routes, the cross-site check and
/// how to put auth in front).
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::Full;
/// use tower_reissue::dead_letter::{MemoryQueue, Replayer, admin};
///
/// let queue = MemoryQueue::new();
/// let client = tower::service_fn(|_: Request<Full<Bytes>>| async {
///     Ok::<_, Infallible>(http::Response::new(()))
/// });
/// let app: axum::Router =
///     axum::Router::new().nest("/admin/dead-letters", admin::router(queue.clone(), Replayer::new(queue, client)));
/// # drop(app);
/// ```
pub fn router<Q, S, C, B>(queue: Q, replayer: Replayer<Q, S, C>) -> Router
where
    Q: DeadLetterQueue,
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
    C: Classifier + Clone + Send + Sync + 'static,
{
    let backend: Shared = Arc::new(Parts { queue, replayer });
    Router::new()
        .route("/", get(html::list))
        .route("/entries/{id}", get(html::entry))
        .route("/entries/{id}/replay", post(html::replay_one))
        .route("/entries/{id}/discard", post(html::discard_one))
        .route("/replay", post(html::replay_selected))
        .route("/discard", post(html::discard_selected))
        .route("/api/entries", get(api::list))
        .route("/api/counts", get(api::counts))
        .route("/api/entries/{id}", get(api::entry))
        .route("/api/entries/{id}/replay", post(api::replay_one))
        .route("/api/entries/{id}/discard", post(api::discard_one))
        .route("/api/replay", post(api::replay_matching))
        .layer(axum::middleware::from_fn(guard::same_origin_only))
        .with_state(backend)
}

type Shared = Arc<dyn Backend>;

type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, QueueError>> + Send + 'a>>;

/// The queue and replayer with their types erased, so the handlers are not
/// generic.
trait Backend: Send + Sync + 'static {
    fn page(&self, query: PageQuery) -> Answer<'_, Page>;
    fn counts(&self) -> Answer<'_, Counts>;
    fn get(&self, id: DeadLetterId) -> Answer<'_, Option<DeadLetter>>;
    fn discard(&self, id: DeadLetterId) -> Answer<'_, ()>;
    fn replay(&self, id: DeadLetterId) -> Answer<'_, Option<DeadLetter>>;
}

struct Parts<Q, R> {
    queue: Q,
    replayer: R,
}

impl<Q, S, C, B> Backend for Parts<Q, Replayer<Q, S, C>>
where
    Q: DeadLetterQueue,
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
    C: Classifier + Clone + Send + Sync + 'static,
{
    fn page(&self, query: PageQuery) -> Answer<'_, Page> {
        Box::pin(async move { self.queue.page(&query).await })
    }
    fn counts(&self) -> Answer<'_, Counts> {
        Box::pin(self.queue.counts())
    }
    fn get(&self, id: DeadLetterId) -> Answer<'_, Option<DeadLetter>> {
        Box::pin(self.queue.get(id))
    }
    fn discard(&self, id: DeadLetterId) -> Answer<'_, ()> {
        Box::pin(self.queue.discard(id))
    }
    fn replay(&self, id: DeadLetterId) -> Answer<'_, Option<DeadLetter>> {
        Box::pin(self.replayer.replay_one(id))
    }
}

/// What happened to one entry a person asked to replay or discard.
enum Done {
    /// The entry as it stands after the action.
    Changed(Box<DeadLetter>),
    /// Discarded.
    Discarded(DeadLetterId),
    /// Nothing was done; why.
    Refused(DeadLetterId, String),
}

impl Done {
    async fn replay(backend: &dyn Backend, id: DeadLetterId) -> Done {
        match backend.replay(id).await {
            Ok(Some(letter)) => Done::Changed(Box::new(letter)),
            Ok(None) => Done::Refused(
                id,
                "not replayed: finished already, or another replayer holds it".into(),
            ),
            Err(error) => Done::Refused(id, error.to_string()),
        }
    }

    async fn discard(backend: &dyn Backend, id: DeadLetterId) -> Done {
        match backend.discard(id).await {
            Ok(()) => Done::Discarded(id),
            Err(error) => Done::Refused(id, error.to_string()),
        }
    }
}

/// The status a failed queue call answers with.
fn status_of(error: &QueueError) -> StatusCode {
    match error {
        QueueError::NotFound => StatusCode::NOT_FOUND,
        QueueError::Finished | QueueError::LeaseLost => StatusCode::CONFLICT,
        QueueError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The path the router is mounted under ("" at the root, else "/admin"),
/// from the full URI of the request and the part of it the router sees.
fn mount_prefix(original: &OriginalUri, seen: &Uri) -> String {
    let full = original.0.path();
    let prefix = full
        .strip_suffix(seen.path())
        .or_else(|| (seen.path() == "/").then_some(full))
        .unwrap_or("");
    prefix.trim_end_matches('/').to_owned()
}

/// The list's filters and cursor, as the query string gives them (an empty
/// field is no filter: that is what the filter form sends for "any").
#[derive(Debug, Default, serde::Deserialize)]
struct ListParams {
    state: Option<String>,
    reason: Option<String>,
    host: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

impl ListParams {
    fn field(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// The page query, or why the parameters make none.
    fn query(&self, default_limit: usize) -> Result<PageQuery, String> {
        let limit = match Self::field(&self.limit) {
            None => default_limit,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
                _ => {
                    return Err(format!(
                        "limit {text:?} is not a number from 1 to {MAX_LIMIT}"
                    ));
                }
            },
        };
        let mut query = PageQuery::new(limit);
        if let Some(state) = Self::field(&self.state) {
            query = query.state(state.parse().map_err(|_| {
                format!(
                    "unknown state {state:?}: pending, leased, replayed, failed_again or discarded"
                )
            })?);
        }
        if let Some(reason) = Self::field(&self.reason) {
            query = query.reason(reason);
        }
        if let Some(host) = Self::field(&self.host) {
            query = query.host(host);
        }
        if let Some(after) = Self::field(&self.after) {
            query = query.after(parse_id(after)?);
        }
        Ok(query)
    }
}

/// Parses a query's optional `after`/`id` text as an entry id.
fn parse_id(text: &str) -> Result<DeadLetterId, String> {
    text.parse::<u64>()
        .map(DeadLetterId::new)
        .map_err(|_| format!("{text:?} is not an entry id (a positive integer)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_prefix() {
        let cases = [
            ("/admin/entries/3", "/entries/3", "/admin"),
            ("/admin/", "/", "/admin"),
            ("/admin", "/", "/admin"),
            ("/", "/", ""),
            ("/entries/3", "/entries/3", ""),
            ("/a/b/api/counts", "/api/counts", "/a/b"),
        ];
        for (full, seen, prefix) in cases {
            let original = OriginalUri(full.parse().unwrap());
            assert_eq!(
                mount_prefix(&original, &seen.parse().unwrap()),
                prefix,
                "{full}"
            );
        }
    }
}
