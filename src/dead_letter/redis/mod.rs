mod decode;
mod scripts;

use std::fmt;
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{IntoConnectionInfo, RedisError, Script, ScriptInvocation, Value};
use bytes::Bytes;
use http::StatusCode;

use self::decode::{decode_entry, decode_lease, number, text};
use self::scripts::FIELDS;
use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, FailedRequest, KeptBody,
    Lease, LeaseToken, Page, PageQuery, QueueError, StateKind, encode_headers, to_millis,
};
use crate::error::BoxError;
use crate::error::Corrupt;
use crate::redis_conn::{
    RedisClient, ReplyError, connect_cluster_renewable, connect_manager, millis,
};

/// How many finished entries one purge script deletes: Redis runs a script
/// to its end before serving anyone else, so a large purge goes in steps.
const PURGE_BATCH: usize = 500;

/// A [`DeadLetterQueue`] in Redis, shared by every instance that uses the
/// same Redis and prefix: any number of processes push to it and replay from
/// it, and no two hold a lease on one entry at once.
///
/// Each operation is one Lua script (or one `HMGET` for
/// [`get`](DeadLetterQueue::get)), so it is atomic and costs one round trip;
/// [`purge`](DeadLetterQueue::purge) runs one per 500 entries deleted, so
/// that Redis serves others in between.
/// Lease ends and retry times are read from Redis's own clock (`TIME`), so
/// the instances' clocks do not need to agree: a replayer that dies holding
/// a lease leaves its entries to whichever instance leases next after the
/// lease ran out, and its late answer is then refused with
/// [`QueueError::LeaseLost`] (each lease has a [`LeaseToken`] of its own,
/// from a counter in Redis).
///
/// # Keys
///
/// Everything lives under the prefix (default `dead-letters`), in braces:
/// `{dead-letters}` is the Redis Cluster hash tag of every key of the queue,
/// so a queue lives in one slot and its scripts, which touch several of its
/// keys at once, run on a Redis Cluster as on one server (queues with
/// different prefixes spread over the cluster). With `P` for `{prefix}`:
///
/// * `P:entry:{id}`: one hash per entry, with readable fields (`uri`,
///   `reason`, `state`, `headers` as `name: value` lines, `history` as JSON,
///   times in ms since the Unix epoch).
/// * `P:all`, `P:state:{state}`, `P:reason:{reason}`, `P:host:{host}`:
///   sorted sets of ids, the indexes pages are read from; `P:ready`,
///   `P:timed` and `P:finished`, the sets leases and purges are taken from;
///   `P:reasons`, the count per reason.
/// * `P:id` and `P:token`: the counters that issue ids and lease tokens.
///
/// No key has a time to live: entries stay until
/// [`purge`](DeadLetterQueue::purge)d. Earlier releases named the keys
/// without the braces: a queue written by one is not read by this one;
/// drain it (replay or discard its entries) before upgrading, or keep
/// replaying from it with the old release (see `docs::redis`).
///
/// # Connection
///
/// As for [`RedisStore`](crate::RedisStore): [`connect`](Self::connect)
/// opens a [`ConnectionManager`] (one multiplexed connection with
/// `TCP_NODELAY`, reconnecting in the background), every operation is
/// bounded by [`timeout`](Self::timeout) (default 2 s) and fails with
/// [`QueueError::Unavailable`] after it, and
/// [`from_connection`](Self::from_connection) takes a connection of your
/// own. [`connect_cluster`](Self::connect_cluster) connects to a Redis
/// Cluster.
///
/// # Deployment notes
///
/// Run Redis with persistence (AOF with `appendfsync everysec` or
/// `always`) if dead letters must survive a Redis restart, and with
/// `maxmemory-policy noeviction` (the default): an evicted entry is a lost
/// request. Replication is asynchronous, so a failover can lose the latest
/// pushes and completions (a lost completion means one more replay, which a
/// deduplicating server absorbs through the idempotency key).
///
/// # Example
///
/// ```
/// use tower_reissue::RedisStore;
/// use tower_reissue::dead_letter::RedisQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redis::RedisError> {
/// // Nothing is sent until the first operation.
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let manager =
///     redis::aio::ConnectionManager::new_lazy_with_config(client, RedisStore::manager_config())?;
/// let queue = RedisQueue::from_connection(manager).prefix("emails:dead-letters");
/// # Ok(())
/// # }
/// ```
///
/// Connecting at startup, failing if Redis cannot be reached:
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redis::RedisError> {
/// let queue = tower_reissue::dead_letter::RedisQueue::connect("redis://redis.internal:6379/0").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisQueue<C = ConnectionManager> {
    client: RedisClient<C, QueueError>,
}

