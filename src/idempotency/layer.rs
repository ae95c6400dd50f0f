use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower_layer::Layer;

use super::principal::{AuthorizationPrincipal, PrincipalExtractor};
use super::service::Idempotency;
use crate::store::IdempotencyStore;
use crate::store::exec::{ClaimRules, KeptResults};

/// Settings shared by every clone of a layer's services.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    // The lease, the wait for a running duplicate and the results kept in
    // this process: what each request's claim needs, made once.
    pub(crate) rules: ClaimRules,
    pub(crate) max_body: usize,
    pub(crate) max_request_body: usize,
    pub(crate) required_for: Vec<Method>,
    pub(crate) conflict_retry_after: Duration,
    pub(crate) fail_open: bool,
    pub(crate) store_retry_after: Duration,
    pub(crate) store_server_errors: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 60 * 60),
            rules: ClaimRules {
                lease: Duration::from_secs(60),
                wait_for_result: None,
                wait_poll_interval: Duration::from_millis(50),
                kept: KeptResults::default(),
            },
            max_body: 1024 * 1024,
            max_request_body: 1024 * 1024,
            required_for: Vec::new(),
            conflict_retry_after: Duration::from_secs(1),
            fail_open: false,
            store_retry_after: Duration::from_secs(5),
            store_server_errors: false,
        }
    }
}

/// Runs each request that carries an `Idempotency-Key` once, and answers its
/// duplicates with the stored result.
///
/// See the [module documentation](super) for the rules. Defaults: records
/// live 24 h, a claim's lease is 60 s (renewed while the handler runs),
/// responses up to 1 MiB are stored, request bodies up to 1 MiB are accepted
/// with a key, a duplicate of a running request gets 409 with
/// `Retry-After: 1`, and a store error gets 503 with `Retry-After: 5`.
///
/// ```
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use bytes::Bytes;
/// use http::{Method, Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_reissue::{IdempotencyLayer, MemoryStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let emails_sent = Arc::new(AtomicUsize::new(0));
/// let counter = emails_sent.clone();
/// let mut service = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]))
///     .service_fn(move |_request: Request<_>| {
///         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
///         async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("email #{n}"))))) }
///     });
///
/// let send = || Request::post("/emails").header("idempotency-key", "k-1").body(Full::new(Bytes::new())).unwrap();
/// let first = service.ready().await?.call(send()).await?;
/// let second = service.ready().await?.call(send()).await?;
/// assert_eq!(second.headers()["idempotent-replayed"], "true");
/// assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "email #1");
/// assert_eq!(emails_sent.load(Ordering::SeqCst), 1);
///
/// let no_key = Request::post("/emails").body(Full::new(Bytes::new())).unwrap();
/// assert_eq!(service.ready().await?.call(no_key).await?.status(), StatusCode::BAD_REQUEST);
/// # Ok::<_, Infallible>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct IdempotencyLayer<St, P = AuthorizationPrincipal> {
    store: St,
    principal: P,
    config: Arc<Config>,
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// A layer keeping its records in `store`, scoping them by the
    /// `Authorization` header.
    pub fn new(store: St) -> Self {
        Self {
            store,
            principal: AuthorizationPrincipal,
            config: Arc::new(Config::default()),
        }
    }
}

impl<St, P> IdempotencyLayer<St, P> {
    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// How long a completed result is kept and replayed (default 24 h).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).ttl(Duration::from_secs(3600));
    /// ```
    pub fn ttl(self, ttl: Duration) -> Self {
        self.configure(|c| c.ttl = ttl)
    }

    /// How long a claim holds without renewal (default 60 s, at least 1 ms).
    ///
    /// The layer renews the claim every third of this while the handler runs,
    /// so only a request whose server vanished (crash, partition) loses its
    /// claim, and the key can run again once the lease has passed. That run
    /// repeats the first one's effect if the first died after it: only a
    /// transactional store (`PostgresStore`) rolls such an effect back with
    /// the record (see [crashes](super#crashes)). A request whose future is
    /// dropped (the client disconnected) keeps running on its own task until
    /// its result is stored; in a transaction, it is rolled back and its key
    /// released instead.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).lease(Duration::from_secs(10));
    /// ```
    pub fn lease(self, lease: Duration) -> Self {
        self.configure(|c| c.rules.lease = lease.max(Duration::from_millis(1)))
    }

