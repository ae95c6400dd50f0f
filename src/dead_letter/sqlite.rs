use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, DeadLetterState,
    FailedRequest, KeptBody, Lease, LeaseToken, Page, PageQuery, QueueError, StateKind,
    decode_headers, decode_history, encode_headers, from_millis, millis_after, to_millis,
};

/// The schema this version writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE dead_letters (
    -- AUTOINCREMENT: an id is never given twice, even after a purge.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    uri TEXT NOT NULL,
    host TEXT,
    headers BLOB NOT NULL,
    -- NULL when no copy was kept; body_not_kept then says why.
    body BLOB,
    body_not_kept TEXT,
    idempotency_key TEXT,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    state TEXT NOT NULL,
    -- The lease end (leased) or retry_at (failed_again).
    state_until_ms INTEGER,
    replayed_status INTEGER,
    lease_token INTEGER,
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE lease_tokens (last INTEGER NOT NULL);
INSERT INTO lease_tokens (last) VALUES (0);
CREATE INDEX dead_letters_leasable ON dead_letters (id)
    WHERE state IN ('pending', 'leased', 'failed_again');
CREATE INDEX dead_letters_by_state ON dead_letters (state, id);
CREATE INDEX dead_letters_by_reason ON dead_letters (reason, id);
CREATE INDEX dead_letters_by_host ON dead_letters (host, id);
CREATE INDEX dead_letters_finished ON dead_letters (at_ms)
    WHERE state IN ('replayed', 'discarded');
";

const COLUMNS: &str = "id, at_ms, method, uri, headers, body, body_not_kept, idempotency_key, \
     reason, attempts, last_status, last_error, state, state_until_ms, replayed_status, history";

/// A [`DeadLetterQueue`] in a SQLite file: durable on one machine, and
/// readable with the `sqlite3` shell (table `dead_letters`; headers are
/// `name: value` lines, the history is JSON).
///
/// The file is opened in WAL mode with `synchronous = FULL`, so a push that
/// has returned survives a crash of the process and of the machine. Several
/// processes may open the same file; leases are taken in `IMMEDIATE`
/// transactions, so two processes never lease the same entry. The schema
/// version is kept in `PRAGMA user_version`: a file written by a newer
/// version of this crate is refused rather than misread.
///
/// SQLite calls block, so each queue runs them on a thread of its own, which
/// owns the one connection: async tasks never wait on the disk, the
/// prepared statements stay cached, and the writes of one process are
/// serialised without lock contention. Clones share the thread; it ends
/// when the last clone is dropped.
///
/// ```
/// use tower_reissue::dead_letter::{DeadLetterQueue, SqliteQueue};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = std::env::temp_dir().join(format!("reissue-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let queue = SqliteQueue::open(dir.join("dead-letters.sqlite")).await?;
/// assert_eq!(queue.counts().await?.total(), 0);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<_, tower_reissue::dead_letter::QueueError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteQueue {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

