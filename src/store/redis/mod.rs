mod claim;

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{IntoConnectionInfo, RedisError, Script, Value};

pub(crate) use self::claim::parse_claim;
use self::claim::{RANDOM_BITS, token_arg};
use super::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};
use crate::error::BoxError;
use crate::redis_conn::{
    RedisClient, ReplyError, cluster_builder, connect_cluster_renewable, connect_manager, millis,
    wait_on_key,
};

// One Lua script per operation; what each takes and returns is at the top
// of its file. Each starts with `#!lua` (Redis 7 and later, Valkey): a
// script so declared is a write, which a replica answers with `MOVED`.
// Without it, a replica runs the script on a `READONLY` connection (the
// cluster client marks every connection so) and fails at its first write:
// after a failover, a client whose slot map still names the old master,
// back as a replica on the same address, would never be redirected.
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
/// One key per record, nothing else: the prefix, the tag in braces, the
/// principal and the key, for example
/// `idempotency:{9f3c2a7d01b4e865}:alice:order-17`. It is a hash
/// with the fields `fp` (the [`Fingerprint`]), `token` (while in flight) and
/// `outcome` (once completed, encoded with [`StoredOutcome::to_bytes`]). The
/// `tag` is 16 hex digits of a hash of the principal and key that every
/// instance computes alike; as the first `{...}` of the key it is Redis
/// Cluster's hash tag, so records spread over the cluster's slots and each
/// script touches the one key of its record. A `:` or `%` in the principal is
/// percent-encoded, so the first `:` after the tag always ends the principal.
/// The prefix defaults to `idempotency`; it should not contain `{`, which
/// would make part of the prefix the hash tag and put every record in one
/// slot.
///
/// A [`FencingToken`] is made in the claim itself, with no counter shared
/// between records (which would put every claim in one slot): the high bits
/// are the microsecond at which Redis created the record (on the node
/// holding it), the low 12 bits random bits of the claiming instance. The
/// record keeps it and the other scripts compare it for equality. Tokens
/// only have to differ between the claims of one record, which follow each
/// other in time: a record that expired and was claimed again holds a later
/// token, and the random bits keep two claims apart even where a failover
/// moved the record to a machine whose clock is behind. So a holder paused
/// past its lease and its record's expiry can never complete, renew or
/// release the newer claim.
///
/// Earlier releases named records `{prefix}:{principal}:{key}` and kept
/// a `{prefix}:fencing-token` counter. Both layouts cannot be read
/// atomically, so upgrade a running deployment under a **new prefix** and
/// let the old keys expire (see `docs::redis` and the changelog).
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
/// On a Redis Cluster (or Valkey in cluster mode),
/// [`connect_cluster`](Self::connect_cluster) takes a list of nodes (one is
/// enough: the rest are discovered) and opens a [`ClusterConnection`], which
/// follows `MOVED` redirections and failovers. The same scripts and key
/// layout serve both.
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
    /// Whether claims wait for the replicas too.
    wait_claims: bool,
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