impl RedisQueue {
    /// Connects to the Redis at `url` as
    /// [`RedisStore::connect`](crate::RedisStore::connect) does.
    ///
    /// Fails if the URL is invalid or Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::from_connection(connect_manager(url).await?))
    }
}

impl RedisQueue<ClusterConnection> {
    /// Connects to the Redis Cluster that `nodes` belong to as
    /// [`RedisStore::connect_cluster`](crate::RedisStore::connect_cluster)
    /// does.
    ///
    /// Fails if a URL is invalid or no node answers.
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RedisError> {
        // Renewed like the store's: see `RedisStore::connect_cluster`.
        let (connection, connect) = connect_cluster_renewable(nodes).await?;
        let mut queue = Self::from_connection(connection);
        queue.client = queue.client.renewed_by(connect);
        Ok(queue)
    }
}

impl<C> RedisQueue<C> {
    /// A queue sending its commands over `connection`, with the prefix
    /// `dead-letters` and a 2 s timeout per operation.
    pub fn from_connection(connection: C) -> Self {
        Self {
            client: RedisClient::new(connection, "dead-letters"),
        }
    }

    /// Namespaces every key under `prefix` (default `dead-letters`). Queues
    /// with different prefixes on one Redis never see each other's entries.
    ///
    /// ```
    /// # use tower_reissue::dead_letter::RedisQueue;
    /// # fn with(queue: RedisQueue) -> RedisQueue {
    /// queue.prefix("billing:dead-letters")
    /// # }
    /// ```
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        Self {
            client: self.client.prefix(prefix),
        }
    }

    /// The longest an operation may take, reconnecting included, before it
    /// fails with [`QueueError::Unavailable`] (default 2 s); its effect is
    /// then unknown, as the contract allows.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_reissue::dead_letter::RedisQueue;
    /// # fn with(queue: RedisQueue) -> RedisQueue {
    /// queue.timeout(Duration::from_millis(500))
    /// # }
    /// ```
    pub fn timeout(self, timeout: Duration) -> Self {
        Self {
            client: self.client.timeout(timeout),
        }
    }

    /// The connection the queue sends its commands over.
    pub fn connection(&self) -> &C {
        self.client.connection()
    }

    /// `{prefix}`: the start of every key, and its hash tag.
    fn base(&self) -> String {
        format!("{{{}}}", self.client.key_prefix())
    }

    fn entry_key(&self, id: DeadLetterId) -> String {
        format!("{}:entry:{id}", self.base())
    }
}

impl<C> fmt::Debug for RedisQueue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.client.debug(f, "RedisQueue").finish_non_exhaustive()
    }
}

impl ReplyError for QueueError {
    const UNAVAILABLE: fn(BoxError) -> Self = QueueError::Unavailable;
}

