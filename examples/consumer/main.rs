//! A queue consumer that sends each welcome email exactly once, although the
//! queue delivers messages more than once and workers crash.
//!
//! ```text
//! cargo run --example consumer                       # worker pool on MemoryStore
//! cargo run --example consumer --features redis -- --redis redis://127.0.0.1:6379/
//! cargo run --example consumer --features postgres -- --postgres postgres://app@localhost/app
//! ```
//!
//! The default run drains a local queue with at-least-once delivery (a
//! message not acked within its visibility timeout comes back) with a pool
//! of workers, some of which "crash" mid-handler: the handler's future is
//! dropped and its claim stays in the store until its lease runs out. Each
//! message goes through [`Once`] on a [`MemoryStore`].
//!
//! With `--redis URL` the same queue feeds two worker processes sharing one
//! `RedisStore`. One worker is stopped (SIGSTOP) mid-handler until its lease
//! has run out and the other has taken the message over; resumed, its
//! renewal is refused by fencing and it drops the stale work. Then one
//! worker is killed (SIGKILL) mid-handler; the survivor takes its claim over
//! after the lease.
//!
//! With `--postgres URL` (in an empty database) the queue itself is a
//! PostgreSQL table (leases with `FOR UPDATE SKIP LOCKED`), drained by
//! three worker processes sharing one `PostgresStore`. Each handles a
//! message with `Once::run_in_transaction`, whose closure INSERTs a row into
//! an `effects` table without any unique constraint: the row and the stored
//! value commit in one transaction. One worker is killed (SIGKILL) while it
//! holds an uncommitted INSERT, and a replacement started; at the end every
//! message must have exactly one row.

mod pool;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tower_reissue::{MemoryStore, Once};

use pool::{Mailbox, Settings};
use queue::Queue;

#[derive(Parser, Debug)]
#[command(group(ArgGroup::new("shared").args(["redis", "postgres"])))]
struct Args {
    /// Messages to publish (each delivered one to three times).
    #[arg(long)]
    messages: Option<u64>,
    /// Workers in the pool (in-process mode).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Use two worker processes on the RedisStore at this URL.
    #[arg(long)]
    redis: Option<String>,
    /// Use worker processes on the PostgresStore (and a queue) in the
    /// database at this URL.
    #[arg(long)]
    postgres: Option<String>,
    /// Internal: run as one worker process, keys under this prefix (Redis)
    /// or under this name (PostgreSQL).
    #[arg(long, hide = true, requires = "shared")]
    worker: Option<String>,
    /// Internal: the worker hangs mid-handler after this many messages.
    #[arg(long, hide = true, requires = "worker")]
    stall_after: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(url) = args.postgres {
        #[cfg(feature = "postgres")]
        return match args.worker {
            Some(name) => postgres_mode::worker(&url, &name, args.stall_after).await,
            None => postgres_mode::coordinator(&url, args.messages.unwrap_or(2_000)).await,
        };
        #[cfg(not(feature = "postgres"))]
        {
            let _ = url;
            return Err("--postgres needs the example built with `--features postgres`".into());
        }
    }
    match args.redis {
        None => in_process(args.messages.unwrap_or(2_000), args.workers).await,
        #[cfg(feature = "redis")]
        Some(url) => match args.worker {
            Some(prefix) => redis_mode::worker(&url, &prefix).await,
            None => redis_mode::coordinator(&url, args.messages.unwrap_or(300)).await,
        },
        #[cfg(not(feature = "redis"))]
        Some(_) => Err("--redis needs the example built with `--features redis`".into()),
    }
}

