use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{RedisError, Script, ScriptInvocation, Value};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use crate::redis_conn::{connect_manager, within};

use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, DeadLetterState,
    FailedRequest, KeptBody, Lease, LeaseToken, Page, PageQuery, QueueError, StateKind,
    decode_headers, decode_history, encode_headers, from_millis, to_millis,
};

/// The fields of an entry's hash that make up a [`DeadLetter`], in the order
/// the scripts and `HMGET` return them.
const FIELDS: [&str; 15] = [
    "at",
    "method",
    "uri",
    "headers",
    "body",
    "not_kept",
    "key",
    "reason",
    "attempts",
    "last_status",
    "last_error",
    "state",
    "until",
    "status",
    "history",
];

/// Definitions every script starts with. `ARGV[1]` is always the prefix.
///
/// Besides one hash per entry (`{prefix}:entry:{id}`), the queue keeps sorted
/// sets of ids, scored by id unless said otherwise: `all`, `state:{state}`,
/// `reason:{reason}`, `host:{host}` (the page indexes), `ready` (leasable
/// now), `timed` (leased or failed again, scored by the time they become
/// leasable), `finished` (replayed or discarded, scored by the give-up time,
/// for purge); the hash `reasons` counts entries per reason.
const PRELUDE: &str = r"
local prefix = ARGV[1]
local function k(...) return prefix .. ':' .. table.concat({...}, ':') end
-- Numbers go to commands through this: '%d' keeps every digit, where
-- Lua's own conversion rounds to 14 and may use an exponent.
local function fmt(n) return string.format('%d', n) end
-- Redis's clock, so that every instance sharing the queue agrees on leases.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function move_state(id, from, to)
  redis.call('ZREM', k('state', from), id)
  redis.call('ZADD', k('state', to), id, id)
end
local function read(id)
  local entry = redis.call('HMGET', k('entry', id), unpack(FIELDS))
  table.insert(entry, 1, id)
  return entry
end
";

/// Stores a new pending entry. ARGV: prefix, reason, host or '' (with
/// `has_host` '1'/'0'), then the entry's field/value pairs. Returns the id.
const PUSH: &str = r"
local reason, has_host, host = ARGV[2], ARGV[3] == '1', ARGV[4]
local id = redis.call('INCR', k('id'))
if id == 1 then
  -- The counter was lost (flushed, deleted) but entries may remain: carry on
  -- above the highest, so an id never names two entries.
  local top = redis.call('ZRANGE', k('all'), -1, -1)
  if top[1] then
    id = tonumber(top[1]) + 1
    redis.call('SET', k('id'), fmt(id))
  end
end
id = fmt(id)
local entry = k('entry', id)
redis.call('HSET', entry, 'state', 'pending', 'history', '[]', unpack(ARGV, 5))
redis.call('ZADD', k('all'), id, id)
redis.call('ZADD', k('state', 'pending'), id, id)
redis.call('ZADD', k('ready'), id, id)
redis.call('ZADD', k('reason', reason), id, id)
redis.call('HINCRBY', k('reasons'), reason, 1)
if has_host then
  redis.call('HSET', entry, 'host', host)
  redis.call('ZADD', k('host', host), id, id)
end
return tonumber(id)
";

/// What both lease scripts share: `take(id, state, until_ms)` leases the
/// entry `id`, now in `state`, until `until_ms` with a fresh token, and
/// returns the `{token, entry}` pair the scripts reply with.
const TAKE: &str = r"
local function take(id, state, until_ms)
  local entry = k('entry', id)
  local token = redis.call('INCR', k('token'))
  if token == 1 then
    -- The counter was lost: restart it above every token it could have
    -- handed out, so a stale holder never matches a new lease.
    local t = redis.call('TIME')
    redis.call('SET', k('token'), t[1] .. string.format('%06d', tonumber(t[2])))
    token = redis.call('INCR', k('token'))
  end
  redis.call('HSET', entry, 'state', 'leased', 'until', fmt(until_ms), 'token', fmt(token))
  move_state(id, state, 'leased')
  redis.call('ZREM', k('ready'), id)
  -- Replaces a retry time or an expired lease's end the entry may still have.
  redis.call('ZADD', k('timed'), fmt(until_ms), id)
  return {token, read(id)}
