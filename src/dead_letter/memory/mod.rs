use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::{
    AttemptOutcome, Counts, DeadLetter, DeadLetterId, DeadLetterQueue, DeadLetterState,
    FailedRequest, Lease, LeaseToken, Page, PageQuery, QueueError, ReplayRecord,
};

/// A [`DeadLetterQueue`] held in this process's memory: lost when the
/// process ends, so for tests and for programs where that is acceptable.
///
/// Every clone shares the same entries. Time is the system clock, as for the
/// durable queues, so leases behave the same across implementations.
///
/// ```
/// use tower_reissue::dead_letter::{DeadLetterQueue, MemoryQueue};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let queue = MemoryQueue::new();
/// assert_eq!(queue.counts().await.unwrap().total(), 0);
/// assert!(queue.is_empty());
/// # });
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryQueue {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_token: u64,
    entries: BTreeMap<DeadLetterId, Slot>,
}

#[derive(Debug)]
struct Slot {
    letter: DeadLetter,
    token: Option<LeaseToken>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries the queue holds, in any state.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the queue holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is made in one step under the lock: a panic
        // elsewhere cannot leave an entry half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry leased with `token`, for `complete` and `fail`.
    fn held(
        state: &mut State,
        id: DeadLetterId,
        token: LeaseToken,
    ) -> Result<&mut Slot, QueueError> {
        match state.entries.get_mut(&id) {
            Some(slot)
                if slot.token == Some(token)
                    && matches!(slot.letter.state, DeadLetterState::Leased { .. }) =>
            {
                Ok(slot)
            }
            _ => Err(QueueError::LeaseLost),
        }
    }
}

fn leasable(state: &DeadLetterState, now: SystemTime) -> bool {
    match state {
        DeadLetterState::Pending => true,
        DeadLetterState::Leased { until } => *until <= now,
        DeadLetterState::FailedAgain { retry_at } => *retry_at <= now,
        DeadLetterState::Replayed { .. } | DeadLetterState::Discarded => false,
    }
}

fn after(now: SystemTime, duration: Duration) -> SystemTime {
    super::from_millis(super::codec::millis_after(super::to_millis(now), duration))
}

/// The system clock at the resolution stores keep, so that what a memory
/// queue returns compares equal to what a durable one would.
fn now() -> SystemTime {
    super::from_millis(super::to_millis(SystemTime::now()))
}

impl DeadLetterQueue for MemoryQueue {
    async fn push(&self, mut request: FailedRequest) -> Result<DeadLetterId, QueueError> {
        request.at = super::from_millis(super::to_millis(request.at));
        let mut state = self.lock();
        state.next_id += 1;
        let id = DeadLetterId::new(state.next_id);
        let letter = DeadLetter {
            id,
            request,
            state: DeadLetterState::Pending,
            history: Vec::new(),
        };
        state.entries.insert(
            id,
            Slot {
                letter,
                token: None,
            },
        );
        Ok(id)
    }

    async fn lease(&self, max: usize, lease: Duration) -> Result<Vec<Lease>, QueueError> {
        let now = now();
        let until = after(now, lease);
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut leases = Vec::new();
        for slot in state.entries.values_mut() {
            if leases.len() >= max {
                break;
            }
            if !leasable(&slot.letter.state, now) {
                continue;
            }
            state.next_token += 1;
            let token = LeaseToken::new(state.next_token);
            slot.token = Some(token);
            slot.letter.state = DeadLetterState::Leased { until };
            leases.push(Lease {
                letter: slot.letter.clone(),
                token,
            });
        }
        Ok(leases)
    }

