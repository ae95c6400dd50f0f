mod claim;

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Script, Value};

pub(crate) use self::claim::parse_claim;
use super::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};
use crate::error::BoxError;
use crate::redis_conn::{RedisClient, ReplyError, connect_manager, millis};

// One Lua script per operation; what each takes and returns is at the top
// of its file.
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static COMPLETE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("complete.lua")));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));
static RELEASE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("release.lua")));

/// An [`IdempotencyStore`] in Redis, shared by every server instance that
/// uses the same Redis and prefix.
///
/// Each operation is one Lua script, so it is atomic and costs one round trip
/// (`EVALSHA`; the script is loaded on first use and again after Redis
/// restarts). Leases and times to live are set with `PEXPIRE` and kept by
/// Redis's own clock, so server clocks do not need to agree and no record
/// outlives its lease or ttl.
///
/// # Keys
///
/// * `{prefix}:{principal}:{key}`: one hash per record, with the fields
///   `fp` (the [`Fingerprint`]), `token` (while in flight) and `outcome`
///   (once completed, encoded with [`StoredOutcome::to_bytes`]). A `:` or `%` in the
///   principal is percent-encoded, so the first `:` after the prefix always
///   ends the principal. The prefix defaults to `idempotency`.
/// * `{prefix}:fencing-token`: the counter that issues
///   [`FencingToken`]s. It is the only key without a time to live, and one
///   integer whatever the traffic. If it is lost, it restarts from Redis's
///   clock in microseconds, above any token issued before.
///
/// # Connection
///
/// [`connect`](Self::connect) opens a [`ConnectionManager`], which
/// multiplexes every clone of the store over one connection and reconnects in
/// the background after Redis restarts or the network fails. Every operation
/// is also bounded by [`timeout`](Self::timeout) (default 2 s), so while Redis
/// is unreachable requests fail fast with [`StoreError::Unavailable`] (the
/// layer answers `503`) instead of waiting. An existing connection (a
/// `ConnectionManager` with your own settings, or a `MultiplexedConnection`,
/// which does not reconnect) is used with
/// [`from_connection`](Self::from_connection).
///
/// For `rediss://` (TLS) URLs, enable one of the `redis` crate's TLS features
/// (`tokio-rustls-comp` or `tokio-native-tls-comp`) in your own
/// `Cargo.toml`; features of a shared dependency add up.
///
/// # Deployment notes
///
/// Exactly-once rests on Redis keeping in-flight records until their lease
/// ends: run it with `maxmemory-policy` `noeviction` (the default) or a
/// `volatile-*` policy with room to spare, since an evicted claim lets a
/// duplicate run.
///
/// What survives Redis itself going away depends on its persistence:
///
/// | Redis setting | a restart or crash loses |
/// |---|---|
/// | no persistence (`--save ""`, `--appendonly no`) | every record: each key whose request already ran can run again |
/// | `--appendonly yes --appendfsync everysec` (the usual) | up to the last second of claims and completions, so a request that ran in that second can run again |
/// | `--appendonly yes --appendfsync always` | nothing that was acknowledged: a restart from the same directory keeps every claim and result (each write costs an fsync) |
/// | a replica, with [`wait_for_replicas`](Self::wait_for_replicas) | after a failover to the replica, nothing that the replicas acknowledged; without it, replication is asynchronous and the most recent claims and completions can be lost |
///
/// A lost claim or result lets a retry run the request again: pick
/// `always` or a replica with `wait_for_replicas` where a second run is
/// costly.
///
/// # Example
///
/// A store on a lazily connecting manager (nothing is sent until the first
/// request), used by the layer:
///
/// ```
/// use axum::{Router, routing::post};
/// use tower_reissue::{IdempotencyLayer, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redis::RedisError> {
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let manager = redis::aio::ConnectionManager::new_lazy_with_config(
///     client,
///     RedisStore::manager_config(),
/// )?;
/// let store = RedisStore::from_connection(manager).prefix("emails-api");
///
/// let app: Router = Router::new()
///     .route("/emails", post(|| async { "sent" }))
///     .layer(IdempotencyLayer::new(store));
/// # Ok(())
/// # }
/// ```
///
/// Connecting at startup, failing if Redis cannot be reached:
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redis::RedisError> {
/// let store = tower_reissue::RedisStore::connect("redis://redis.internal:6379/0").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    client: RedisClient<C, StoreError>,
    replicas: Option<(u32, Duration)>,
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://` with TLS, or `redis+unix:///path`) through a
    /// [`ConnectionManager`] configured with [`manager_config`](Self::manager_config),
    /// with `TCP_NODELAY` set.
    ///
    /// Fails if the URL is invalid (or needs a TLS feature that is not
    /// enabled) or if Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::from_connection(connect_manager(url).await?))
    }

    /// The [`ConnectionManager`] settings [`connect`](Self::connect) uses.
    ///
    /// A request should fail fast rather than wait while Redis is down: each
    /// connection attempt is cut after 1 s and each command after 1 s, and a
    /// reconnection gives up after 2 retries 100 to 500 ms apart (the next
    /// operation starts a new one).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::RedisStore;
    ///
    /// let config = RedisStore::manager_config().set_response_timeout(Some(Duration::from_millis(250)));
    /// ```
    pub fn manager_config() -> ConnectionManagerConfig {
        crate::redis_conn::manager_config()
    }
}

