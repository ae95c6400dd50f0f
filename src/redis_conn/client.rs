use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::{RedisError, Value};

use super::ReplyError;

/// What a Redis-backed store or queue holds to talk to Redis: the
/// connection, the prefix its keys live under and the time a call may take.
/// Its calls fail with `E`, the owner's error type.
pub(crate) struct RedisClient<C, E> {
    connection: C,
    /// Where the connection can be replaced by a new one (see
    /// [`Renewal`]): then the calls use the renewal's current connection.
    renewal: Option<Arc<Renewal<C>>>,
    prefix: Arc<str>,
    timeout: Duration,
    // `fn() -> E`: the client holds no `E`, so it is `Send` and `Sync`
    // whatever `E` is (and `Clone`, below, asks nothing of `E`).
    error: PhantomData<fn() -> E>,
}

impl<C, E> RedisClient<C, E> {
    /// How long a call may take until the owner's `timeout` says otherwise,
    /// as the store's and the queue's docs promise.
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A client on `connection` with `prefix` and the default timeout.
    pub(crate) fn new(connection: C, prefix: &str) -> Self {
        Self {
            connection,
            renewal: None,
            prefix: Arc::from(prefix),
            timeout: Self::DEFAULT_TIMEOUT,
            error: PhantomData,
        }
    }

    /// The same client, replacing its connection with one from `connect`
    /// when calls have failed for a while (see [`Renewal`]).
    pub(crate) fn renewed_by(self, connect: Connect<C>) -> Self
    where
        C: Clone + Send + Sync + 'static,
    {
        Self {
            renewal: Some(Arc::new(Renewal::new(self.connection.clone(), connect))),
            ..self
        }
    }

    /// The same client, with every key under `prefix`.
    pub(crate) fn prefix(self, prefix: impl Into<String>) -> Self {
        Self {
            prefix: Arc::from(prefix.into()),
            ..self
        }
    }

    /// The same client, with calls cut after `timeout`.
    pub(crate) fn timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    pub(crate) fn connection(&self) -> &C {
        &self.connection
    }

    /// The connection calls go over now: the one the client was made with,
    /// or the latest replacement of a renewed client.
    pub(crate) fn current_connection(&self) -> C
    where
        C: Clone,
    {
        match &self.renewal {
            Some(renewal) => C::clone(&renewal.current.load()),
            None => self.connection.clone(),
        }
    }

    pub(crate) fn key_prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.timeout
    }

    /// The owner's `Debug` output, started: its name, prefix and timeout
    /// (not the connection, which need not be `Debug`).
    pub(crate) fn debug<'a, 'b>(
        &self,
        f: &'a mut fmt::Formatter<'b>,
        name: &str,
    ) -> fmt::DebugStruct<'a, 'b> {
        let mut out = f.debug_struct(name);
        out.field("prefix", &self.prefix)
            .field("timeout", &self.timeout);
        out
    }
}

impl<C: Clone, E> Clone for RedisClient<C, E> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            renewal: self.renewal.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            error: PhantomData,
        }
    }
}

impl<C: Clone + Send + Sync + 'static, E: ReplyError> RedisClient<C, E> {
    /// Runs one call (a command or a script invocation) on a clone of the
    /// connection, within the timeout. Without an answer in time the call's
    /// effect is unknown: `E`'s unavailable error says so.
    pub(crate) async fn run<F>(&self, invoke: impl FnOnce(C) -> F) -> Result<Value, E>
    where
        F: Future<Output = Result<Value, RedisError>>,
    {
        let result = tokio::time::timeout(self.timeout, invoke(self.current_connection())).await;
        // A server's error is an answer; a lost connection or a timeout
        // (the cluster connection's own, or ours) is not.
        self.record(match &result {
            Ok(Ok(_)) => true,
            Ok(Err(err)) => !(err.is_io_error() || err.is_timeout()),
            Err(_) => false,
        });
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(E::UNAVAILABLE(err.into())),
            Err(_) => Err(E::UNAVAILABLE(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("redis did not answer within {:?}", self.timeout),
                )
                .into(),
            )),
        }
    }
}

impl<C: Clone + Send + Sync + 'static, E> RedisClient<C, E> {
    /// Notes whether a call got an answer, for the renewal, if any.
    pub(crate) fn record(&self, succeeded: bool) {
        if let Some(renewal) = &self.renewal {
            renewal.record(succeeded, self.timeout);
        }
    }
}

/// Makes a new connection, for [`Renewal`].
pub(crate) type Connect<C> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<C, RedisError>> + Send>> + Send + Sync>;

/// A connection that is replaced by a new one once calls on it have gone
/// unanswered (timed out, connection lost), none answered, for twice the
/// call timeout.
///
/// This is for the `redis` crate's `ClusterConnection` (1.x), which can
/// deadlock for good: while it rebuilds its slot map (after a `MOVED`,
/// which every failover brings) its one task waits for the write lock of its
/// connection table and polls no request in flight, and a request in flight
/// can hold a read permit of that lock (tokio's `RwLock` hands the permit
/// over, then returns `Pending` when the task's cooperative budget is spent),
/// so that every later command to every node times out. A connection made
/// afterwards works.
pub(crate) struct Renewal<C> {
    current: ArcSwap<C>,
    connect: Connect<C>,
    /// When the last call succeeded, or the connection was last replaced,
    /// in milliseconds since `epoch`.
    last_ok: AtomicU64,
    renewing: AtomicBool,
    epoch: Instant,
}

impl<C: Clone + Send + Sync + 'static> Renewal<C> {
    fn new(connection: C, connect: Connect<C>) -> Self {
        Self {
            current: ArcSwap::from_pointee(connection),
            connect,
            last_ok: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(self: &Arc<Self>, succeeded: bool, timeout: Duration) {
        let now = self.now();
        if succeeded {
            self.last_ok.store(now, Ordering::Relaxed);
            return;
        }
        let quiet = u64::try_from(timeout.as_millis().saturating_mul(2)).unwrap_or(u64::MAX);
        if now.saturating_sub(self.last_ok.load(Ordering::Relaxed)) < quiet
            || self.renewing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let renewal = Arc::clone(self);
        tokio::spawn(async move {
            match (renewal.connect)().await {
                Ok(connection) => {
                    renewal.current.store(Arc::new(connection));
                    tracing::warn!(
                        "replaced a Redis connection on which every call failed for {quiet} ms"
                    );
                }
                Err(err) => {
                    tracing::debug!(%err, "could not replace a failing Redis connection");
                }
            }
            // Either way, wait another period before the next attempt.
            renewal.last_ok.store(renewal.now(), Ordering::Relaxed);
            renewal.renewing.store(false, Ordering::Release);
        });
    }
}