/// Work for the queue's thread.
enum Job {
    /// Pushes are committed in groups: the pushes waiting together share one
    /// transaction, so a burst of give-ups costs one write to disk, not one
    /// each.
    Push(Box<FailedRequest>, Reply<DeadLetterId>),
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, QueueError>>;

/// The most pushes committed in one transaction.
const MAX_GROUP: usize = 256;

/// Runs jobs in order until every clone of the queue is gone.
fn serve(mut conn: Connection, inbox: mpsc::Receiver<Job>) {
    let mut next = inbox.recv().ok();
    while let Some(job) = next.take() {
        match job {
            Job::Run(job) => job(&mut conn),
            Job::Push(request, reply) => {
                let mut group = vec![(request, reply)];
                while group.len() < MAX_GROUP {
                    match inbox.try_recv() {
                        Ok(Job::Push(request, reply)) => group.push((request, reply)),
                        // Taken next, after the group: order is kept.
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                push_group(&mut conn, group);
            }
        }
        if next.is_none() {
            next = inbox.recv().ok();
        }
    }
}

/// Inserts each request of the group in one transaction. A failed insert
/// fails only its own push (SQLite undoes just that statement); a failed
/// commit fails them all.
fn push_group(conn: &mut Connection, group: Vec<(Box<FailedRequest>, Reply<DeadLetterId>)>) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(error) => {
            let error = error.to_string();
            for (_, reply) in group {
                let _ = reply.send(Err(QueueError::unavailable(error.clone())));
            }
            return;
        }
    };
    let results: Vec<_> = group
        .into_iter()
        .map(|(request, reply)| (insert(&tx, &request), reply))
        .collect();
    match tx.commit() {
        Ok(()) => {
            for (result, reply) in results {
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            let error = error.to_string();
            for (_, reply) in results {
                let _ = reply.send(Err(QueueError::unavailable(error.clone())));
            }
        }
    }
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: rusqlite::Error) -> QueueError {
    QueueError::unavailable(error)
}

impl SqliteQueue {
    /// Opens the queue in the file at `path`, creating the file and its
    /// schema if needed.
    ///
    /// Fails with [`QueueError::Unavailable`] if the file cannot be opened or
    /// is not a SQLite database, and [`QueueError::Corrupt`] if it holds a
    /// schema this version does not know.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, QueueError> {
        let path = path.as_ref().to_path_buf();
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (opened, ready) = tokio::sync::oneshot::channel();
        let file = path.clone();
        std::thread::Builder::new()
            .name("reissue-sqlite".into())
            .spawn(move || match open_connection(&file) {
                Ok(conn) => {
                    let _ = opened.send(Ok(()));
                    serve(conn, inbox);
                }
                Err(error) => {
                    let _ = opened.send(Err(error));
                }
            })
            .map_err(QueueError::unavailable)?;
        ready
            .await
            .map_err(|_| QueueError::unavailable("the SQLite thread stopped while opening"))??;
        Ok(SqliteQueue { jobs, path })
    }

    /// The file the queue is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on the queue's thread and waits for its answer.
    async fn run<T, F>(&self, job: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.send(
            Job::Run(Box::new(move |conn| {
                let _ = answer.send(job(conn));
            })),
            answered,
        )
        .await
    }

    async fn send<T>(
        &self,
        job: Job,
        answered: tokio::sync::oneshot::Receiver<Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        self.jobs
            .send(job)
            .map_err(|_| QueueError::unavailable("the SQLite thread has stopped"))?;
        answered
            .await
            .map_err(|_| QueueError::unavailable("the SQLite thread stopped before answering"))?
    }
}

fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    // Other processes sharing the file hold the write lock only briefly.
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::unavailable(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(unavailable)?;
    match version {
        0 => {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .or_else(|error| {
                // Another process may have created the schema first.
                let _ = conn.execute_batch("ROLLBACK");
                let now: i64 = conn
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .map_err(unavailable)?;
                if now == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(unavailable(error))
                }
            })?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(QueueError::Corrupt(format!(
                "the SQLite file has dead-letter schema version {other}; this version knows {SCHEMA_VERSION}"
            )));
        }
    }
    Ok(conn)
}

fn now_ms() -> i64 {
    to_millis(SystemTime::now())
}

fn corrupt(what: impl fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("stored dead letter: {what}"))
}

/// Reads one row selected with [`COLUMNS`].
fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<DeadLetter, QueueError>> {
    let id: i64 = row.get(0)?;
    let at: i64 = row.get(1)?;
    let method: String = row.get(2)?;
    let uri: String = row.get(3)?;
    let headers: Vec<u8> = row.get(4)?;
    let body: Option<Vec<u8>> = row.get(5)?;
    let not_kept: Option<String> = row.get(6)?;
    let key: Option<String> = row.get(7)?;
    let reason: String = row.get(8)?;
    let attempts: i64 = row.get(9)?;
    let last_status: Option<i64> = row.get(10)?;
    let last_error: Option<String> = row.get(11)?;
    let state: String = row.get(12)?;
    let until: Option<i64> = row.get(13)?;
    let replayed: Option<i64> = row.get(14)?;
    let history: String = row.get(15)?;
    Ok((|| {
        let status = |code: i64| {
            u16::try_from(code)
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or_else(|| corrupt(format!("invalid status {code}")))
        };
        let until = || {
            until
                .map(from_millis)
                .ok_or_else(|| corrupt("no state time"))
        };
        let state = match state.parse::<StateKind>()? {
            StateKind::Pending => DeadLetterState::Pending,
            StateKind::Leased => DeadLetterState::Leased { until: until()? },
            StateKind::FailedAgain => DeadLetterState::FailedAgain { retry_at: until()? },
            StateKind::Discarded => DeadLetterState::Discarded,
            StateKind::Replayed => DeadLetterState::Replayed {
                status: status(replayed.ok_or_else(|| corrupt("no replay status"))?)?,
            },
        };
        let last = match (last_status, last_error) {
            (Some(code), _) => AttemptOutcome::Status(status(code)?),
            (None, Some(text)) => AttemptOutcome::Error(text),
            (None, None) => return Err(corrupt("no last outcome")),
        };
        let body = match (body, not_kept) {
            (Some(bytes), _) => KeptBody::Kept(Bytes::from(bytes)),
            (None, Some(why)) => KeptBody::NotKept(why),
            (None, None) => return Err(corrupt("neither a body nor why it was not kept")),
        };
        Ok(DeadLetter {
            id: DeadLetterId::new(u64::try_from(id).map_err(|_| corrupt("negative id"))?),
            request: FailedRequest {
                at: from_millis(at),
                method: Method::from_bytes(method.as_bytes())
                    .map_err(|_| corrupt("invalid method"))?,
                uri: uri.parse::<Uri>().map_err(|_| corrupt("invalid URI"))?,
                headers: decode_headers(&headers)?,
                body,
                idempotency_key: key,
                reason,
                attempts: u32::try_from(attempts).map_err(|_| corrupt("invalid attempts"))?,
                last,
            },
            state,
            history: decode_history(&history)?,
        })
    })())
}