    async fn lease_one(
        &self,
        id: DeadLetterId,
        lease: Duration,
    ) -> Result<Option<Lease>, QueueError> {
        let now = now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let slot = state.entries.get_mut(&id).ok_or(QueueError::NotFound)?;
        let takeable = match slot.letter.state {
            DeadLetterState::Pending | DeadLetterState::FailedAgain { .. } => true,
            DeadLetterState::Leased { until } => until <= now,
            DeadLetterState::Replayed { .. } | DeadLetterState::Discarded => false,
        };
        if !takeable {
            return Ok(None);
        }
        state.next_token += 1;
        let token = LeaseToken::new(state.next_token);
        slot.token = Some(token);
        slot.letter.state = DeadLetterState::Leased {
            until: after(now, lease),
        };
        Ok(Some(Lease {
            letter: slot.letter.clone(),
            token,
        }))
    }

    async fn complete(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        status: StatusCode,
    ) -> Result<(), QueueError> {
        let mut state = self.lock();
        let slot = Self::held(&mut state, id, token)?;
        slot.token = None;
        slot.letter.state = DeadLetterState::Replayed { status };
        slot.letter.history.push(ReplayRecord {
            at: now(),
            outcome: AttemptOutcome::Status(status),
        });
        Ok(())
    }

    async fn fail(
        &self,
        id: DeadLetterId,
        token: LeaseToken,
        outcome: AttemptOutcome,
        retry_in: Duration,
    ) -> Result<(), QueueError> {
        let now = now();
        let mut state = self.lock();
        let slot = Self::held(&mut state, id, token)?;
        slot.token = None;
        slot.letter.state = DeadLetterState::FailedAgain {
            retry_at: after(now, retry_in),
        };
        slot.letter.history.push(ReplayRecord { at: now, outcome });
        Ok(())
    }

    async fn discard(&self, id: DeadLetterId) -> Result<(), QueueError> {
        let mut state = self.lock();
        let slot = state.entries.get_mut(&id).ok_or(QueueError::NotFound)?;
        if let DeadLetterState::Replayed { .. } = slot.letter.state {
            return Err(QueueError::Finished);
        }
        slot.token = None;
        slot.letter.state = DeadLetterState::Discarded;
        Ok(())
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>, QueueError> {
        Ok(self.lock().entries.get(&id).map(|slot| slot.letter.clone()))
    }

    async fn page(&self, query: &PageQuery) -> Result<Page, QueueError> {
        let state = self.lock();
        let from = query.after.map_or(0, |id| id.get().saturating_add(1));
        let mut matching = state
            .entries
            .range(DeadLetterId::new(from)..)
            .map(|(_, slot)| &slot.letter)
            .filter(|letter| {
                query.state.is_none_or(|kind| letter.state.kind() == kind)
                    && query
                        .reason
                        .as_deref()
                        .is_none_or(|reason| letter.request.reason == reason)
                    && query
                        .host
                        .as_deref()
                        .is_none_or(|host| letter.request.host() == Some(host))
            });
        let entries: Vec<DeadLetter> = matching.by_ref().take(query.limit).cloned().collect();
        let next = match entries.last() {
            Some(last) if matching.next().is_some() => Some(last.id),
            _ => None,
        };
        Ok(Page { entries, next })
    }

    async fn counts(&self) -> Result<Counts, QueueError> {
        let state = self.lock();
        let mut counts = Counts::default();
        // Counted by reference: a reason is copied once, not once per entry.
        let mut by_reason = BTreeMap::<&str, u64>::new();
        for slot in state.entries.values() {
            *counts.by_state.entry(slot.letter.state.kind()).or_default() += 1;
            *by_reason.entry(&slot.letter.request.reason).or_default() += 1;
        }
        counts.by_reason = by_reason
            .into_iter()
            .map(|(reason, n)| (reason.to_owned(), n))
            .collect();
        Ok(counts)
    }

    async fn purge(&self, before: SystemTime) -> Result<u64, QueueError> {
        let mut state = self.lock();
        let count = state.entries.len();
        state.entries.retain(|_, slot| {
            !(slot.letter.state.kind().is_final() && slot.letter.request.at < before)
        });
        Ok((count - state.entries.len()) as u64)
    }
}