impl RedisStore<ClusterConnection> {
    /// Connects to the Redis Cluster that `nodes` belong to
    /// (`redis://host:port` URLs or anything else
    /// [`IntoConnectionInfo`]; one reachable node is enough, the others are
    /// found through `CLUSTER SLOTS`), with the settings of
    /// [`cluster_builder`](Self::cluster_builder).
    ///
    /// Fails if a URL is invalid or no node answers.
    ///
    /// Once the store's calls have gone unanswered (timed out, connection
    /// lost), none answered, for twice its
    /// [`timeout`](RedisStore::timeout), it replaces the connection with a
    /// new one to the same nodes: the redis crate's cluster connection can
    /// deadlock for good in a failover, every command to every node timing
    /// out (see `docs::redis`).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redis::RedisError> {
    /// let store = tower_reissue::RedisStore::connect_cluster([
    ///     "redis://redis-0.internal:6379",
    ///     "redis://redis-1.internal:6379",
    /// ])
    /// .await?
    /// .wait_for_replicas(1, std::time::Duration::from_millis(200));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RedisError> {
        let (connection, connect) = connect_cluster_renewable(nodes).await?;
        let mut store = Self::from_connection(connection);
        store.client = store.client.renewed_by(connect);
        Ok(store)
    }

    /// The cluster client settings [`connect_cluster`](Self::connect_cluster)
    /// uses, to change before building a [`ClusterConnection`] for
    /// [`from_connection`](RedisStore::from_connection): connection attempts
    /// and answers cut after 1 s each, `TCP_NODELAY`, and a command retried
    /// (after `MOVED`, `TRYAGAIN` or a lost connection) at most 3 times 50 to
    /// 500 ms apart, so that a request is not held past the store's
    /// [`timeout`](RedisStore::timeout) while a slot moves.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), redis::RedisError> {
    /// use tower_reissue::RedisStore;
    ///
    /// let connection = RedisStore::cluster_builder(["redis://10.0.0.5:6379"])
    ///     .password("secret")
    ///     .build()?
    ///     .get_async_connection()
    ///     .await?;
    /// let store = RedisStore::from_connection(connection).prefix("payments");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster_builder<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> ClusterClientBuilder {
        cluster_builder(nodes)
    }
}