end
";

/// Leases up to `max` leasable entries, lowest id first. ARGV: prefix, max,
/// lease in ms. Returns `{token, entry}` pairs.
const LEASE: &str = r"
local now = now_ms()
-- Leases that ran out and retry times that passed make their entries ready.
local due = redis.call('ZRANGEBYSCORE', k('timed'), '-inf', fmt(now))
for _, id in ipairs(due) do redis.call('ZADD', k('ready'), id, id) end
if #due > 0 then redis.call('ZREMRANGEBYSCORE', k('timed'), '-inf', fmt(now)) end
local until_ms = now + tonumber(ARGV[3])
local leases = {}
for _, id in ipairs(redis.call('ZRANGE', k('ready'), 0, fmt(tonumber(ARGV[2]) - 1))) do
  local state = redis.call('HGET', k('entry', id), 'state')
  if not state then
    return redis.error_reply('ERR dead letter ' .. k('entry', id) .. ' is indexed but missing')
  end
  leases[#leases + 1] = take(id, state, until_ms)
end
return leases
";

/// Leases one entry even before its retry time. ARGV: prefix, id, lease in
/// ms. Returns 0 (no such entry), 1 (finished, or held by a live lease) or
/// the `{token, entry}` pair.
const LEASE_ONE: &str = r"
local id = ARGV[2]
local held = redis.call('HMGET', k('entry', id), 'state', 'until')
local state = held[1]
if not state then return 0 end
local now = now_ms()
-- A lease whose end has passed is free, as the batch lease finds it once
-- `timed` hands it back to `ready`.
local free = state == 'leased' and held[2] and tonumber(held[2]) <= now
if state ~= 'pending' and state ~= 'failed_again' and not free then return 1 end
return take(id, state, now + tonumber(ARGV[3]))
";

/// Ends the lease held with a token, appending the replay to the history.
/// ARGV: prefix, id, token, new state (`replayed` or `failed_again`), the
/// history record's JSON members after `at_ms`, then the replay status
/// (replayed) or the retry delay in ms (failed again). Returns 1, or 0 if
/// the token does not hold the entry.
const FINISH: &str = r#"
local id, token, to, record = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local entry = k('entry', id)
local held = redis.call('HMGET', entry, 'state', 'token', 'history', 'at')
if held[1] ~= 'leased' or held[2] ~= token then return 0 end
if not held[3] or not held[4] then
  return redis.error_reply('ERR dead letter ' .. entry .. ' has no history or time')
end
local now = now_ms()
record = '{"at_ms":' .. fmt(now) .. ',' .. record .. '}'
local history = held[3]
if history == '[]' then
  history = '[' .. record .. ']'
else
  history = string.sub(history, 1, -2) .. ',' .. record .. ']'
end
redis.call('HDEL', entry, 'token', 'until')
redis.call('ZREM', k('ready'), id)
redis.call('ZREM', k('timed'), id)
if to == 'replayed' then
  redis.call('HSET', entry, 'state', to, 'status', ARGV[6], 'history', history)
  redis.call('ZADD', k('finished'), held[4], id)
else
  local retry_at = now + tonumber(ARGV[6])
  redis.call('HSET', entry, 'state', to, 'until', fmt(retry_at), 'history', history)
  redis.call('ZADD', k('timed'), fmt(retry_at), id)
end
move_state(id, 'leased', to)
return 1
"#;

/// Discards an entry. ARGV: prefix, id. Returns 0 (no such entry), 1
/// (replayed: left alone) or 2 (discarded).
const DISCARD: &str = r"
local id = ARGV[2]
local entry = k('entry', id)
local held = redis.call('HMGET', entry, 'state', 'at')
local state = held[1]
if not state then return 0 end
if state == 'replayed' then return 1 end
if state ~= 'discarded' then
  redis.call('HSET', entry, 'state', 'discarded')
  redis.call('HDEL', entry, 'token', 'until')
  redis.call('ZREM', k('ready'), id)
  redis.call('ZREM', k('timed'), id)
  redis.call('ZADD', k('finished'), held[2], id)
  move_state(id, state, 'discarded')
end
return 2
";

/// One page. ARGV: prefix, after (exclusive), limit, then filter pairs
/// (`state`/`reason`/`host`, value). Walks the smallest matching index from
/// the cursor, checking the other filters on each entry. Returns
/// `{more, entries}`, `more` 1 when a further match exists.
const PAGE: &str = r"
local limit = tonumber(ARGV[3])
local filters, index, smallest = {}, k('all'), nil
for i = 4, #ARGV, 2 do
  filters[#filters + 1] = {ARGV[i], ARGV[i + 1]}
  local set = k(ARGV[i], ARGV[i + 1])
  local n = redis.call('ZCARD', set)
  if not smallest or n < smallest then index, smallest = set, n end
end
local entries, more, from = {}, 0, '(' .. ARGV[2]
local chunk = math.max(limit + 1, 128)
while more == 0 do
  local ids = redis.call('ZRANGEBYSCORE', index, from, '+inf', 'LIMIT', 0, fmt(chunk))
  for _, id in ipairs(ids) do
    local matches = true
    for _, filter in ipairs(filters) do
      if redis.call('HGET', k('entry', id), filter[1]) ~= filter[2] then
        matches = false
        break
      end
    end
    if matches then
      if #entries == limit then
        more = 1
        break
      end
      entries[#entries + 1] = read(id)
    end
  end
  if #ids < chunk then break end
  from = '(' .. ids[#ids]
end
return {more, entries}
";

/// Counts. ARGV: prefix, then every state's name. Returns the count per
/// state in that order, and the `reasons` hash as name/count pairs.
const COUNTS: &str = r"
local states = {}
for i = 2, #ARGV do states[#states + 1] = redis.call('ZCARD', k('state', ARGV[i])) end
return {states, redis.call('HGETALL', k('reasons'))}
";

/// Deletes up to `batch` finished entries given up on before a time.
/// ARGV: prefix, before in ms (exclusive), batch. Returns how many.
const PURGE: &str = r"
local ids = redis.call('ZRANGEBYSCORE', k('finished'), '-inf', '(' .. ARGV[2],
  'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local entry = k('entry', id)
  local held = redis.call('HMGET', entry, 'state', 'reason', 'host')
  if held[1] then redis.call('ZREM', k('state', held[1]), id) end
  if held[2] then
    redis.call('ZREM', k('reason', held[2]), id)
    if redis.call('HINCRBY', k('reasons'), held[2], -1) <= 0 then
      redis.call('HDEL', k('reasons'), held[2])
    end
  end
  if held[3] then redis.call('ZREM', k('host', held[3]), id) end
  redis.call('ZREM', k('all'), id)
  redis.call('ZREM', k('finished'), id)
  redis.call('DEL', entry)
end
return #ids
";

/// How many finished entries one purge script deletes: Redis runs a script
/// to its end before serving anyone else, so a large purge goes in steps.
const PURGE_BATCH: usize = 500;

fn script(body: &str) -> Script {
    let fields: Vec<String> = FIELDS.iter().map(|f| format!("'{f}'")).collect();
    Script::new(&format!(
        "local FIELDS = {{{}}}\n{PRELUDE}{body}",
        fields.join(", ")
    ))
}

static PUSH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PUSH));
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[TAKE, LEASE].concat()));
static LEASE_ONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[TAKE, LEASE_ONE].concat()));
static FINISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(FINISH));
static DISCARD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DISCARD));
static PAGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PAGE));
static COUNTS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(COUNTS));
static PURGE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PURGE));

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
/// Everything lives under the prefix (default `dead-letters`):
///
/// * `{prefix}:entry:{id}`: one hash per entry, with readable fields (`uri`,
///   `reason`, `state`, `headers` as `name: value` lines, `history` as JSON,
///   times in ms since the Unix epoch).
/// * `{prefix}:all`, `{prefix}:state:{state}`, `{prefix}:reason:{reason}`,
///   `{prefix}:host:{host}`: sorted sets of ids, the indexes pages are read
///   from; `{prefix}:ready`, `{prefix}:timed` and `{prefix}:finished`, the
///   sets leases and purges are taken from; `{prefix}:reasons`, the count
///   per reason.
/// * `{prefix}:id` and `{prefix}:token`: the counters that issue ids and
///   lease tokens.
///
/// No key has a time to live: entries stay until
/// [`purge`](DeadLetterQueue::purge)d. The scripts derive keys from the
/// prefix, so the queue needs a single Redis server (with replicas if you
/// like), not Redis Cluster.
///
/// # Connection
///
/// As for [`RedisStore`](crate::RedisStore): [`connect`](Self::connect)
/// opens a [`ConnectionManager`] (one multiplexed connection with
/// `TCP_NODELAY`, reconnecting in the background), every operation is
/// bounded by [`timeout`](Self::timeout) (default 2 s) and fails with
/// [`QueueError::Unavailable`] after it, and
/// [`from_connection`](Self::from_connection) takes a connection of your
/// own.
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
    connection: C,
    prefix: Arc<str>,
    timeout: Duration,
}

