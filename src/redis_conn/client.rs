use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

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
    /// When the first of the calls unanswered since the last answer ended,
    /// in milliseconds since `epoch` plus one (0: the last call was
    /// answered). Counting from the first failure, not the last success, so
    /// that one failure after a quiet hour replaces nothing.
    failing_since: AtomicU64,
    renewing: AtomicBool,
    epoch: Instant,
}

impl<C: Clone + Send + Sync + 'static> Renewal<C> {
    fn new(connection: C, connect: Connect<C>) -> Self {
        Self {
            current: ArcSwap::from_pointee(connection),
            connect,
            failing_since: AtomicU64::new(0),
            renewing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since `epoch`, plus one so that 0 means "none".
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn record(self: &Arc<Self>, succeeded: bool, timeout: Duration) {
        if succeeded {
            // Read first: under load every call answers, and a store to the
            // shared line on every one would make the cores take turns.
            if self.failing_since.load(Ordering::Relaxed) != 0 {
                self.failing_since.store(0, Ordering::Relaxed);
            }
            return;
        }
        let now = self.now();
        let since =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        let quiet = u64::try_from(timeout.as_millis().saturating_mul(2)).unwrap_or(u64::MAX);
        if now.saturating_sub(since) < quiet || self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let renewal = Arc::clone(self);
        tokio::spawn(async move {
            // A connection attempt that hangs must not stop every later one.
            let connected = tokio::time::timeout(quiet_duration(timeout), (renewal.connect)())
                .await
                .unwrap_or_else(|_| {
                    Err(RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                });
            match connected {
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
            renewal.failing_since.store(0, Ordering::Relaxed);
            renewal.renewing.store(false, Ordering::Release);
        });
    }
}

/// Twice the call timeout: how long calls go unanswered before the
/// connection is replaced, and how long a replacement may take to connect.
fn quiet_duration(timeout: Duration) -> Duration {
    timeout.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BoxError, Corrupt};
    use std::sync::atomic::AtomicU32;

    /// The owner's error: these tests look only at which connection a call
    /// went over.
    #[derive(Debug)]
    struct Failed;

    impl Corrupt for Failed {
        const KEEPS: &'static str = "test record";
        const CORRUPT: fn(String) -> Self = |_| Failed;
    }

    impl ReplyError for Failed {
        const UNAVAILABLE: fn(BoxError) -> Self = |_| Failed;
    }

    /// A connection that is only a number: which connection a call went
    /// over.
    type Numbered = u32;

    fn renewed(connects: Arc<AtomicU32>) -> RedisClient<Numbered, Failed> {
        let connect: Connect<Numbered> = Arc::new(move || {
            let n = connects.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(n) })
        });
        RedisClient::new(0, "p")
            .timeout(Duration::from_secs(1))
            .renewed_by(connect)
    }

    async fn call(client: &RedisClient<Numbered, Failed>, answers: bool) -> Numbered {
        let mut over = None;
        let _ = client
            .run(|connection| {
                over = Some(connection);
                async move {
                    if answers {
                        Ok(Value::Okay)
                    } else {
                        Err(RedisError::from(std::io::Error::from(
                            std::io::ErrorKind::ConnectionReset,
                        )))
                    }
                }
            })
            .await;
        over.unwrap()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_unanswered_for_twice_the_timeout_is_replaced_once() {
        let connects = Arc::new(AtomicU32::new(0));
        let client = renewed(connects.clone());
        // A quiet hour, then one failure: nothing is replaced.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(call(&client, false).await, 0);
        settle().await;
        assert_eq!(connects.load(Ordering::SeqCst), 0);
        // Failures for less than twice the timeout: still the first one.
        tokio::time::advance(Duration::from_millis(1_900)).await;
        call(&client, false).await;
        settle().await;
        assert_eq!(connects.load(Ordering::SeqCst), 0);
        // Past it, many failing calls at once make one new connection.
        tokio::time::advance(Duration::from_millis(200)).await;
        for _ in 0..5 {
            call(&client, false).await;
        }
        settle().await;
        assert_eq!(connects.load(Ordering::SeqCst), 1);
        assert_eq!(call(&client, true).await, 1, "calls go over the new one");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_restarts_the_count() {
        let connects = Arc::new(AtomicU32::new(0));
        let client = renewed(connects.clone());
        call(&client, false).await;
        tokio::time::advance(Duration::from_millis(1_500)).await;
        call(&client, true).await;
        tokio::time::advance(Duration::from_millis(1_500)).await;
        call(&client, false).await;
        settle().await;
        assert_eq!(
            connects.load(Ordering::SeqCst),
            0,
            "never 2 s without an answer"
        );
        assert_eq!(call(&client, true).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_without_renewal_keeps_its_connection() {
        let client: RedisClient<Numbered, Failed> =
            RedisClient::new(7, "p").timeout(Duration::from_secs(1));
        call(&client, false).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        call(&client, false).await;
        settle().await;
        assert_eq!(call(&client, true).await, 7);
    }
}
