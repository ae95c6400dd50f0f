//! A pool of workers draining a [`Queue`], each message sending one welcome
//! email through [`Once`], with workers that crash at random.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower_reissue::Once;
use tower_reissue::idempotency::store::{Fingerprint, IdempotencyStore};
use tower_reissue::once::{Failure, OnceError, Ran};

use crate::queue::Queue;

/// A "welcome this user" message.
#[derive(Clone, Debug)]
pub struct Message {
    pub user: u64,
}

impl Message {
    pub fn key(&self) -> String {
        format!("user-{}", self.user)
    }

    pub fn payload(&self) -> String {
        format!(r#"{{"template":"welcome","user":{}}}"#, self.user)
    }
}

/// The outbox of the mail provider: which user got how many emails.
#[derive(Default)]
pub struct Mailbox {
    sent: Mutex<HashMap<u64, usize>>,
}

impl Mailbox {
    fn send(&self, user: u64) -> String {
        let mut sent = self.sent.lock().unwrap();
        let count = sent.entry(user).or_default();
        *count += 1;
        format!("mail-{user}-{count}")
    }

    /// Emails sent to `user`.
    pub fn sent_to(&self, user: u64) -> usize {
        self.sent.lock().unwrap().get(&user).copied().unwrap_or(0)
    }

    /// Every email sent.
    pub fn total(&self) -> usize {
        self.sent.lock().unwrap().values().sum()
    }
}

/// The mail provider refused a message; nothing was sent.
#[derive(Debug)]
pub struct MailRefused;

impl fmt::Display for MailRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mail provider answered 451, try again later")
    }
}

/// How the workers behave.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub workers: usize,
    /// The longest a handler takes to render and send an email.
    pub work: Duration,
    /// Chance that a delivery's worker crashes while handling it (somewhere
    /// between receiving it and acking it).
    pub crash_ratio: f64,
    /// Chance that the mail provider refuses an email (the claim is released
    /// and the message retried).
    pub refusal_ratio: f64,
    /// How long a message handed back goes invisible.
    pub retry_delay: Duration,
    pub seed: u64,
}

/// What the workers saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    pub executed: usize,
    pub replayed: usize,
    /// Crashes while `Once::run` was still running (before or during the
    /// closure): the claim is left behind until its lease runs out.
    pub crashed_mid_handler: usize,
    /// Crashes after the email was recorded, before the ack.
    pub crashed_before_ack: usize,
    pub in_flight: usize,
    pub refused_by_mail: usize,
    pub lease_lost: usize,
    /// Any other error (a decode error, a fingerprint mismatch...): none
    /// expected.
    pub unexpected: usize,
}

impl Report {
    fn add(&mut self, other: &Report) {
        self.executed += other.executed;
        self.replayed += other.replayed;
        self.crashed_mid_handler += other.crashed_mid_handler;
        self.crashed_before_ack += other.crashed_before_ack;
        self.in_flight += other.in_flight;
        self.refused_by_mail += other.refused_by_mail;
        self.lease_lost += other.lease_lost;
        self.unexpected += other.unexpected;
    }
}

/// Runs `settings.workers` workers until every delivery in `queue` is acked.
pub async fn drain<St: IdempotencyStore>(
    queue: Queue<Message>,
    once: Once<St>,
    mailbox: Arc<Mailbox>,
    settings: Settings,
) -> Report {
    let workers: Vec<_> = (0..settings.workers)
        .map(|n| {
            let rng = StdRng::seed_from_u64(settings.seed.wrapping_add(n as u64));
            tokio::spawn(worker(
                queue.clone(),
                once.clone(),
                mailbox.clone(),
                settings,
                rng,
            ))
        })
        .collect();
    let mut total = Report::default();
    for worker in workers {
        total.add(&worker.await.expect("a worker panicked"));
    }
    total
}

async fn worker<St: IdempotencyStore>(
    queue: Queue<Message>,
    once: Once<St>,
    mailbox: Arc<Mailbox>,
    settings: Settings,
    mut rng: StdRng,
) -> Report {
    let mut report = Report::default();
    while let Some(delivery) = queue.receive().await {
        let message = delivery.message.clone();
        let render = settings.work.mul_f64(rng.random::<f64>());
        let refused = rng.random_bool(settings.refusal_ratio);
        // A crash lands at a random instant of the handling, or just after it.
        let crash_at = rng
            .random_bool(settings.crash_ratio)
            .then(|| settings.work.mul_f64(rng.random::<f64>() * 1.2));
        let mailbox = &mailbox;
        let run = once.run(
            "welcome-email",
            message.key(),
            Fingerprint::of(message.payload()),
            || async move {
                // Rendering the template, talking to the provider...
                tokio::time::sleep(render).await;
                if refused {
                    return Err(Failure::release(MailRefused));
                }
                // The effect is the last step: nothing can fail after it.
                Ok(mailbox.send(message.user))
            },
        );
        let result = match crash_at {
            None => run.await,
            Some(at) => {
                let mut run = std::pin::pin!(run);
                tokio::select! {
                    result = &mut run => {
                        // It finished before the crash: the process dies
                        // before the ack.
                        let _: Result<Ran<String>, _> = result;
                        report.crashed_before_ack += 1;
                        drop(delivery);
                        continue;
                    }
                    _ = tokio::time::sleep(at) => {
                        // The process dies mid-handler: `run` is dropped
                        // here, its claim stays in the store.
                        report.crashed_mid_handler += 1;
                        drop(delivery);
                        continue;
                    }
                }
            }
        };
        match result {
            Ok(ran) => {
                if ran.executed() {
                    report.executed += 1;
                } else {
                    report.replayed += 1;
                }
                delivery.ack();
            }
            Err(error) => {
                match error {
                    OnceError::InFlight => report.in_flight += 1,
                    OnceError::Failed(MailRefused) => report.refused_by_mail += 1,
                    OnceError::LeaseLost => report.lease_lost += 1,
                    _ => report.unexpected += 1,
                }
                delivery.nack(settings.retry_delay);
            }
        }
    }
    report
}

/// What [`publish`] put in the queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct Published {
    pub messages: u64,
    pub deliveries: usize,
    /// Duplicates pushed right behind the first delivery, so that another
    /// worker handles them at the same time.
    pub concurrent_duplicates: usize,
    /// Duplicates delivered again later, within `redeliver_within`.
    pub later_duplicates: usize,
}

/// Pushes a message for each of `users`, each delivered one to three times: a third of
/// the duplicates at once (concurrent with the first delivery), the others
/// at a random instant within `redeliver_within`.
pub fn publish(
    queue: &Queue<Message>,
    users: std::ops::Range<u64>,
    redeliver_within: Duration,
    rng: &mut StdRng,
) -> Published {
    let mut published = Published {
        messages: users.end - users.start,
        ..Published::default()
    };
    for user in users {
        let copies = rng.random_range(1..=3);
        published.deliveries += copies;
        queue.push(Message { user });
        for _ in 1..copies {
            if rng.random_bool(1.0 / 3.0) {
                published.concurrent_duplicates += 1;
                queue.push(Message { user });
            } else {
                published.later_duplicates += 1;
                queue.push_after(Message { user }, redeliver_within.mul_f64(rng.random()));
            }
        }
    }
    published
}