async fn in_process(messages: u64, workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::new(Duration::from_millis(300));
    let mut rng = StdRng::seed_from_u64(17);
    let published = pool::publish(&queue, 0..messages, Duration::from_millis(200), &mut rng);
    let once = Once::new(MemoryStore::with_max_records(4 * messages as usize))
        .lease(Duration::from_millis(150))
        .wait_for_result(Duration::from_millis(50));
    let mailbox = Arc::new(Mailbox::default());
    let settings = Settings {
        workers,
        work: Duration::from_millis(5),
        crash_ratio: 0.05,
        refusal_ratio: 0.02,
        retry_delay: Duration::from_millis(20),
        seed: 17,
    };
    let report = pool::drain(queue.clone(), once, mailbox.clone(), settings).await;
    let stats = queue.stats();
    let once_each = (0..messages).filter(|&u| mailbox.sent_to(u) == 1).count();
    println!(
        "messages: {messages}, deliveries: {} ({} duplicates concurrent with the first, {} later)",
        published.deliveries, published.concurrent_duplicates, published.later_duplicates
    );
    println!(
        "{workers} workers: {} crashes mid-handler, {} crashes before the ack, {} redelivered after the visibility timeout",
        report.crashed_mid_handler, report.crashed_before_ack, stats.timed_out
    );
    println!(
        "once: {} executed, {} replayed, {} in flight, {} refused by the mail provider",
        report.executed, report.replayed, report.in_flight, report.refused_by_mail
    );
    println!(
        "emails sent: {}, users emailed exactly once: {once_each}/{messages}, duplicates: {}",
        mailbox.total(),
        mailbox.total() - once_each
    );
    let all_acked = stats.acked == published.deliveries && queue.outstanding() == 0;
    println!(
        "every delivery acked: {} ({}/{})",
        if all_acked { "yes" } else { "no" },
        stats.acked,
        published.deliveries
    );
    Ok(())
}

#[cfg(feature = "redis")]
mod redis_mode {
    //! Two worker processes on one `RedisStore`, fed by this process.
    //!
    //! Each worker reads `<user> go|stall` lines on stdin, handles one at a
    //! time and reports on stdout: `working <user>` once it holds the claim,
    //! `sent <user>` when the email goes out, then `ack <user>`,
    //! `lost <user>` (its claim was taken over) or `nack <user> <why>`.
    //! `stall` makes the handler hang after `working`, so that the
    //! coordinator can stop or kill the worker at a known point.

    use std::collections::HashMap;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{Child, Command};
    use tower_reissue::idempotency::store::Fingerprint;
    use tower_reissue::once::{Failure, OnceError};
    use tower_reissue::{Once, RedisStore};

    use crate::pool::{self, MailRefused, Message};
    use crate::queue::{Delivery, Queue};

    const LEASE: Duration = Duration::from_secs(1);
    const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(2);
    const RETRY_DELAY: Duration = Duration::from_millis(50);

