//! A queue consumer that sends each welcome email exactly once, although the
//! queue delivers messages more than once and workers crash.
//!
//! ```text
//! cargo run --example consumer                       # worker pool on MemoryStore
//! cargo run --example consumer --features redis -- --redis redis://127.0.0.1:6379/
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

mod pool;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tower_reissue::{MemoryStore, Once};

use pool::{Mailbox, Settings};
use queue::Queue;

#[derive(Parser, Debug)]
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
    /// Internal: run as one worker process, keys under this prefix.
    #[arg(long, hide = true, requires = "redis")]
    worker: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
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
