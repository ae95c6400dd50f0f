//! A local message queue with at-least-once delivery, like SQS: a received
//! message stays invisible for a visibility timeout; if it is not acked by
//! then (its worker crashed, or was too slow), it is delivered again.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// A queue of `M`s, shared by every clone.
pub struct Queue<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Queue<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<M> {
    state: Mutex<State<M>>,
    changed: Notify,
    visibility_timeout: Duration,
}

struct State<M> {
    ready: VecDeque<(u64, M)>,
    /// Received and not yet acked: delivery id -> the receipt that holds it.
    invisible: HashMap<u64, u64>,
    /// Deliveries not acked yet, wherever they are (ready, invisible, or
    /// waiting to be pushed).
    outstanding: usize,
    next_delivery: u64,
    next_receipt: u64,
    stats: Stats,
}

/// What the queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Deliveries pushed by producers (duplicates included).
    pub pushed: usize,
    /// Times a worker received a delivery.
    pub received: usize,
    /// Deliveries acked.
    pub acked: usize,
    /// Deliveries handed back by their worker, to be delivered again later.
    pub nacked: usize,
    /// Deliveries delivered again because nobody acked them in time.
    pub timed_out: usize,
}

/// A received message. Dropping it without [`ack`](Self::ack) is a crash:
/// the message comes back after the visibility timeout.
pub struct Delivery<M> {
    pub message: M,
    id: u64,
    receipt: u64,
    queue: Queue<M>,
}

impl<M: Clone + Send + 'static> Queue<M> {
    pub fn new(visibility_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    invisible: HashMap::new(),
                    outstanding: 0,
                    next_delivery: 0,
                    next_receipt: 0,
                    stats: Stats::default(),
                }),
                changed: Notify::new(),
                visibility_timeout,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<M>> {
        self.shared.state.lock().unwrap()
    }

    /// Makes `message` deliverable now.
    pub fn push(&self, message: M) {
        let id = self.count_new();
        self.make_ready(id, message);
    }

    /// Makes `message` deliverable after `delay` (a redelivery by the broker).
    pub fn push_after(&self, message: M, delay: Duration) {
        let id = self.count_new();
        self.make_ready_after(id, message, delay);
    }

    fn count_new(&self) -> u64 {
        let mut state = self.state();
        state.outstanding += 1;
        state.stats.pushed += 1;
        state.next_delivery += 1;
        state.next_delivery
    }

    fn make_ready(&self, id: u64, message: M) {
        self.state().ready.push_back((id, message));
        self.shared.changed.notify_waiters();
    }

    fn make_ready_after(&self, id: u64, message: M, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.make_ready(id, message);
        });
    }

    /// The next delivery, or `None` once every delivery has been acked.
    pub async fn receive(&self) -> Option<Delivery<M>> {
        loop {
            let changed = self.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state();
                if let Some((id, message)) = state.ready.pop_front() {
                    state.next_receipt += 1;
                    let receipt = state.next_receipt;
                    state.invisible.insert(id, receipt);
                    state.stats.received += 1;
                    drop(state);
                    self.expire_later(id, receipt, message.clone());
                    return Some(Delivery {
                        message,
                        id,
                        receipt,
                        queue: self.clone(),
                    });
                }
                if state.outstanding == 0 {
                    return None;
                }
            }
            changed.await;
        }
    }

    fn expire_later(&self, id: u64, receipt: u64, message: M) {
        let queue = self.clone();
        let timeout = self.shared.visibility_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let expired = {
                let mut state = queue.state();
                let expired = state.invisible.get(&id) == Some(&receipt);
                if expired {
                    state.invisible.remove(&id);
                    state.stats.timed_out += 1;
                }
                expired
            };
            if expired {
                queue.make_ready(id, message);
            }
        });
    }

    /// Takes a delivery off the invisible set if `receipt` still holds it.
    fn settle(&self, id: u64, receipt: u64) -> bool {
        let mut state = self.state();
        if state.invisible.get(&id) != Some(&receipt) {
            return false;
        }
        state.invisible.remove(&id);
        true
    }

    pub fn stats(&self) -> Stats {
        self.state().stats
    }

    /// Deliveries not acked yet.
    pub fn outstanding(&self) -> usize {
        self.state().outstanding
    }
}

impl<M: Clone + Send + 'static> Delivery<M> {
    /// Done: the message is not delivered again. Returns false if the
    /// visibility timeout ran out first (the message is being delivered
    /// again).
    pub fn ack(self) -> bool {
        if !self.queue.settle(self.id, self.receipt) {
            return false;
        }
        let mut state = self.queue.state();
        state.outstanding -= 1;
        state.stats.acked += 1;
        drop(state);
        self.queue.shared.changed.notify_waiters();
        true
    }

    /// Not done: deliver it again after `delay`.
    pub fn nack(self, delay: Duration) {
        if self.queue.settle(self.id, self.receipt) {
            self.queue.state().stats.nacked += 1;
            self.queue.make_ready_after(self.id, self.message, delay);
        }
    }
}