impl<C> RedisStore<C> {
    /// A store sending its commands over `connection`, with the prefix
    /// `idempotency` and a 2 s timeout per operation.
    ///
    /// `connection` is any clonable async Redis connection: a
    /// [`ConnectionManager`] built with your own settings (start from
    /// [`RedisStore::manager_config`]), a `MultiplexedConnection`, which
    /// does not reconnect, or a [`ClusterConnection`] (start from
    /// [`RedisStore::cluster_builder`]).
    pub fn from_connection(connection: C) -> Self {
        Self {
            client: RedisClient::new(connection, "idempotency"),
            replicas: None,
            wait_claims: false,
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
    /// The `WAIT` is a second round trip on each completion, sent to the
    /// server holding the record: on a Redis Cluster the primary of the
    /// record's slot alone, so one slow shard holds only its own records. If
    /// fewer replicas acknowledge in time, the completion still stands on
    /// the primary (Redis cannot take a write back); the shortfall is
    /// logged. Claims are waited for only with
    /// [`wait_on_claims`](Self::wait_on_claims). (The `WAIT` is routed to
    /// the record's primary when the store's connection is a
    /// [`ClusterConnection`] itself; a wrapper around one gets the cluster
    /// client's own routing, which asks every primary.)
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

    /// Makes claims wait for the replicas of
    /// [`wait_for_replicas`](Self::wait_for_replicas) too (no effect
    /// without it): a claim lost in a failover would let a retry run a
    /// second copy of a request still running, so a claim that fewer
    /// replicas acknowledge in time is released and fails with
    /// [`StoreError::Unavailable`] (the layer answers `503` with
    /// `Retry-After`, and the handler does not run). One more round trip per
    /// new key.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::RedisStore;
    /// # fn with(store: RedisStore) -> RedisStore {
    /// store
    ///     .wait_for_replicas(1, Duration::from_millis(200))
    ///     .wait_on_claims(true)
    /// # }
    /// ```
    pub fn wait_on_claims(self, wait: bool) -> Self {
        Self {
            wait_claims: wait,
            ..self
        }
    }

    /// The connection the store sends its commands over (for a store from
    /// [`connect_cluster`](RedisStore::connect_cluster), the one it was made
    /// with: after the store replaced it, no longer the one it uses).
    pub fn connection(&self) -> &C {
        self.client.connection()
    }

    /// The name of the Redis key that holds `key`'s record (see
    /// [Keys](#keys)), to look at it with `redis-cli` or to find its slot.
    ///
    /// ```
    /// use tower_reissue::RedisStore;
    /// use tower_reissue::idempotency::store::RecordKey;
    ///
    /// # fn with(store: RedisStore) {
    /// let name = store.prefix("p").key_of(&RecordKey::new("alice", "order-17"));
    /// assert!(name.starts_with("p:{") && name.ends_with("}:alice:order-17"));
    /// # }
    /// ```
    pub fn key_of(&self, key: &RecordKey) -> String {
        self.record_key(key)
    }

    fn record_key(&self, key: &RecordKey) -> String {
        use std::fmt::Write as _;
        let (prefix, principal) = (self.client.key_prefix(), key.principal());
        let mut out = String::with_capacity(prefix.len() + principal.len() + key.key().len() + 22);
        out.push_str(prefix);
        let _ = write!(out, ":{{{:016x}}}:", key.stable_hash());
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
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.client
            .debug(f, "RedisStore")
            .field("replicas", &self.replicas)
            .field("wait_claims", &self.wait_claims)
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
                invocation.arg(token_arg(token));
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

    /// `WAIT`s on the server holding `record` for the writes sent so far on
    /// this store's connection to it (the claim or completion among them) to
    /// reach `replicas` replicas; whether they did.
    async fn wait_for(
        &self,
        record: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let connection = self.client.current_connection();
        let wait = wait_on_key(&connection, record, replicas, positive_millis(timeout));
        let acknowledged =
            match tokio::time::timeout(self.client.call_timeout() + timeout, wait).await {
                Ok(Ok(acknowledged)) => {
                    self.client.record(true);
                    acknowledged
                }
                Ok(Err(err)) => {
                    self.client.record(!(err.is_io_error() || err.is_timeout()));
                    return Err(StoreError::unavailable(err));
                }
                Err(_) => {
                    self.client.record(false);
                    return Err(StoreError::unavailable(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "redis did not answer WAIT in time",
                    )));
                }
            };
        Ok(acknowledged >= i64::from(replicas))
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
        let record = self.record_key(key);
        // The token's low bits; Redis's clock gives the rest (see
        // `claim.lua`).
        let random = rand::random::<u64>() & ((1 << RANDOM_BITS) - 1);
        let value = self
            .client
            .run(|mut connection| {
                let record = &record;
                async move {
                    CLAIM_SCRIPT
                        .key(record)
                        .arg(&fingerprint.as_bytes()[..])
                        .arg(positive_millis(lease))
                        .arg(random)
                        .invoke_async(&mut connection)
                        .await
                }
            })
            .await?;
        let claim = parse_claim(value, random)?;
        if let (Claim::Acquired(token), true, Some((replicas, timeout))) =
            (&claim, self.wait_claims, self.replicas)
        {
            let token = *token;
            if !self.wait_for(&record, replicas, timeout).await? {
                // Not on enough replicas: a failover now would forget the
                // claim while its handler runs. Give it back and refuse.
                let _ = self.fenced(&RELEASE_SCRIPT, key, token, &[]).await;
                return Err(StoreError::unavailable(std::io::Error::other(format!(
                    "claim not acknowledged by {replicas} Redis replica(s) within {timeout:?}"
                ))));
            }
        }
        Ok(claim)
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
            if !self
                .wait_for(&self.record_key(key), replicas, timeout)
                .await?
            {
                tracing::warn!(
                    key = key.key(),
                    replicas,
                    "idempotent result stored on the Redis primary but not on enough replicas in time: a failover now could lose it"
                );
            }
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
        let name = |principal: &str, key: &str| {
            let key = RecordKey::new(principal, key);
            let tag = format!("p:{{{:016x}}}:", key.stable_hash());
            let name = store.record_key(&key);
            assert!(name.starts_with(&tag), "{name}");
            name[tag.len()..].to_owned()
        };
        assert_eq!(name("alice", "k"), "alice:k");
        // Without escaping, ("a:b", "c") and ("a", "b:c") would share a key.
        assert_eq!(name("a:b", "c"), "a%3Ab:c");
        assert_eq!(name("a", "b:c"), "a:b:c");
        assert_eq!(name("a%3Ab", "c"), "a%253Ab:c");
    }
}