impl RedisQueue {
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connects to the Redis at `url` as
    /// [`RedisStore::connect`](crate::RedisStore::connect) does.
    ///
    /// Fails if the URL is invalid or Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        Ok(Self::from_connection(connect_manager(url).await?))
    }
}

impl<C> RedisQueue<C> {
    /// A queue sending its commands over `connection`, with the prefix
    /// `dead-letters` and a 2 s timeout per operation.
    pub fn from_connection(connection: C) -> Self {
        Self {
            connection,
            prefix: Arc::from("dead-letters"),
            timeout: RedisQueue::DEFAULT_TIMEOUT,
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
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
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
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connection the queue sends its commands over.
    pub fn connection(&self) -> &C {
        &self.connection
    }

    fn entry_key(&self, id: DeadLetterId) -> String {
        format!("{}:entry:{id}", self.prefix)
    }
}

impl<C> fmt::Debug for RedisQueue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C> RedisQueue<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs one command within the queue's timeout.
    async fn run<F>(&self, invoke: impl FnOnce(C) -> F) -> Result<Value, QueueError>
    where
        F: Future<Output = Result<Value, RedisError>>,
    {
        within(self.timeout, invoke(self.connection.clone()))
            .await
            .map_err(QueueError::unavailable)
    }

    /// Runs `script` with the prefix and then `args` as its arguments.
    async fn eval(
        &self,
        script: &'static Script,
        args: impl FnOnce(&mut ScriptInvocation<'static>),
    ) -> Result<Value, QueueError> {
        let mut invocation = script.arg(&*self.prefix);
        args(&mut invocation);
        self.run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
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
            .eval(&FINISH_SCRIPT, |script| {
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
            other => Err(unexpected(&other)),
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
            .eval(&PUSH_SCRIPT, |script| {
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
                u64::try_from(id).map_err(|_| corrupt("negative id"))?,
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let value = self
            .eval(&LEASE_SCRIPT, |script| {
                script.arg(countable(max)).arg(millis(lease));
            })
            .await?;
        let Value::Array(leases) = value else {
            return Err(unexpected(&value));
        };
        leases.iter().map(decode_lease).collect()
    }

    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let value = self
            .eval(&LEASE_ONE_SCRIPT, |script| {
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
            .eval(&DISCARD_SCRIPT, |script| {
                script.arg(id.get());
            })
            .await?;
        match value {
            Value::Int(2) => Ok(()),
            Value::Int(1) => Err(QueueError::Finished),
            Value::Int(0) => Err(QueueError::NotFound),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        let key = self.entry_key(id);
        let value = self
            .run(|mut connection| async move {
                ::redis::cmd("HMGET")
                    .arg(key)
                    .arg(&FIELDS[..])
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let Value::Array(fields) = value else {
            return Err(unexpected(&value));
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
            .eval(&PAGE_SCRIPT, |script| {
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
                _ => return Err(unexpected(&value)),
            },
            _ => return Err(unexpected(&value)),
        };
        let entries = entries
            .iter()
            .map(|entry| match entry {
                Value::Array(entry) => decode_entry(entry),
                other => Err(unexpected(other)),
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
            .eval(&COUNTS_SCRIPT, |script| {
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
                _ => return Err(unexpected(&value)),
            },
            _ => return Err(unexpected(&value)),
        };
        let mut counts = Counts::default();
        for (kind, n) in StateKind::ALL.into_iter().zip(states) {
            match n {
                Value::Int(0) => {}
                Value::Int(n) => {
                    counts.by_state.insert(kind, *n as u64);
                }
                other => return Err(unexpected(other)),
            }
        }
        for pair in reasons.chunks(2) {
            let [reason, n] = pair else {
                return Err(corrupt("odd reason counts"));
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
                .eval(&PURGE_SCRIPT, |script| {
                    script.arg(before).arg(PURGE_BATCH);
                })
                .await?;
            let Value::Int(n) = value else {
                return Err(unexpected(&value));
            };
            purged += n as u64;
            if (n as usize) < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}

/// A duration in whole milliseconds, rounded up so a lease is never shorter
/// than asked, and capped where Redis's Lua numbers still add exactly to a
/// time in ms.
fn millis(duration: Duration) -> u64 {
    const MAX: u64 = 1 << 50; // about 35 000 years
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(MAX).min(MAX)
}

/// A count as a script argument, capped where a Lua number (a double) still
/// holds it and `fmt` prints it exactly; no batch or page comes near it.
fn countable(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn corrupt(what: impl fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("redis dead letter: {what}"))
}

fn unexpected(value: &Value) -> QueueError {
    QueueError::Corrupt(format!("redis script returned {value:?}"))
}

fn bytes<'a>(value: &'a Value, field: &str) -> Result<Option<&'a [u8]>, QueueError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        other => Err(corrupt(format!("field {field} is {other:?}"))),
    }
}

fn text(value: &Value, field: &str) -> Result<String, QueueError> {
    let bytes = bytes(value, field)?.ok_or_else(|| corrupt(format!("no field {field}")))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(format!("field {field} is not UTF-8")))
}

fn number<T: std::str::FromStr>(value: &Value, field: &str) -> Result<T, QueueError> {
    match value {
        Value::Int(n) => n.to_string(),
        other => text(other, field)?,
    }
    .parse()
    .map_err(|_| corrupt(format!("field {field} is not a number")))
}

fn optional<T>(
    value: &Value,
    field: &str,
    read: impl Fn(&Value, &str) -> Result<T, QueueError>,
) -> Result<Option<T>, QueueError> {
    match value {
        Value::Nil => Ok(None),
        value => read(value, field).map(Some),
    }
}

/// Decodes a lease as the lease scripts return it: `{token, entry}`.
fn decode_lease(lease: &Value) -> Result<Lease, QueueError> {
    match lease {
        Value::Array(pair) => match pair.as_slice() {
            [Value::Int(token), Value::Array(entry)] => Ok(Lease {
                letter: decode_entry(entry)?,
                token: LeaseToken::new(
                    u64::try_from(*token).map_err(|_| corrupt("negative token"))?,
                ),
            }),
            _ => Err(unexpected(lease)),
        },
        other => Err(unexpected(other)),
    }
}

/// Decodes an entry as the scripts return it: the id, then [`FIELDS`].
fn decode_entry(entry: &[Value]) -> Result<DeadLetter, QueueError> {
    let [
        id,
        at,
        method,
        uri,
        headers,
        body,
        not_kept,
        key,
        reason,
        attempts,
        last_status,
        last_error,
        state,
        until,
        status,
        history,
    ] = entry
    else {
        return Err(corrupt(format!("{} fields instead of 16", entry.len())));
    };
    let id = DeadLetterId::new(number(id, "id")?);
    let status_code = |value: &Value, field: &str| {
        let code: u16 = number(value, field)?;
        StatusCode::from_u16(code).map_err(|_| corrupt(format!("invalid status {code}")))
    };
    let time = |value: &Value, field: &str| number(value, field).map(from_millis);
    let state = match text(state, "state")?.parse::<StateKind>()? {
        StateKind::Pending => DeadLetterState::Pending,
        StateKind::Leased => DeadLetterState::Leased {
            until: time(until, "until")?,
        },
        StateKind::FailedAgain => DeadLetterState::FailedAgain {
            retry_at: time(until, "until")?,
        },
        StateKind::Replayed => DeadLetterState::Replayed {
            status: status_code(status, "status")?,
        },
        StateKind::Discarded => DeadLetterState::Discarded,
    };
    let last = match (
        optional(last_status, "last_status", status_code)?,
        optional(last_error, "last_error", text)?,
    ) {
        (Some(status), _) => AttemptOutcome::Status(status),
        (None, Some(error)) => AttemptOutcome::Error(error),
        (None, None) => return Err(corrupt("no last outcome")),
    };
    let body = match (bytes(body, "body")?, optional(not_kept, "not_kept", text)?) {
        (Some(bytes), _) => KeptBody::Kept(Bytes::copy_from_slice(bytes)),
        (None, Some(why)) => KeptBody::NotKept(why),
        (None, None) => return Err(corrupt("neither a body nor why it was not kept")),
    };
    let method = bytes(method, "method")?.ok_or_else(|| corrupt("no method"))?;
    Ok(DeadLetter {
        id,
        request: FailedRequest {
            at: time(at, "at")?,
            method: Method::from_bytes(method).map_err(|_| corrupt("invalid method"))?,
            uri: text(uri, "uri")?
                .parse::<Uri>()
                .map_err(|_| corrupt("invalid URI"))?,
            headers: decode_headers(bytes(headers, "headers")?.unwrap_or_default())?,
            body,
            idempotency_key: optional(key, "key", text)?,
            reason: text(reason, "reason")?,
            attempts: number(attempts, "attempts")?,
            last,
        },
        state,
        history: decode_history(&text(history, "history")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_exact_script_arguments() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1_001)), 2);
        assert_eq!(millis(Duration::MAX), 1 << 50);
    }

    #[test]
    fn malformed_entries_are_corrupt_not_panics() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let good = || -> Vec<Value> {
            vec![
                Value::Int(4),
                bulk("1700000000000"),
                bulk("POST"),
                bulk("http://api.example/emails"),
                bulk("accept: text/plain\n"),
                bulk("{}"),
                Value::Nil,
                bulk("k-1"),
                bulk("max_attempts"),
                bulk("3"),
                bulk("503"),
                Value::Nil,
                bulk("pending"),
                Value::Nil,
                Value::Nil,
                bulk("[]"),
            ]
        };
        let letter = decode_entry(&good()).unwrap();
        assert_eq!(letter.id, DeadLetterId::new(4));
        assert_eq!(letter.request.host(), Some("api.example"));

        let broken: [(usize, Value); 8] = [
            (1, bulk("yesterday")),
            (2, bulk("")),
            (3, bulk("http://[::1")),
            (5, Value::Nil),
            (10, bulk("1000")),
            (12, bulk("lost")),
            (12, bulk("leased")),
            (15, bulk("{")),
        ];
        for (at, value) in broken {
            let mut entry = good();
            entry[at] = value.clone();
            assert!(
                matches!(decode_entry(&entry), Err(QueueError::Corrupt(_))),
                "field {at} = {value:?}"
            );
        }
        assert!(matches!(
            decode_entry(&good()[..15]),
            Err(QueueError::Corrupt(_))
        ));
    }
}