/// Leases entry `id` until `until` with a fresh token, inside the caller's
/// write transaction.
fn take_lease(tx: &rusqlite::Transaction<'_>, id: i64, until: i64) -> Result<Lease, QueueError> {
    let token: i64 = tx
        .prepare_cached("UPDATE lease_tokens SET last = last + 1 RETURNING last")
        .and_then(|mut s| s.query_row([], |row| row.get(0)))
        .map_err(unavailable)?;
    tx.prepare_cached(
        "UPDATE dead_letters SET state = 'leased', state_until_ms = ?1, \
         lease_token = ?2 WHERE id = ?3",
    )
    .and_then(|mut s| s.execute(params![until, token, id]))
    .map_err(unavailable)?;
    let letter = select_letters(
        tx,
        &format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"),
        &[&id],
    )?
    .pop()
    .ok_or_else(|| corrupt("a leased entry vanished"))?;
    Ok(Lease {
        letter,
        token: LeaseToken::new(token as u64),
    })
}

fn sql_id(id: DeadLetterId) -> i64 {
    // Ids come from SQLite's rowids, which are below i64::MAX; a larger one
    // matches no row.
    i64::try_from(id.get()).unwrap_or(i64::MAX)
}

fn sql_token(token: LeaseToken) -> i64 {
    i64::try_from(token.get()).unwrap_or(-1)
}

fn select_letters(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut statement = conn.prepare_cached(sql).map_err(unavailable)?;
    let rows = statement.query_map(params, read_row).map_err(unavailable)?;
    let mut letters = Vec::new();
    for row in rows {
        letters.push(row.map_err(unavailable)??);
    }
    Ok(letters)
}

/// Appends a replay to the history and ends the lease held with `token`, in
/// one statement; `set` gives the new state's columns.
fn finish_lease(
    conn: &Connection,
    id: DeadLetterId,
    token: LeaseToken,
    set: &str,
    record: (&str, &dyn rusqlite::ToSql),
    state_params: &[&dyn rusqlite::ToSql],
) -> Result<(), QueueError> {
    let sql = format!(
        "UPDATE dead_letters SET {set}, lease_token = NULL, \
         history = json_insert(history, '$[#]', json_object('at_ms', ?1, '{}', ?2)) \
         WHERE id = ?3 AND state = 'leased' AND lease_token = ?4",
        record.0
    );
    let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(4 + state_params.len());
    let now = now_ms();
    let id = sql_id(id);
    let token = sql_token(token);
    all.extend([&now as &dyn rusqlite::ToSql, record.1, &id, &token]);
    all.extend_from_slice(state_params);
    let changed = conn
        .prepare_cached(&sql)
        .and_then(|mut statement| statement.execute(all.as_slice()))
        .map_err(unavailable)?;
    if changed == 0 {
        return Err(QueueError::LeaseLost);
    }
    Ok(())
}