impl<C> RedisQueue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs `script` with the braced prefix and then `args` as its
    /// arguments. The queue's `all` index is its one declared key: on a
    /// Redis Cluster it routes the script to the queue's slot, where every
    /// key the script derives from the prefix lives.
    async fn eval(
        &self,
        script: &'static Script,
        args: impl FnOnce(&mut ScriptInvocation<'static>),
    ) -> Result<Value, QueueError> {
        let base = self.base();
        let mut invocation = script.key(format!("{base}:all"));
        invocation.arg(base);
        args(&mut invocation);
        self.client
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    async fn finish(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        to: StateKind,
        record: String,
        last: u64,
    ) -> Result<(), QueueError> {
        let value = self
            .eval(&scripts::FINISH, |script| {
                script
                    .arg(id.get())
                    .arg(token.get())
                    .arg(to.as_str())
                    .arg(record)
                    .arg(last);
            })
            .await?;
        match value {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(QueueError::LeaseLost),
            other => Err(QueueError::unexpected(&other)),
        }
    }
}

impl<C> DeadLetterQueue for RedisQueue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn push(&self, request: FailedRequest) -> Result<DeadLetterId, QueueError> {
        let mut fields: Vec<(&str, Bytes)> = vec![
            ("at", to_millis(request.at).to_string().into()),
            (
                "method",
                Bytes::copy_from_slice(request.method.as_str().as_bytes()),
            ),
            ("uri", request.uri.to_string().into()),
            ("headers", encode_headers(&request.headers)),
            ("reason", request.reason.clone().into()),
            ("attempts", request.attempts.to_string().into()),
        ];
        fields.push(match &request.body {
            KeptBody::Kept(bytes) => ("body", bytes.clone()),
            KeptBody::NotKept(why) => ("not_kept", why.clone().into()),
        });
        fields.push(match &request.last {
            AttemptOutcome::Status(status) => ("last_status", status.as_u16().to_string().into()),
            AttemptOutcome::Error(text) => ("last_error", text.clone().into()),
        });
        if let Some(key) = &request.idempotency_key {
            fields.push(("key", key.clone().into()));
        }
        let host = request.host();
        let value = self
            .eval(&scripts::PUSH, |script| {
                script
                    .arg(&request.reason)
                    .arg(if host.is_some() { "1" } else { "0" })
                    .arg(host.unwrap_or(""));
                for (name, value) in &fields {
                    script.arg(*name).arg(value.as_ref());
                }
            })
            .await?;
        match value {
            Value::Int(id) => Ok(DeadLetterId::new(
                u64::try_from(id).map_err(|_| QueueError::corrupt("negative id"))?,
            )),
            other => Err(QueueError::unexpected(&other)),
        }
    }

    async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let value = self
            .eval(&scripts::LEASE, |script| {
                script.arg(countable(max)).arg(millis(lease));
            })
            .await?;
        let Value::Array(leases) = value else {
            return Err(QueueError::unexpected(&value));
        };
        leases.iter().map(decode_lease).collect()
    }

    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let value = self
            .eval(&scripts::LEASE_ONE, |script| {
                script.arg(id.get()).arg(millis(lease));
            })
            .await?;
        match value {
            Value::Int(0) => Err(QueueError::NotFound),
            Value::Int(1) => Ok(None),
            lease => decode_lease(&lease).map(Some),
        }
    }

    async fn complete(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        status: StatusCode,
    ) -> Result<(), QueueError> {
        let code = status.as_u16();
        self.finish(
            id,
            token,
            StateKind::Replayed,
            format!("\"status\":{code}"),
            u64::from(code),
        )
        .await
    }

    async fn fail(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> Result<(), QueueError> {
        let record = match &outcome {
            AttemptOutcome::Status(status) => format!("\"status\":{}", status.as_u16()),
            AttemptOutcome::Error(text) => {
                format!("\"error\":{}", serde_json::Value::from(text.as_str()))
            }
        };
        self.finish(id, token, StateKind::FailedAgain, record, millis(retry_in))
            .await
    }

    async fn discard(&self, id: DeadLetterId) -> Result<(), QueueError> {
        let value = self
            .eval(&scripts::DISCARD, |script| {
                script.arg(id.get());
            })
            .await?;
        match value {
            Value::Int(2) => Ok(()),
            Value::Int(1) => Err(QueueError::Finished),
            Value::Int(0) => Err(QueueError::NotFound),
            other => Err(QueueError::unexpected(&other)),
        }
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        let key = self.entry_key(id);
        let value = self
            .client
            .run(|mut connection| async move {
                ::redis::cmd("HMGET")
                    .arg(key)
                    .arg(&FIELDS[..])
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let Value::Array(fields) = value else {
            return Err(QueueError::unexpected(&value));
        };
        if fields.iter().all(|field| matches!(field, Value::Nil)) {
            return Ok(None);
        }
        let mut entry = vec![Value::Int(i64::try_from(id.get()).unwrap_or(i64::MAX))];
        entry.extend(fields);
        decode_entry(&entry).map(Some)
    }

    async fn page(&self, query: &PageQuery) -> Result<Page, QueueError> {
        let filters = [
            ("state", query.state.map(StateKind::as_str)),
            ("reason", query.reason.as_deref()),
            ("host", query.host.as_deref()),
        ];
        let value = self
            .eval(&scripts::PAGE, |script| {
                script
                    .arg(query.after.map_or(0, DeadLetterId::get))
                    .arg(countable(query.limit));
                for (name, value) in filters {
                    if let Some(value) = value {
                        script.arg(name).arg(value);
                    }
                }
            })
            .await?;
        let (more, entries) = match &value {
            Value::Array(reply) => match reply.as_slice() {
                [Value::Int(more), Value::Array(entries)] => (*more == 1, entries),
                _ => return Err(QueueError::unexpected(&value)),
            },
            _ => return Err(QueueError::unexpected(&value)),
        };
        let entries = entries
            .iter()
            .map(|entry| match entry {
                Value::Array(entry) => decode_entry(entry),
                other => Err(QueueError::unexpected(other)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let next = match entries.last() {
            Some(last) if more => Some(last.id),
            _ => None,
        };
        Ok(Page { entries, next })
    }

    async fn counts(&self) -> Result<Counts, QueueError> {
        let value = self
            .eval(&scripts::COUNTS, |script| {
                for kind in StateKind::ALL {
                    script.arg(kind.as_str());
                }
            })
            .await?;
        let (states, reasons) = match &value {
            Value::Array(reply) => match reply.as_slice() {
                [Value::Array(states), Value::Array(reasons)]
                    if states.len() == StateKind::ALL.len() =>
                {
                    (states, reasons)
                }
                _ => return Err(QueueError::unexpected(&value)),
            },
            _ => return Err(QueueError::unexpected(&value)),
        };
        let mut counts = Counts::default();
        for (kind, n) in StateKind::ALL.into_iter().zip(states) {
            match n {
                Value::Int(0) => {}
                Value::Int(n) => {
                    counts.by_state.insert(kind, *n as u64);
                }
                other => return Err(QueueError::unexpected(other)),
            }
        }
        for pair in reasons.chunks(2) {
            let [reason, n] = pair else {
                return Err(QueueError::corrupt("odd reason counts"));
            };
            let reason = text(reason, "reason")?;
            let n: u64 = number(n, "reason count")?;
            if n > 0 {
                counts.by_reason.insert(reason, n);
            }
        }
        Ok(counts)
    }

    async fn purge(&self, before: SystemTime) -> Result<u64, QueueError> {
        let before = to_millis(before);
        let mut purged = 0;
        loop {
            let value = self
                .eval(&scripts::PURGE, |script| {
                    script.arg(before).arg(PURGE_BATCH);
                })
                .await?;
            let Value::Int(n) = value else {
                return Err(QueueError::unexpected(&value));
            };
            purged += n as u64;
            if (n as usize) < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}
/// A count as a script argument, capped where a Lua number (a double) still
/// holds it and `fmt` prints it exactly; no batch or page comes near it.
fn countable(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
