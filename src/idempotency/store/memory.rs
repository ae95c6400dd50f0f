use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, FencingToken, Fingerprint, IdempotencyStore, Outcome, RecordKey, StoreError};

/// An [`IdempotencyStore`] held in this process's memory.
///
/// Use it for a single server instance (a store shared by several instances
/// needs a shared backend). Every clone shares the same records; operations
/// take a short lock and never wait on I/O, so it is safe and cheap under many
/// threads.
///
/// It holds at most [`max_records`](Self::with_max_records) records (default
/// 10 000). To make room for a new claim it drops records that are no longer
/// live, then the oldest completed ones; it never drops a live in-flight
/// record, and fails the claim with [`StoreError::Full`] if that is all it
/// holds. Completed records keep their body (up to the layer's `max_body`),
/// so memory use is bounded by `max_records * max_body` plus headers.
///
/// Time comes from [`tokio::time::Instant`], so leases and TTLs follow tokio's
/// paused clock in tests.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::MemoryStore;
/// use tower_reissue::idempotency::store::{Claim, Fingerprint, IdempotencyStore, RecordKey};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::with_max_records(1_000);
/// let key = RecordKey::new("anonymous", "abc");
/// let claim = store.claim(&key, &Fingerprint::from_bytes([0; 32]), Duration::from_secs(60)).await;
/// assert!(matches!(claim, Ok(Claim::Acquired(_))));
/// assert_eq!(store.len(), 1);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    max_records: usize,
    next_token: u64,
    next_seq: u64,
    records: HashMap<RecordKey, Record>,
    // Every record by the instant it stops being live: expired records are
    // found without a scan.
    by_expiry: BTreeMap<(Instant, u64), RecordKey>,
    // Completed records, oldest completion first: the eviction order once
    // nothing has expired.
    completed: BTreeMap<u64, RecordKey>,
}

#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    seq: u64,
    expires_at: Instant,
    state: RecordState,
}

#[derive(Debug)]
enum RecordState {
    InFlight(FencingToken),
    Completed(Outcome),
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    const DEFAULT_MAX_RECORDS: usize = 10_000;

    /// A store holding at most 10 000 records.
    ///
    /// ```
    /// let store = tower_reissue::MemoryStore::new();
    /// assert!(store.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_max_records(Self::DEFAULT_MAX_RECORDS)
    }

    /// A store holding at most `max_records` records (at least one).
    ///
    /// ```
    /// let store = tower_reissue::MemoryStore::with_max_records(100);
    /// assert_eq!(store.max_records(), 100);
    /// ```
    pub fn with_max_records(max_records: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                max_records: max_records.max(1),
                next_token: 1,
                next_seq: 0,
                records: HashMap::new(),
                by_expiry: BTreeMap::new(),
                completed: BTreeMap::new(),
            })),
        }
    }

    /// The most records this store holds at once.
    pub fn max_records(&self) -> usize {
        self.lock().max_records
    }

    /// How many records the store holds, including expired ones it has not
    /// dropped yet.
    ///
    /// ```
    /// assert_eq!(tower_reissue::MemoryStore::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, and every update leaves the
        // indexes consistent, so a poisoned lock still guards valid state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn remove(&mut self, key: &RecordKey) {
        if let Some(record) = self.records.remove(key) {
            self.by_expiry.remove(&(record.expires_at, record.seq));
            if matches!(record.state, RecordState::Completed(_)) {
                self.completed.remove(&record.seq);
            }
        }
    }

    fn make_room(&mut self, now: Instant) -> Result<(), StoreError> {
        while self.records.len() >= self.max_records {
            let expired = self
                .by_expiry
                .first_key_value()
                .filter(|((expires_at, _), _)| *expires_at <= now)
                .map(|(_, key)| key.clone());
            let victim = match expired {
                Some(key) => key,
                None => match self.completed.first_key_value() {
                    Some((_, key)) => key.clone(),
                    None => return Err(StoreError::Full),
                },
            };
            self.remove(&victim);
        }
        Ok(())
    }

    fn claim(
        &mut self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        if let Some(record) = self.records.get(key) {
            if record.expires_at > now {
                let fingerprint = record.fingerprint;
                return Ok(match &record.state {
                    RecordState::InFlight(_) => Claim::InFlight { fingerprint },
                    RecordState::Completed(outcome) => Claim::Completed {
                        fingerprint,
                        outcome: outcome.clone(),
                    },
                });
            }
            self.remove(key);
        }
        self.make_room(now)?;
        let token = FencingToken::new(self.next_token);
        self.next_token += 1;
        let seq = self.next_seq();
        let expires_at = now
            .checked_add(lease)
            .unwrap_or_else(|| crate::time::after(lease));
        self.by_expiry.insert((expires_at, seq), key.clone());
        self.records.insert(
            key.clone(),
            Record {
                fingerprint: *fingerprint,
                seq,
                expires_at,
                state: RecordState::InFlight(token),
            },
        );
        Ok(Claim::Acquired(token))
    }

    /// The record `token` holds, if its lease is still running.
    fn held(&mut self, key: &RecordKey, token: FencingToken) -> Result<&mut Record, StoreError> {
        let now = Instant::now();
        match self.records.get_mut(key) {
            Some(record)
                if record.expires_at > now
                    && matches!(record.state, RecordState::InFlight(held) if held == token) =>
            {
                Ok(record)
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    fn set_expiry(&mut self, key: &RecordKey, expires_at: Instant, completed: Option<Outcome>) {
        let seq = self.next_seq();
        let Some(record) = self.records.get_mut(key) else {
            return;
        };
        self.by_expiry.remove(&(record.expires_at, record.seq));
        record.seq = seq;
        record.expires_at = expires_at;
        if let Some(outcome) = completed {
            record.state = RecordState::Completed(outcome);
            self.completed.insert(seq, key.clone());
        }
        self.by_expiry.insert((expires_at, seq), key.clone());
    }
}

impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.lock().claim(key, fingerprint, lease)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: Outcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.held(key, token)?;
        state.set_expiry(key, crate::time::after(ttl), Some(outcome));
        Ok(())
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.held(key, token)?;
        state.set_expiry(key, crate::time::after(lease), None);
        Ok(())
    }

    async fn release(&self, key: &RecordKey, token: FencingToken) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.held(key, token)?;
        state.remove(key);
        Ok(())
    }
}