fn insert(conn: &Connection, request: &FailedRequest) -> Result<DeadLetterId, QueueError> {
    let (body, not_kept) = match &request.body {
        KeptBody::Kept(bytes) => (Some(bytes.as_ref()), None),
        KeptBody::NotKept(why) => (None, Some(why.as_str())),
    };
    let (last_status, last_error) = match &request.last {
        AttemptOutcome::Status(status) => (Some(status.as_u16()), None),
        AttemptOutcome::Error(text) => (None, Some(text.as_str())),
    };
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO dead_letters (at_ms, method, uri, host, headers, body, \
             body_not_kept, idempotency_key, reason, attempts, last_status, last_error, \
             state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending')",
        )
        .map_err(unavailable)?;
    statement
        .execute(params![
            to_millis(request.at),
            request.method.as_str(),
            request.uri.to_string(),
            request.host(),
            encode_headers(&request.headers).as_ref(),
            body,
            not_kept,
            request.idempotency_key,
            request.reason,
            request.attempts,
            last_status,
            last_error,
        ])
        .map_err(unavailable)?;
    let id = conn.last_insert_rowid();
    Ok(DeadLetterId::new(
        u64::try_from(id).map_err(|_| corrupt("negative id"))?,
    ))
}

impl SqliteQueue {
    /// Pushes many requests in one transaction (one write to disk instead of
    /// one per request), for imports: all are stored, or none is.
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use http::{HeaderMap, Method, StatusCode};
    /// # use tower_reissue::dead_letter::{AttemptOutcome, DeadLetterQueue, FailedRequest, KeptBody, SqliteQueue};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let dir = std::env::temp_dir().join(format!("reissue-doc-all-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let queue = SqliteQueue::open(dir.join("import.sqlite")).await?;
    /// let request = FailedRequest {
    ///     at: SystemTime::now(),
    ///     method: Method::POST,
    ///     uri: "http://api.example/emails".parse().unwrap(),
    ///     headers: HeaderMap::new(),
    ///     body: KeptBody::Kept("{}".into()),
    ///     idempotency_key: None,
    ///     reason: "not_safe".into(),
    ///     attempts: 1,
    ///     last: AttemptOutcome::Status(StatusCode::INTERNAL_SERVER_ERROR),
    /// };
    /// let ids = queue.push_all(vec![request.clone(), request]).await?;
    /// assert_eq!(ids.len(), 2);
    /// assert_eq!(queue.counts().await?.total(), 2);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<_, tower_reissue::dead_letter::QueueError>(())
    /// # }).unwrap();
    /// ```
    pub async fn push_all(
        &self,
        requests: Vec<FailedRequest>,
    ) -> Result<Vec<DeadLetterId>, QueueError> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let ids = requests
                .iter()
                .map(|request| insert(&tx, request))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().map_err(unavailable)?;
            Ok(ids)
        })
        .await
    }
}

/// The number of entries per value of `column` (an indexed one).
fn count_by(conn: &Connection, column: &str) -> Result<Vec<(String, u64)>, QueueError> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {column}, COUNT(*) FROM dead_letters GROUP BY {column}"
        ))
        .map_err(unavailable)?;
    let rows = statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })
        .map_err(unavailable)?;
    rows.collect::<rusqlite::Result<_>>().map_err(unavailable)
}

impl DeadLetterQueue for SqliteQueue {
    async fn push(&self, request: FailedRequest) -> Result<DeadLetterId, QueueError> {
        let (reply, answered) = tokio::sync::oneshot::channel();
        self.send(Job::Push(Box::new(request), reply), answered)
            .await
    }