    /// The largest response body that is stored for replay (default 1 MiB).
    ///
    /// A larger response is still sent to the first caller, but only a marker
    /// is stored: duplicates get `410 Gone` (`response-not-stored`) and the
    /// handler does not run again.
    ///
    /// ```
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).max_body(64 * 1024);
    /// ```
    pub fn max_body(self, max_body: usize) -> Self {
        self.configure(|c| c.max_body = max_body)
    }

    /// The largest request body accepted with an `Idempotency-Key` (default
    /// 1 MiB); the body is read in full to fingerprint it. A larger one gets
    /// `413` (`request-too-large`).
    ///
    /// ```
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).max_request_body(256 * 1024);
    /// ```
    pub fn max_request_body(self, max_request_body: usize) -> Self {
        self.configure(|c| c.max_request_body = max_request_body)
    }

    /// Methods that must carry an `Idempotency-Key`: without one they get
    /// `400` (`idempotency-key-missing`). By default no method requires one,
    /// and requests without a key pass through untouched.
    ///
    /// ```
    /// # use http::Method;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST, Method::PATCH]);
    /// ```
    pub fn required_for(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.configure(|c| c.required_for = methods)
    }

    /// The `Retry-After` sent with a `409` for a duplicate of a running
    /// request (default 1 s; sent in whole seconds, rounded up).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).conflict_retry_after(Duration::from_secs(2));
    /// ```
    pub fn conflict_retry_after(self, retry_after: Duration) -> Self {
        self.configure(|c| c.conflict_retry_after = retry_after)
    }

    /// Makes a duplicate of a running request wait up to `timeout` for the
    /// first one's result and answer with it, instead of a `409` at once.
    ///
    /// The store is polled every 50 ms. If the first request releases its
    /// claim (a 5xx or an error), the waiting duplicate runs the handler
    /// itself; if `timeout` passes first, it gets the `409`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).wait_for_result(Duration::from_secs(10));
    /// ```
    pub fn wait_for_result(self, timeout: Duration) -> Self {
        self.configure(|c| c.rules.wait_for_result = Some(timeout))
    }

    /// When the store fails, run the request without deduplication instead of
    /// answering `503` (the default, which guarantees no double execution).
    ///
    /// ```
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).fail_open();
    /// ```
    pub fn fail_open(self) -> Self {
        self.configure(|c| c.fail_open = true)
    }

    /// The `Retry-After` sent with a `503` when the store fails (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).store_retry_after(Duration::from_secs(30));
    /// ```
    pub fn store_retry_after(self, retry_after: Duration) -> Self {
        self.configure(|c| c.store_retry_after = retry_after)
    }

    /// Stores 5xx responses too, as Stripe does: a retry gets the same 5xx
    /// replayed and the handler never runs a second time.
    ///
    /// By default a 5xx releases the claim so that a retry runs the handler
    /// again, which is right for a handler that fails *before* its effect
    /// (it rolls back, or the failure was a dependency refusing the call).
    /// A handler that may fail *after* its effect (the email went out, then
    /// writing the receipt failed) should store: a second run would repeat
    /// the effect. Per response, the [`StoreDecision`](super::StoreDecision)
    /// extension still overrides either choice, and a service error or a
    /// panic (no response to store) always releases.
    ///
    /// ```
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).store_server_errors();
    /// ```
    pub fn store_server_errors(self) -> Self {
        self.configure(|c| c.store_server_errors = true)
    }

    /// Scopes records by another [`PrincipalExtractor`], such as a closure
    /// reading a tenant id.
    ///
    /// ```
    /// # use tower_reissue::{IdempotencyLayer, MemoryStore};
    /// use tower_reissue::idempotency::Principal;
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).principal(|parts: &http::request::Parts| {
    ///     parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()).map_or_else(Principal::anonymous, Principal::new)
    /// });
    /// ```
    pub fn principal<P2: PrincipalExtractor>(self, principal: P2) -> IdempotencyLayer<St, P2> {
        IdempotencyLayer {
            store: self.store,
            principal,
            config: self.config,
        }
    }
}

impl<S, St: Clone, P: Clone> Layer<S> for IdempotencyLayer<St, P> {
    type Service = Idempotency<S, St, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(
            inner,
            self.store.clone(),
            self.principal.clone(),
            self.config.clone(),
        )
    }
}
