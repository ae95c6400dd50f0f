use http::{HeaderName, Method};
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

use super::{IDEMPOTENCY_KEY, IdempotencyKey, SetIdempotencyKey};

/// Adds an idempotency key to the requests that need one; see the
/// [module docs](super).
///
/// Defaults: header `Idempotency-Key`, methods POST and PATCH, UUID v4 keys.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_reissue::{IdempotencyKey, IdempotencyKeyLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(IdempotencyKeyLayer::new())
///     .service(tower::service_fn(|req: Request<()>| async move {
///         // What the server would receive.
///         assert!(req.headers().contains_key("idempotency-key"));
///         Ok::<_, Infallible>(Response::new(()))
///     }));
///
/// let response = client
///     .oneshot(Request::post("http://api.example/emails").body(()).unwrap())
///     .await
///     .unwrap();
/// let key = response.extensions().get::<IdempotencyKey>().unwrap();
/// assert_eq!(key.as_str().len(), 36);
/// # }
/// ```
#[derive(Clone)]
pub struct IdempotencyKeyLayer {
    config: Arc<KeyConfig>,
}

#[derive(Clone)]
pub(crate) struct KeyConfig {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) generator: Generator,
    pub(crate) correlation_only: bool,
}

#[derive(Clone)]
pub(crate) enum Generator {
    V4,
    V7,
    Custom(Arc<dyn Fn() -> IdempotencyKey + Send + Sync>),
}

impl KeyConfig {
    pub(crate) fn generate(&self) -> IdempotencyKey {
        let key = match &self.generator {
            Generator::V4 => IdempotencyKey::new_v4(),
            Generator::V7 => IdempotencyKey::new_v7(),
            Generator::Custom(generate) => generate(),
        };
        if self.correlation_only {
            key.correlation_only()
        } else {
            key
        }
    }

    pub(crate) fn applies_to(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

impl IdempotencyKeyLayer {
    /// Keys POST and PATCH requests with `Idempotency-Key: <UUID v4>`.
    pub fn new() -> Self {
        super::KeySlot::layer_made();
        IdempotencyKeyLayer {
            config: Arc::new(KeyConfig {
                header: IDEMPOTENCY_KEY,
                methods: vec![Method::POST, Method::PATCH],
                generator: Generator::V4,
                correlation_only: false,
            }),
        }
    }

    /// Sends the key in another header. The retry layer still counts the
    /// request as keyed: it finds the key through the [`IdempotencyKey`]
    /// request extension, or through its key slot when this layer sits below
    /// it. One case needs the default name: `reqwest::Request` has no public
    /// extensions, so with this layer *above* the retry layer, the retry
    /// layer only sees a key sent as `Idempotency-Key`.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_reissue::IdempotencyKeyLayer;
    /// let layer = IdempotencyKeyLayer::new().header(HeaderName::from_static("x-request-key"));
    /// # let _ = layer;
    /// ```
    pub fn header(self, header: HeaderName) -> Self {
        self.map(|config| config.header = header)
    }

    /// The methods that get a key (default POST and PATCH).
    ///
    /// ```
    /// use http::Method;
    /// use tower_reissue::IdempotencyKeyLayer;
    /// let layer = IdempotencyKeyLayer::new().methods([Method::POST, Method::PATCH, Method::DELETE]);
    /// # let _ = layer;
    /// ```
    pub fn methods<I: IntoIterator<Item = Method>>(self, methods: I) -> Self {
        let methods = methods.into_iter().collect();
        self.map(|config| config.methods = methods)
    }

    /// Time-ordered UUID v7 keys instead of random v4 ones: friendlier to
    /// B-tree indexes on the server.
    ///
    /// ```
    /// let layer = tower_reissue::IdempotencyKeyLayer::new().uuid_v7();
    /// # let _ = layer;
    /// ```
    pub fn uuid_v7(self) -> Self {
        self.map(|config| config.generator = Generator::V7)
    }

    /// Makes keys with `generate`, called once per logical request.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tower_reissue::{IdempotencyKey, IdempotencyKeyLayer};
    ///
    /// let next = AtomicU64::new(1);
    /// let layer = IdempotencyKeyLayer::new().generator(move || {
    ///     let n = next.fetch_add(1, Ordering::Relaxed);
    ///     IdempotencyKey::new(&format!("checkout-{n}")).expect("visible ASCII")
    /// });
    /// # let _ = layer;
    /// ```
    pub fn generator<F>(self, generate: F) -> Self
    where
        F: Fn() -> IdempotencyKey + Send + Sync + 'static,
    {
        self.map(|config| config.generator = Generator::Custom(Arc::new(generate)))
    }

    /// For an API that ignores idempotency keys: every key this layer sets
    /// or passes on is a [correlation id only](IdempotencyKey::correlation_only).
    /// The request carries it (pick a header the API stores, such as
    /// `X-Reference`) so that a [reconciler](crate::reconcile) can look it
    /// up, but the retry layer does not count it as safe to repeat.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_reissue::IdempotencyKeyLayer;
    /// let layer = IdempotencyKeyLayer::new()
    ///     .header(HeaderName::from_static("x-reference"))
    ///     .correlation_only();
    /// # let _ = layer;
    /// ```
    pub fn correlation_only(self) -> Self {
        self.map(|config| config.correlation_only = true)
    }

    fn map(mut self, change: impl FnOnce(&mut KeyConfig)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }
}

impl Default for IdempotencyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IdempotencyKeyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generator = match self.config.generator {
            Generator::V4 => "uuid v4",
            Generator::V7 => "uuid v7",
            Generator::Custom(_) => "custom",
        };
        f.debug_struct("IdempotencyKeyLayer")
            .field("header", &self.config.header)
            .field("methods", &self.config.methods)
            .field("generator", &generator)
            .field("correlation_only", &self.config.correlation_only)
            .finish()
    }
}

impl<S> Layer<S> for IdempotencyKeyLayer {
    type Service = SetIdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetIdempotencyKey::new(inner, self.config.clone())
    }
}