    async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.run(move |conn| {
            let now = now_ms();
            let until = millis_after(now, lease);
            // IMMEDIATE takes the write lock before reading, so another
            // process cannot pick the same entries in between.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let ids: Vec<i64> = {
                let mut statement = tx
                    .prepare_cached(
                        "SELECT id FROM dead_letters \
                         WHERE state IN ('pending', 'leased', 'failed_again') \
                         AND (state = 'pending' OR state_until_ms <= ?1) \
                         ORDER BY id LIMIT ?2",
                    )
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(
                        params![now, i64::try_from(max).unwrap_or(i64::MAX)],
                        |row| row.get(0),
                    )
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<_>>().map_err(unavailable)?
            };
            let mut leases = Vec::with_capacity(ids.len());
            for id in ids {
                leases.push(take_lease(&tx, id, until)?);
            }
            tx.commit().map_err(unavailable)?;
            Ok(leases)
        })
        .await
    }

    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        self.run(move |conn| {
            let now = now_ms();
            let until = millis_after(now, lease);
            let id = sql_id(id);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let state: Option<(String, Option<i64>)> = tx
                .prepare_cached("SELECT state, state_until_ms FROM dead_letters WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(unavailable)?;
            let takeable = match state {
                None => return Err(QueueError::NotFound),
                Some((state, until)) => match state.as_str() {
                    "pending" | "failed_again" => true,
                    "leased" => until.is_some_and(|until| until <= now),
                    _ => false,
                },
            };
            if !takeable {
                return Ok(None);
            }
            let lease = take_lease(&tx, id, until)?;
            tx.commit().map_err(unavailable)?;
            Ok(Some(lease))
        })
        .await
    }

    async fn complete(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        status: StatusCode,
    ) -> Result<(), QueueError> {
        self.run(move |conn| {
            let code = status.as_u16();
            finish_lease(
                conn,
                id,
                token,
                "state = 'replayed', state_until_ms = NULL, replayed_status = ?5",
                ("status", &code),
                &[&code],
            )
        })
        .await
    }

    async fn fail(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> Result<(), QueueError> {
        self.run(move |conn| {
            let retry_at = millis_after(now_ms(), retry_in);
            let set = "state = 'failed_again', state_until_ms = ?5";
            match &outcome {
                AttemptOutcome::Status(status) => {
                    let code = status.as_u16();
                    finish_lease(conn, id, token, set, ("status", &code), &[&retry_at])
                }
                AttemptOutcome::Error(text) => {
                    finish_lease(conn, id, token, set, ("error", text), &[&retry_at])
                }
            }
        })
        .await
    }

    async fn discard(&self, id: DeadLetterId) -> Result<(), QueueError> {
        self.run(move |conn| {
            let id = sql_id(id);
            let changed = conn
                .prepare_cached(
                    "UPDATE dead_letters SET state = 'discarded', state_until_ms = NULL, \
                     lease_token = NULL WHERE id = ?1 AND state != 'replayed'",
                )
                .and_then(|mut s| s.execute([id]))
                .map_err(unavailable)?;
            if changed > 0 {
                return Ok(());
            }
            let exists = conn
                .prepare_cached("SELECT 1 FROM dead_letters WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], |_| Ok(())).optional())
                .map_err(unavailable)?;
            Err(match exists {
                Some(()) => QueueError::Finished,
                None => QueueError::NotFound,
            })
        })
        .await
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        self.run(move |conn| {
            let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1");
            Ok(select_letters(conn, &sql, &[&sql_id(id)])?.pop())
        })
        .await
    }

    async fn page(&self, query: &PageQuery) -> Result<Page, QueueError> {
        let query = query.clone();
        self.run(move |conn| {
            let after = query.after.map_or(0, sql_id);
            // One more than asked: whether it exists says if a next page does.
            let limit = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
            let filters = [
                ("state", query.state.map(StateKind::as_str)),
                ("reason", query.reason.as_deref()),
                ("host", query.host.as_deref()),
            ];
            let mut sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id > ?1");
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&after, &limit];
            for (column, value) in &filters {
                if let Some(value) = value {
                    params.push(value);
                    sql.push_str(&format!(" AND {column} = ?{}", params.len()));
                }
            }
            sql.push_str(" ORDER BY id LIMIT ?2");
            let mut entries = select_letters(conn, &sql, &params)?;
            let next = if entries.len() > query.limit {
                entries.truncate(query.limit);
                entries.last().map(|last| last.id)
            } else {
                None
            };
            Ok(Page { entries, next })
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, QueueError> {
        self.run(|conn| {
            let mut counts = Counts::default();
            for (state, n) in count_by(conn, "state")? {
                counts.by_state.insert(state.parse()?, n);
            }
            counts.by_reason = count_by(conn, "reason")?.into_iter().collect();
            Ok(counts)
        })
        .await
    }

    async fn purge(&self, before: SystemTime) -> Result<u64, QueueError> {
        let before = to_millis(before);
        self.run(move |conn| {
            conn.prepare_cached(
                "DELETE FROM dead_letters \
                 WHERE state IN ('replayed', 'discarded') AND at_ms < ?1",
            )
            .and_then(|mut s| s.execute([before]))
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }
}
