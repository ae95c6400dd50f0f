mod rows;
mod schema;
mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use self::rows::{COLUMNS, count_by, finish_lease, insert, select_letters, sql_id, take_lease};
use self::schema::open_connection;
use self::worker::{Job, serve};
use super::codec::millis_after;
use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, FailedRequest, Lease,
    LeaseToken, Page, PageQuery, QueueError, StateKind, to_millis,
};

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
fn now_ms() -> i64 {
    to_millis(SystemTime::now())
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