    pub async fn worker(url: &str, prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
        let store = RedisStore::connect(url).await?.prefix(prefix);
        let once = Once::new(store).lease(LEASE);
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let (user, mode) = line.split_once(' ').ok_or("bad command")?;
            let message = Message {
                user: user.parse()?,
            };
            let stall = mode == "stall";
            let result = once
                .run(
                    "welcome-email",
                    message.key(),
                    Fingerprint::of(message.payload()),
                    || async move {
                        println!("working {user}");
                        if stall {
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        println!("sent {user}");
                        Ok::<_, Failure<MailRefused>>(format!("mail-{user}"))
                    },
                )
                .await;
            match result {
                Ok(_) => println!("ack {user}"),
                Err(OnceError::LeaseLost) => println!("lost {user}"),
                Err(error) => println!("nack {user} {error}"),
            }
        }
        Ok(())
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Phase {
        /// Waiting for a quarter of the messages before stopping a worker.
        BeforeStop,
        Stopping {
            user: u64,
            worker: usize,
        },
        /// Waiting for half of the messages before killing a worker.
        BeforeKill,
        Killing {
            user: u64,
            worker: usize,
        },
        Done,
    }

    struct Scenario {
        messages: u64,
        deliveries: usize,
        rng: StdRng,
        phase: Phase,
        pids: Vec<u32>,
        /// user -> the workers that sent them an email.
        sent: HashMap<u64, Vec<usize>>,
        stopped: Option<(u64, usize)>,
        stale_refused: bool,
        killed: Option<(u64, usize)>,
        killed_taken_over_by: Option<usize>,
    }

    impl Scenario {
        /// Whether `worker` should stall on `user`, so it can be stopped or
        /// killed mid-handler.
        fn stall(&mut self, user: u64, worker: usize) -> bool {
            let emailed = self.sent.len() as u64;
            let fresh = !self.sent.contains_key(&user);
            match self.phase {
                Phase::BeforeStop if fresh && emailed >= self.messages / 4 => {
                    self.phase = Phase::Stopping { user, worker };
                    true
                }
                Phase::BeforeKill if fresh => {
                    self.phase = Phase::Killing { user, worker };
                    true
                }
                _ => false,
            }
        }

        /// The stalled delivery ended without running (a duplicate got there
        /// first): pick another.
        fn stall_missed(&mut self, worker: usize) {
            self.phase = match self.phase {
                Phase::Stopping { worker: w, .. } if w == worker => Phase::BeforeStop,
                Phase::Killing { worker: w, .. } if w == worker => Phase::BeforeKill,
                phase => phase,
            };
        }
    }

    fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: kill(2) takes plain integers and touches no memory; `pid`
        // is a worker this process started and has not reaped.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub async fn coordinator(url: &str, messages: u64) -> Result<(), Box<dyn std::error::Error>> {
        let prefix = format!(
            "consumer-example:{}:{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let queue = Queue::new(VISIBILITY_TIMEOUT);
        let mut rng = StdRng::seed_from_u64(17);
        // The second half is published once a worker has been stopped and
        // resumed, so that the kill lands while there is work left.
        let first_half = pool::publish(
            &queue,
            0..messages / 2,
            Duration::from_millis(500),
            &mut rng,
        );
        let mut children = Vec::new();
        for _ in 0..2 {
            children.push(
                Command::new(std::env::current_exe()?)
                    .args(["--redis", url, "--worker", &prefix])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
        let scenario = Arc::new(Mutex::new(Scenario {
            messages,
            deliveries: first_half.deliveries,
            rng,
            phase: Phase::BeforeStop,
            pids: children
                .iter()
                .map(|c| c.id().ok_or("a worker exited at once"))
                .collect::<Result<_, _>>()?,
            sent: HashMap::new(),
            stopped: None,
            stale_refused: false,
            killed: None,
            killed_taken_over_by: None,
        }));
        let feeders: Vec<_> = children
            .into_iter()
            .enumerate()
            .map(|(n, child)| tokio::spawn(feed(n, child, queue.clone(), scenario.clone())))
            .collect();
        for feeder in feeders {
            feeder.await??;
        }
        let scenario = scenario.lock().unwrap();
        let stats = queue.stats();
        let deliveries = scenario.deliveries;
        let emails: usize = scenario.sent.values().map(Vec::len).sum();
        let once_each = (0..messages)
            .filter(|u| scenario.sent.get(u).is_some_and(|by| by.len() == 1))
            .count();
        let name = |w: usize| ["a", "b"][w];
        println!(
            "messages: {messages}, deliveries: {deliveries}, 2 worker processes on one RedisStore"
        );
        if let Some((user, worker)) = scenario.stopped {
            println!(
                "worker {} stopped mid-handler of user {user} past its lease; taken over by the other worker; its stale claim refused by fencing: {}",
                name(worker),
                if scenario.stale_refused { "yes" } else { "no" }
            );
        }
        if let Some((user, worker)) = scenario.killed {
            println!(
                "worker {} killed (SIGKILL) mid-handler of user {user}; its claim taken over after the lease: {}",
                name(worker),
                if scenario.killed_taken_over_by.is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        println!(
            "emails sent: {emails}, users emailed exactly once: {once_each}/{messages}, duplicates: {}",
            emails - once_each
        );
        let all_acked = stats.acked == deliveries && queue.outstanding() == 0;
        println!(
            "every delivery acked: {} ({}/{deliveries})",
            if all_acked { "yes" } else { "no" },
            stats.acked,
        );
        Ok(())
    }

    /// Hands deliveries to worker `me`, one at a time, until the queue is
    /// drained or the worker dies.
    async fn feed(
        me: usize,
        mut child: Child,
        queue: Queue<Message>,
        scenario: Arc<Mutex<Scenario>>,
    ) -> Result<(), std::io::Error> {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        while let Some(delivery) = queue.receive().await {
            let user = delivery.message.user;
            let stall = scenario.lock().unwrap().stall(user, me);
            let mode = if stall { "stall" } else { "go" };
            if stdin
                .write_all(format!("{user} {mode}\n").as_bytes())
                .await
                .is_err()
            {
                return Ok(());
            }
            if !answer(
                me, &mut child, &mut lines, delivery, stall, &queue, &scenario,
            )
            .await?
            {
                // The worker died with this delivery: it comes back after the
                // visibility timeout, to the other worker.
                let _ = child.wait().await;
                return Ok(());
            }
        }
        drop(stdin);
        child.wait().await?;
        Ok(())
    }

    /// Reads the worker's report on one delivery; false if the worker died.
    async fn answer(
        me: usize,
        child: &mut Child,
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        delivery: Delivery<Message>,
        stall: bool,
        queue: &Queue<Message>,
        scenario: &Mutex<Scenario>,
    ) -> Result<bool, std::io::Error> {
        let user = delivery.message.user;
        while let Some(line) = lines.next_line().await? {
            let (event, _) = line.split_once(' ').unwrap_or((&line, ""));
            let mut s = scenario.lock().unwrap();
            match event {
                "working" if stall => match s.phase {
                    Phase::Stopping { .. } => {
                        signal(s.pids[me], libc::SIGSTOP)?;
                        s.stopped = Some((user, me));
                    }
                    Phase::Killing { .. } => {
                        child.start_kill()?;
                        s.killed = Some((user, me));
                    }
                    _ => {}
                },
                "working" => {}
                "sent" => s.sent.entry(user).or_default().push(me),
                "ack" => {
                    if stall {
                        s.stall_missed(me);
                    }
                    match s.phase {
                        Phase::Stopping { user: u, worker } if u == user && worker != me => {
                            s.phase = Phase::BeforeKill;
                            signal(s.pids[worker], libc::SIGCONT)?;
                            let (half, all) = (s.messages / 2, s.messages);
                            let second_half = pool::publish(
                                queue,
                                half..all,
                                Duration::from_millis(500),
                                &mut s.rng,
                            );
                            s.deliveries += second_half.deliveries;
                        }
                        Phase::Killing { user: u, worker } if u == user && worker != me => {
                            s.phase = Phase::Done;
                            s.killed_taken_over_by = Some(me);
                        }
                        _ => {}
                    }
                    drop(s);
                    delivery.ack();
                    return Ok(true);
                }
                "lost" => {
                    s.stale_refused |= s.stopped == Some((user, me));
                    drop(s);
                    delivery.nack(RETRY_DELAY);
                    return Ok(true);
                }
                _ => {
                    if stall {
                        s.stall_missed(me);
                    }
                    drop(s);
                    delivery.nack(RETRY_DELAY);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(feature = "postgres")]
mod postgres_mode {
    //! Worker processes on one `PostgresStore`, fed by a queue in PostgreSQL
    //! itself.
    //!
    //! `deliveries` is an at-least-once queue: a worker leases a row with
    //! `FOR UPDATE SKIP LOCKED` by moving its `visible_at` past the
    //! visibility timeout, and acks it once handled; a row not acked in time
    //! is delivered again. The coordinator publishes each message one to
    //! three times (a third of the duplicates visible at once, the others
    //! later). Each worker handles a delivery with
    //! [`Once::run_in_transaction`], whose closure INSERTs one row into
    //! `effects` (no unique constraint) through the store's transaction, so
    //! the row and the stored value commit together.
    //!
    //! Each worker prints `executed <message>`, `replayed <message>`,
    //! `inflight <message>` (a duplicate running elsewhere: handed back to
    //! the queue), `lost <message>` or `failed <message> <why>`. A worker
    //! started with `--stall-after N` prints `holding <message>` after its
    //! N+1-th INSERT and hangs inside the closure, its INSERT uncommitted:
    //! the coordinator SIGKILLs it there and starts a replacement.

    use std::collections::HashMap;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sqlx::PgPool;
    use sqlx::postgres::PgPoolOptions;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::{Child, Command};
    use tower_reissue::idempotency::PgTransaction;
    use tower_reissue::idempotency::store::Fingerprint;
    use tower_reissue::once::{Failure, OnceError, Ran};
    use tower_reissue::{Once, PostgresStore};

    const LEASE: Duration = Duration::from_secs(1);
    const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3);
    const RETRY_DELAY: Duration = Duration::from_millis(100);
    /// Duplicates not delivered at once come back within this.
    const REDELIVER_WITHIN: Duration = Duration::from_secs(3);
    const WORKERS: [&str; 3] = ["a", "b", "c"];
    const REPLACEMENT: &str = "d";
    /// Messages worker `a` handles before it hangs mid-handler.
    const STALL_AFTER: u64 = 150;

    const SCHEMA: &str = "
        CREATE TABLE deliveries (
            id bigserial PRIMARY KEY,
            message_id bigint NOT NULL,
            payload text NOT NULL,
            visible_at timestamptz NOT NULL,
            acked bool NOT NULL DEFAULT false,
            receives int NOT NULL DEFAULT 0
        );
        CREATE INDEX deliveries_ready ON deliveries (visible_at) WHERE NOT acked;
        CREATE TABLE effects (
            message_id bigint NOT NULL,
            worker text NOT NULL
        );";

    /// Leases the next visible delivery for the visibility timeout.
    const RECEIVE: &str = "
        UPDATE deliveries
           SET visible_at = clock_timestamp() + $1::float8 * interval '1 millisecond',
               receives = receives + 1
         WHERE id = (SELECT id FROM deliveries
                      WHERE NOT acked AND visible_at <= clock_timestamp()
                      ORDER BY visible_at, id
                      FOR UPDATE SKIP LOCKED
                      LIMIT 1)
        RETURNING id, message_id, payload";

    async fn pool(url: &str, connections: u32) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect(url)
            .await
    }

    fn millis(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }

    pub async fn worker(
        url: &str,
        name: &str,
        stall_after: Option<u64>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let queue = pool(url, 1).await?;
        let store = PostgresStore::builder(url)
            .claim_connections(2)
            .work_connections(2)
            .connect()
            .await?;
        let once = Once::new(store).lease(LEASE);
        let mut inserted = 0_u64;
        loop {
            let delivery: Option<(i64, i64, String)> = sqlx::query_as(RECEIVE)
                .bind(millis(VISIBILITY_TIMEOUT))
                .fetch_optional(&queue)
                .await?;
            let Some((delivery, message, payload)) = delivery else {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE NOT acked")
                        .fetch_one(&queue)
                        .await?;
                if left == 0 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let stall = stall_after == Some(inserted);
            let result = once
                .run_in_transaction(
                    "consumer",
                    format!("message-{message}"),
                    Fingerprint::of(&payload),
                    |tx: PgTransaction| async move {
                        let mut conn = tx
                            .acquire()
                            .await
                            .map_err(|e| Failure::release(e.to_string()))?;
                        sqlx::query("INSERT INTO effects (message_id, worker) VALUES ($1, $2)")
                            .bind(message)
                            .bind(name)
                            .execute(&mut *conn)
                            .await
                            .map_err(|e| Failure::release(e.to_string()))?;
                        drop(conn);
                        if stall {
                            println!("holding {message}");
                            std::future::pending::<()>().await;
                        }
                        // The rest of the handler, after its write.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok::<_, Failure<String>>(format!("handled by {name}"))
                    },
                )
                .await;
            let ack = match result {
                Ok(Ran::Executed(_)) => {
                    inserted += 1;
                    println!("executed {message}");
                    true
                }
                Ok(Ran::Replayed(_)) => {
                    println!("replayed {message}");
                    true
                }
                Err(OnceError::InFlight) => {
                    println!("inflight {message}");
                    false
                }
                Err(OnceError::LeaseLost) => {
                    println!("lost {message}");
                    false
                }
                Err(error) => {
                    println!("failed {message} {error}");
                    false
                }
            };
            let statement = if ack {
                "UPDATE deliveries SET acked = true WHERE id = $1"
            } else {
                "UPDATE deliveries
                    SET visible_at = clock_timestamp() + $2::float8 * interval '1 millisecond'
                  WHERE id = $1"
            };
            let query = sqlx::query(statement).bind(delivery);
            let query = if ack {
                query
            } else {
                query.bind(millis(RETRY_DELAY))
            };
            query.execute(&queue).await?;
        }
    }

    /// What the workers reported.
    #[derive(Default)]
    struct Events {
        /// worker -> messages it executed.
        executed: HashMap<String, u64>,
        replayed: u64,
        in_flight: u64,
        lost: u64,
        failed: Vec<String>,
        /// (worker, message) killed mid-handler.
        killed: Option<(String, i64)>,
    }

    fn spawn(url: &str, name: &str, stall_after: Option<u64>) -> std::io::Result<Child> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--postgres", url, "--worker", name]);
        if let Some(n) = stall_after {
            command.args(["--stall-after", &n.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    }

    /// Reads worker `name`'s reports until it exits, and kills it if it
    /// reports holding a message.
    async fn watch(
        name: String,
        mut child: Child,
        events: Arc<Mutex<Events>>,
    ) -> std::io::Result<std::process::ExitStatus> {
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        while let Some(line) = lines.next_line().await? {
            let mut parts = line.splitn(3, ' ');
            let event = parts.next().unwrap_or_default();
            let message: i64 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(-1);
            let mut e = events.lock().unwrap();
            match event {
                "executed" => *e.executed.entry(name.clone()).or_default() += 1,
                "replayed" => e.replayed += 1,
                "inflight" => e.in_flight += 1,
                "lost" => e.lost += 1,
                "holding" => {
                    child.start_kill()?;
                    e.killed = Some((name.clone(), message));
                }
                _ => e.failed.push(format!("worker {name}: {line}")),
            }
        }
        child.wait().await
    }

    pub async fn coordinator(url: &str, messages: u64) -> Result<(), Box<dyn std::error::Error>> {
        let db = pool(url, 2).await?;
        sqlx::raw_sql(SCHEMA).execute(&db).await?;
        PostgresStore::connect(url).await?.migrate().await?;

        let mut rng = StdRng::seed_from_u64(17);
        let (mut deliveries, mut concurrent, mut later) = (0_u64, 0_u64, 0_u64);
        let mut rows: Vec<(i64, String, f64)> = Vec::new();
        for message in 0..messages as i64 {
            let payload = format!(r#"{{"template":"welcome","user":{message}}}"#);
            let copies = rng.random_range(1..=3);
            deliveries += copies;
            rows.push((message, payload.clone(), 0.0));
            for _ in 1..copies {
                let delay = if rng.random_bool(1.0 / 3.0) {
                    concurrent += 1;
                    0.0
                } else {
                    later += 1;
                    millis(REDELIVER_WITHIN.mul_f64(rng.random()))
                };
                rows.push((message, payload.clone(), delay));
            }
        }
        // Shuffled by the delays only: the first deliveries in message order.
        let (ids, payloads, delays): (Vec<i64>, Vec<String>, Vec<f64>) =
            rows.into_iter()
                .fold(Default::default(), |mut acc, (i, p, d)| {
                    acc.0.push(i);
                    acc.1.push(p);
                    acc.2.push(d);
                    acc
                });
        sqlx::query(
            "INSERT INTO deliveries (message_id, payload, visible_at)
             SELECT m, p, clock_timestamp() + d * interval '1 millisecond'
               FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS t(m, p, d)",
        )
        .bind(&ids)
        .bind(&payloads)
        .bind(&delays)
        .execute(&db)
        .await?;

        let events = Arc::new(Mutex::new(Events::default()));
        let mut watchers = Vec::new();
        for (n, name) in WORKERS.iter().enumerate() {
            let stall = (n == 0).then_some(STALL_AFTER);
            let child = spawn(url, name, stall)?;
            watchers.push(tokio::spawn(watch(name.to_string(), child, events.clone())));
        }
        // The first worker is killed mid-handler: start its replacement.
        let first = watchers.remove(0).await??;
        let replaced = events.lock().unwrap().killed.is_some();
        if !replaced && !first.success() {
            return Err(format!("worker {} failed: {first}", WORKERS[0]).into());
        }
        if replaced {
            let child = spawn(url, REPLACEMENT, None)?;
            watchers.push(tokio::spawn(watch(
                REPLACEMENT.to_string(),
                child,
                events.clone(),
            )));
        }
        for watcher in watchers {
            let status = watcher.await??;
            if !status.success() {
                return Err(format!("a worker failed: {status}").into());
            }
        }

        let received: i64 = sqlx::query_scalar("SELECT sum(receives)::bigint FROM deliveries")
            .fetch_one(&db)
            .await?;
        let unacked: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE NOT acked")
            .fetch_one(&db)
            .await?;
        let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&db)
            .await?;
        let per_message: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT m, (SELECT count(*) FROM effects WHERE message_id = m)
               FROM generate_series(0, $1 - 1) AS m",
        )
        .bind(messages as i64)
        .fetch_all(&db)
        .await?;
        let exactly_once = per_message.iter().filter(|(_, n)| *n == 1).count();
        let duplicates: i64 = per_message.iter().map(|(_, n)| (n - 1).max(0)).sum();
        let missing = per_message.iter().filter(|(_, n)| *n == 0).count();

        let events = std::mem::take(&mut *events.lock().unwrap());
        let executed: u64 = events.executed.values().sum();
        println!(
            "messages: {messages}, deliveries: {deliveries} ({concurrent} duplicates concurrent with the first, {later} later), received: {received}"
        );
        println!(
            "{} worker processes on one PostgresStore, the queue in PostgreSQL",
            WORKERS.len() + usize::from(replaced)
        );
        match &events.killed {
            Some((worker, message)) => {
                let by: Vec<String> =
                    sqlx::query_scalar("SELECT worker FROM effects WHERE message_id = $1")
                        .bind(message)
                        .fetch_all(&db)
                        .await?;
                println!(
                    "worker {worker} killed (SIGKILL) mid-handler of message {message} after {} messages ({first}), its INSERT uncommitted; replaced by worker {REPLACEMENT}",
                    events.executed.get(worker).copied().unwrap_or(0),
                );
                println!(
                    "message {message} afterwards: {} row(s), by worker(s) {}; the killed worker's row rolled back: {}",
                    by.len(),
                    by.join(", "),
                    if by.iter().any(|w| w == worker) {
                        "no"
                    } else {
                        "yes"
                    }
                );
            }
            None => println!("no worker was killed mid-handler"),
        }
        let mut by_worker: Vec<_> = events.executed.iter().collect();
        by_worker.sort();
        println!(
            "once: {executed} executed ({}), {} replayed, {} in flight (handed back), {} lease lost, {} failed",
            by_worker
                .iter()
                .map(|(w, n)| format!("{w}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            events.replayed,
            events.in_flight,
            events.lost,
            events.failed.len()
        );
        for failure in &events.failed {
            println!("  {failure}");
        }
        println!(
            "every delivery acked: {} ({} left)",
            if unacked == 0 { "yes" } else { "no" },
            unacked
        );
        println!(
            "effects rows: {effects}, messages with exactly one row: {exactly_once}/{messages}, duplicates: {duplicates}, missing: {missing}"
        );
        if exactly_once as u64 != messages || unacked != 0 {
            return Err(format!(
                "{} of {messages} messages do not have exactly one effect row",
                messages - exactly_once as u64
            )
            .into());
        }
        println!("exactly once: yes");
        Ok(())
    }
}