impl<C> RedisStore<C> {
    /// A store sending its commands over `connection`, with the prefix
    /// `idempotency` and a 2 s timeout per operation.
    ///
    /// `connection` is any clonable async Redis connection: a
    /// [`ConnectionManager`] built with your own settings (start from
    /// [`RedisStore::manager_config`]), or a `MultiplexedConnection`, which
    /// does not reconnect.
    pub fn from_connection(connection: C) -> Self {
        Self {
            client: RedisClient::new(connection, "idempotency"),
            replicas: None,
        }
    }

    /// Namespaces every key under `prefix` (default `idempotency`). Stores
    /// with different prefixes on one Redis never see each other's records.
    ///
    /// ```
    /// # use tower_reissue::RedisStore;
    /// # fn with(store: RedisStore) -> RedisStore {
    /// store.prefix("billing:idempotency")
    /// # }
    /// ```
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        Self {
            client: self.client.prefix(prefix),
            ..self
        }
    }

    /// The longest an operation may take, reconnecting included, before it
    /// fails with [`StoreError::Unavailable`] (default 2 s). Its effect is
    /// then unknown, as the contract allows.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::RedisStore;
    /// # fn with(store: RedisStore) -> RedisStore {
    /// store.timeout(Duration::from_millis(500))
    /// # }
    /// ```
    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            client: self.client.timeout(timeout),
            ..self
        }
    }

    /// Waits, after storing a result, until `replicas` replicas have it or
    /// `timeout` passes (`WAIT replicas timeout`), so that a failover to a
    /// replica does not lose an acknowledged completion.
    ///
    /// The `WAIT` is a second round trip on each completion. If fewer
    /// replicas acknowledge in time, the completion still stands on the
    /// primary (Redis cannot take a write back); the shortfall is logged.
    /// Claims are not waited for: a claim lost in a failover lets a
    /// duplicate that arrives meanwhile run, which only a synchronous store
    /// prevents.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::RedisStore;
    /// # fn with(store: RedisStore) -> RedisStore {
    /// store.wait_for_replicas(1, Duration::from_millis(500))
    /// # }
    /// ```
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The connection the store sends its commands over.
    pub fn connection(&self) -> &C {
        self.client.connection()
    }

    fn record_key(&self, key: &RecordKey) -> String {
        let (prefix, principal) = (self.client.key_prefix(), key.principal());
        let mut out = String::with_capacity(prefix.len() + principal.len() + key.key().len() + 2);
        out.push_str(prefix);
        out.push(':');
        for c in principal.chars() {
            match c {
                '%' => out.push_str("%25"),
                ':' => out.push_str("%3A"),
                c => out.push(c),
            }
        }
        out.push(':');
        out.push_str(key.key());
        out
    }

    fn counter_key(&self) -> String {
        format!("{}:fencing-token", self.client.key_prefix())
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.client
            .debug(f, "RedisStore")
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl ReplyError for StoreError {
    const UNAVAILABLE: fn(BoxError) -> Self = StoreError::Unavailable;
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs one of the token-checking scripts and maps its 0/1 answer.
    async fn fenced(
        &self,
        script: &Script,
        key: &RecordKey,
        token: FencingToken,
        args: &[&[u8]],
    ) -> Result<(), StoreError> {
        let record = self.record_key(key);
        let value = self
            .client
            .run(|mut connection| async move {
                let mut invocation = script.key(record);
                invocation.arg(token.get());
                for arg in args {
                    invocation.arg(*arg);
                }
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        match value {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(StoreError::LeaseLost),
            other => Err(StoreError::unexpected(&other)),
        }
    }

    /// `WAIT`s for the writes sent so far on this store's connection (the
    /// completion among them) to reach `replicas` replicas.
    async fn wait_for(
        &self,
        key: &RecordKey,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let mut connection = self.client.connection().clone();
        let mut command = ::redis::cmd("WAIT");
        command.arg(replicas).arg(positive_millis(timeout));
        let wait = command.query_async::<i64>(&mut connection);
        let acknowledged =
            match tokio::time::timeout(self.client.call_timeout() + timeout, wait).await {
                Ok(Ok(acknowledged)) => acknowledged,
                Ok(Err(err)) => return Err(StoreError::unavailable(err)),
                Err(_) => {
                    return Err(StoreError::unavailable(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "redis did not answer WAIT in time",
                    )));
                }
            };
        if acknowledged < i64::from(replicas) {
            tracing::warn!(
                key = key.key(),
                acknowledged,
                replicas,
                "idempotent result stored on the Redis primary but not on enough replicas in time: a failover now could lose it"
            );
        }
        Ok(())
    }
}

impl<C> IdempotencyStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let (record, counter) = (self.record_key(key), self.counter_key());
        let value = self
            .client
            .run(|mut connection| async move {
                CLAIM_SCRIPT
                    .key(record)
                    .key(counter)
                    .arg(&fingerprint.as_bytes()[..])
                    .arg(positive_millis(lease))
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        parse_claim(value)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let outcome = outcome.to_bytes();
        let ttl = positive_millis(ttl).to_string();
        self.fenced(&COMPLETE_SCRIPT, key, token, &[&outcome, ttl.as_bytes()])
            .await?;
        if let Some((replicas, timeout)) = self.replicas {
            self.wait_for(key, replicas, timeout).await?;
        }
        Ok(())
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = positive_millis(lease).to_string();
        self.fenced(&RENEW_SCRIPT, key, token, &[lease.as_bytes()])
            .await
    }

    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        self.fenced(&RELEASE_SCRIPT, key, token, &[]).await
    }
}

/// [`millis`], at least 1: `PEXPIRE` rejects 0, and `WAIT` reads it as
/// "wait forever".
fn positive_millis(duration: Duration) -> u64 {
    millis(duration).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_valid_pexpire_arguments() {
        // Rounding and the cap are `millis`'s, tested with it.
        assert_eq!(positive_millis(Duration::ZERO), 1);
        assert_eq!(positive_millis(Duration::from_micros(1_001)), 2);
    }

    #[test]
    fn principals_cannot_forge_another_scope() {
        let store = RedisStore::from_connection(()).prefix("p");
        assert_eq!(store.record_key(&RecordKey::new("alice", "k")), "p:alice:k");
        // Without escaping, ("a:b", "c") and ("a", "b:c") would share a key.
        assert_eq!(store.record_key(&RecordKey::new("a:b", "c")), "p:a%3Ab:c");
        assert_eq!(store.record_key(&RecordKey::new("a", "b:c")), "p:a:b:c");
        assert_eq!(
            store.record_key(&RecordKey::new("a%3Ab", "c")),
            "p:a%253Ab:c"
        );
        assert_eq!(store.counter_key(), "p:fencing-token");
    }
}
