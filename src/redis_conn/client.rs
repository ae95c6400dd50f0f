use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};

use super::ReplyError;

/// What a Redis-backed store or queue holds to talk to Redis: the
/// connection, the prefix its keys live under and the time a call may take.
/// Its calls fail with `E`, the owner's error type.
pub(crate) struct RedisClient<C, E> {
    connection: C,
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
            prefix: Arc::from(prefix),
            timeout: Self::DEFAULT_TIMEOUT,
            error: PhantomData,
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
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            error: PhantomData,
        }
    }
}

impl<C: Clone, E: ReplyError> RedisClient<C, E> {
    /// Runs one call (a command or a script invocation) on a clone of the
    /// connection, within the timeout. Without an answer in time the call's
    /// effect is unknown: `E`'s unavailable error says so.
    pub(crate) async fn run<F>(&self, invoke: impl FnOnce(C) -> F) -> Result<Value, E>
    where
        F: Future<Output = Result<Value, RedisError>>,
    {
        match tokio::time::timeout(self.timeout, invoke(self.connection.clone())).await {
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
