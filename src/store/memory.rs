use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::time::Instant;

use super::{
    Claim, FencingToken, Fingerprint, IdempotencyStore, RecordKey, StoreError, StoredOutcome,
};

/// An [`IdempotencyStore`] held in this process's memory.
///
/// Use it for a single server instance (a store shared by several instances
/// needs a shared backend). Every clone shares the same records; operations
/// take a short lock and never wait on I/O, so it is safe and cheap under many
/// threads.
///
/// It holds at most [`max_records`](Self::with_max_records) records (default
/// 10 000). To make room for a new claim it drops records that are no longer
/// live, then the oldest completed record of the principal holding the most
/// records; it never drops a live in-flight record, and fails the claim with
/// [`StoreError::Full`] if that is all it holds. Completed records keep their
/// body (up to the layer's `max_body`), so memory use is bounded by
/// `max_records * max_body` plus headers.
///
/// # Quotas
///
/// One principal must not crowd the others out (a client sending fresh keys
/// in a loop would otherwise evict everyone's results, and their retries
/// would run again). So each principal may hold at most
/// [`max_in_flight_per_principal`](Self::max_in_flight_per_principal)
/// claims in flight (default 100), and once the store is full it may hold
/// no more than
/// [`max_records_per_principal`](Self::max_records_per_principal) live
/// records (default 1 000): while there is room, records over that quota
/// take nothing from anyone and are kept. A claim over either quota fails
/// with [`StoreError::QuotaExceeded`] and changes nothing: the layer answers
/// `429` with `Retry-After` (`quota-exceeded`), and no record of anyone is
/// dropped for it; a principal under its quota gets room by evicting from
/// whoever holds the most. Quotas apply to the clients of
/// [`IdempotencyLayer`](crate::IdempotencyLayer), not to
/// [`Once`](crate::Once) scopes, which hold what a program's own jobs need. The quotas do not scale with
/// [`with_max_records`](Self::with_max_records); set them to `usize::MAX` to
/// turn them off.
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
    max_in_flight_per_principal: usize,
    max_records_per_principal: usize,
    // What each principal holds, for its quotas and for choosing whose
    // record to drop when the store is full. Both tables are looked up by
    // the hashes a `RecordKey` computed once, not by hashing its strings
    // again on each lookup.
    principals: HashTable<Usage>,
    next_token: u64,
    next_seq: u64,
    // The indexes share one copy of each key.
    records: HashTable<Record>,
    // Every record by the instant it stops being live, soonest first:
    // expired records are found without a scan. A heap, so that a record
    // added or moved to the latest instant (nearly all are) costs no search;
    // the entries a removal or a move leaves behind are skipped when they
    // come due (see `index_expiry` for their bound).
    by_expiry: BinaryHeap<Reverse<Expiry>>,
    // The size at which `by_expiry` is rebuilt without its stale entries.
    rebuild_expiry_at: usize,
    // Principals by how many records they hold, most first: a full store
    // finds whose record to drop without a scan of every principal. See
    // `heaviest_victim` for how its entries are kept.
    heaviest: BinaryHeap<Heaviest>,
    next_usage: u64,
}

/// A principal's record count as of when it last grew.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Heaviest {
    records: usize,
    principal_hash: u64,
    // Tells a principal's usage from a later one of the same principal.
    usage: u64,
}

/// When the record of `key` stops being live, as of its change `seq`.
#[derive(Debug)]
struct Expiry {
    expires_at: Instant,
    seq: u64,
    key: Arc<RecordKey>,
}

impl Expiry {
    /// Whether this is still the record's current expiry.
    fn is_current(&self, record: &Record) -> bool {
        record.seq == self.seq
    }
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Expiry {}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    // Each change of a record takes a new `seq`, so no two entries tie.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.expires_at, self.seq).cmp(&(other.expires_at, other.seq))
    }
}

#[derive(Debug)]
struct Usage {
    principal: Cow<'static, str>,
    principal_hash: u64,
    // Which usage this is, for the `heaviest` index.
    id: u64,
    in_flight: usize,
    completed: Completed,
}

impl Usage {
    fn records(&self) -> usize {
        self.in_flight + self.completed.live
    }
}

/// A principal's completed records, oldest completion first.
///
/// Completions take growing `seq`s, so each goes at the back. A record that
/// goes away leaves its entry behind, skipped once it reaches the front:
/// cheaper than an ordered map's search on every completion and every
/// removal. Entries left behind are swept out whenever they outnumber the
/// live ones, so the queue holds at most about twice the principal's records.
#[derive(Debug, Default)]
struct Completed {
    entries: VecDeque<(u64, Arc<RecordKey>)>,
    live: usize,
}

impl Completed {
    fn push(&mut self, seq: u64, key: Arc<RecordKey>) {
        self.entries.push_back((seq, key));
        self.live += 1;
    }

    /// One of the records went (it is no longer in `records`).
    fn forget(&mut self, records: &HashTable<Record>) {
        self.live -= 1;
        if self.entries.len() > 2 * self.live + 16 {
            self.entries
                .retain(|(seq, key)| is_completion(records, *seq, key));
        }
    }

    /// The oldest completed record still in `records`.
    fn oldest(&mut self, records: &HashTable<Record>) -> Option<&Arc<RecordKey>> {
        while let Some((seq, key)) = self.entries.front() {
            if is_completion(records, *seq, key) {
                break;
            }
            self.entries.pop_front();
        }
        self.entries.front().map(|(_, key)| key)
    }
}

/// Whether `records` holds `key` as the completion numbered `seq` (a record
/// completed again under the same key has a later number).
fn is_completion(records: &HashTable<Record>, seq: u64, key: &RecordKey) -> bool {
    records
        .find(key.record_hash(), is_record(key))
        .is_some_and(|record| {
            record.seq == seq && matches!(record.state, RecordState::Completed(_))
        })
}

#[derive(Debug)]
struct Record {
    key: Arc<RecordKey>,
    fingerprint: Fingerprint,
    seq: u64,
    expires_at: Instant,
    state: RecordState,
}

impl Record {
    fn hash(&self) -> u64 {
        self.key.record_hash()
    }

    /// Whether `token` holds this record's lease at `now`.
    fn is_held(&self, token: FencingToken, now: Instant) -> bool {
        self.expires_at > now && matches!(self.state, RecordState::InFlight(held) if held == token)
    }
}

#[derive(Debug)]
enum RecordState {
    InFlight(FencingToken),
    Completed(StoredOutcome),
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    const DEFAULT_MAX_RECORDS: usize = 10_000;
    /// The smallest expiry index that is rebuilt: below it, stale entries
    /// cost too little to be worth a rebuild.
    const MIN_EXPIRY_REBUILD: usize = 64;
    const DEFAULT_MAX_IN_FLIGHT_PER_PRINCIPAL: usize = 100;
    const DEFAULT_MAX_RECORDS_PER_PRINCIPAL: usize = 1_000;
    /// How long a principal over its in-flight quota is asked to wait: about
    /// how long a request takes, not knowing the handlers.
    const IN_FLIGHT_QUOTA_RETRY_AFTER: Duration = Duration::from_secs(1);

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
                max_in_flight_per_principal: Self::DEFAULT_MAX_IN_FLIGHT_PER_PRINCIPAL,
                max_records_per_principal: Self::DEFAULT_MAX_RECORDS_PER_PRINCIPAL,
                principals: HashTable::new(),
                next_token: 1,
                next_seq: 0,
                records: HashTable::new(),
                by_expiry: BinaryHeap::new(),
                rebuild_expiry_at: Self::MIN_EXPIRY_REBUILD,
                heaviest: BinaryHeap::new(),
                next_usage: 0,
            })),
        }
    }

    /// The most records this store holds at once.
    pub fn max_records(&self) -> usize {
        self.lock().max_records
    }

    /// How many claims one principal may hold in flight at once (default
    /// 100, at least one); see [quotas](Self#quotas).
    ///
    /// ```
    /// let store = tower_reissue::MemoryStore::new().max_in_flight_per_principal(20);
    /// ```
    pub fn max_in_flight_per_principal(self, max: usize) -> Self {
        self.lock().max_in_flight_per_principal = max.max(1);
        self
    }

    /// How many live records, in flight or completed, one principal may hold
    /// (default 1 000, at least one); see [quotas](Self#quotas).
    ///
    /// ```
    /// let store = tower_reissue::MemoryStore::with_max_records(100_000)
    ///     .max_records_per_principal(10_000);
    /// ```
    pub fn max_records_per_principal(self, max: usize) -> Self {
        self.lock().max_records_per_principal = max.max(1);
        self
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

/// Finds `key`'s record in a table of records.
fn is_record(key: &RecordKey) -> impl Fn(&Record) -> bool + '_ {
    move |record| *record.key == *key
}

/// Finds `key`'s principal in a table of usages.
fn is_principal(key: &RecordKey) -> impl Fn(&Usage) -> bool + '_ {
    move |usage| usage.principal == key.principal()
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn record(&self, key: &RecordKey) -> Option<&Record> {
        self.records.find(key.record_hash(), is_record(key))
    }

    fn usage_mut(&mut self, key: &RecordKey) -> Option<&mut Usage> {
        self.principals
            .find_mut(key.principal_hash(), is_principal(key))
    }

    fn remove(&mut self, key: &RecordKey) {
        let Ok(entry) = self.records.find_entry(key.record_hash(), is_record(key)) else {
            return;
        };
        let (record, _) = entry.remove();
        let completed = matches!(record.state, RecordState::Completed(_));
        if let Ok(mut entry) = self
            .principals
            .find_entry(key.principal_hash(), is_principal(key))
        {
            let usage = entry.get_mut();
            if completed {
                usage.completed.forget(&self.records);
            } else {
                usage.in_flight -= 1;
            }
            if usage.records() == 0 {
                entry.remove();
            }
        }
    }

    /// Drops every record that is no longer live, so that quotas count only
    /// live ones. Each record is dropped once, so this costs little over
    /// time.
    fn drop_expired(&mut self, now: Instant) {
        while self
            .by_expiry
            .peek()
            .is_some_and(|Reverse(next)| next.expires_at <= now)
        {
            let Some(Reverse(due)) = self.by_expiry.pop() else {
                break;
            };
            if self
                .record(&due.key)
                .is_some_and(|record| due.is_current(record))
            {
                self.remove(&due.key);
            }
        }
    }

    /// Indexes a record's new expiry.
    fn index_expiry(&mut self, expires_at: Instant, seq: u64, key: Arc<RecordKey>) {
        self.by_expiry.push(Reverse(Expiry {
            expires_at,
            seq,
            key,
        }));
        // Entries left behind go only when they come due, which may be long
        // after their record. Rebuilt from the records each time it doubles,
        // the index stays within twice the most records the store holds, and
        // each rebuild is paid for by as many pushes as it keeps entries.
        if self.by_expiry.len() >= self.rebuild_expiry_at {
            self.by_expiry = self
                .records
                .iter()
                .map(|record| {
                    Reverse(Expiry {
                        expires_at: record.expires_at,
                        seq: record.seq,
                        key: record.key.clone(),
                    })
                })
                .collect();
            self.rebuild_expiry_at =
                (2 * self.by_expiry.len()).max(MemoryStore::MIN_EXPIRY_REBUILD);
        }
    }

    /// Refuses a new claim of `key`'s principal over its quotas.
    fn check_quota(&mut self, key: &RecordKey, now: Instant) -> Result<(), StoreError> {
        let records = &self.records;
        let Some(usage) = self
            .principals
            .find_mut(key.principal_hash(), is_principal(key))
        else {
            return Ok(());
        };
        if usage.in_flight >= self.max_in_flight_per_principal {
            return Err(StoreError::QuotaExceeded {
                retry_after: MemoryStore::IN_FLIGHT_QUOTA_RETRY_AFTER,
            });
        }
        // Records over the quota cost nobody anything while the store has
        // room; only when room must be made would they push others out.
        let full = records.len() >= self.max_records;
        if full && usage.records() >= self.max_records_per_principal {
            // Room comes back when the principal's oldest result expires.
            let retry_after = usage
                .completed
                .oldest(records)
                .and_then(|key| records.find(key.record_hash(), is_record(key)))
                .map_or(MemoryStore::IN_FLIGHT_QUOTA_RETRY_AFTER, |oldest| {
                    oldest.expires_at.saturating_duration_since(now)
                });
            return Err(StoreError::QuotaExceeded { retry_after });
        }
        Ok(())
    }

    fn make_room(&mut self) -> Result<(), StoreError> {
        while self.records.len() >= self.max_records {
            // Expired records are already gone: take a completed one from
            // whoever holds the most, so the heaviest user pays first.
            match self.heaviest_victim() {
                Some(key) => self.remove(&key),
                None => return Err(StoreError::Full),
            }
        }
        Ok(())
    }

    /// The oldest completed record of the principal holding the most
    /// records among those with a completed one.
    ///
    /// `heaviest` gets an entry whenever a principal's count grows, never
    /// when it shrinks: every principal's newest entry counts at least what
    /// it holds. So the first entry from the top
    /// whose count is still true belongs to a heaviest principal; one whose
    /// count is not is replaced by the true count on the way.
    fn heaviest_victim(&mut self) -> Option<Arc<RecordKey>> {
        // Heaviest principals with nothing completed, put back afterwards.
        let mut in_flight_only = Vec::new();
        let victim = loop {
            let Some(&top) = self.heaviest.peek() else {
                break None;
            };
            let Some(usage) = self
                .principals
                .find_mut(top.principal_hash, |usage| usage.id == top.usage)
            else {
                // The principal holds nothing any more.
                self.heaviest.pop();
                continue;
            };
            if usage.records() != top.records {
                let records = usage.records();
                self.heaviest.pop();
                self.heaviest.push(Heaviest { records, ..top });
            } else if usage.completed.live == 0 {
                in_flight_only.extend(self.heaviest.pop());
            } else {
                break usage.completed.oldest(&self.records).cloned();
            }
        };
        self.heaviest.extend(in_flight_only);
        victim
    }

    /// Enters a principal's grown count in the `heaviest` index.
    fn index_heaviest(&mut self, usage: Heaviest) {
        self.heaviest.push(usage);
        // Rebuilt from the principals once it holds more than about two
        // entries each, so it stays bounded and each rebuild is paid for by
        // as many pushes.
        if self.heaviest.len() > 2 * self.principals.len() + 16 {
            self.heaviest = self
                .principals
                .iter()
                .map(|usage| Heaviest {
                    records: usage.records(),
                    principal_hash: usage.principal_hash,
                    usage: usage.id,
                })
                .collect();
        }
    }

    fn claim(
        &mut self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        if let Some(record) = self.record(key) {
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
        self.drop_expired(now);
        if key.is_client() {
            self.check_quota(key, now)?;
        }
        self.make_room()?;
        let token = FencingToken::new(self.next_token);
        self.next_token += 1;
        let seq = self.next_seq();
        let expires_at = now
            .checked_add(lease)
            .unwrap_or_else(|| crate::time::after(lease));
        let shared = Arc::new(key.clone());
        self.records.insert_unique(
            key.record_hash(),
            Record {
                key: shared.clone(),
                fingerprint: *fingerprint,
                seq,
                expires_at,
                state: RecordState::InFlight(token),
            },
            Record::hash,
        );
        self.index_expiry(expires_at, seq, shared);
        let next_usage = self.next_usage;
        let grown = match self
            .principals
            .entry(key.principal_hash(), is_principal(key), |usage| {
                usage.principal_hash
            }) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => {
                let usage = entry.get_mut();
                usage.in_flight += 1;
                Heaviest {
                    records: usage.records(),
                    principal_hash: usage.principal_hash,
                    usage: usage.id,
                }
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                self.next_usage += 1;
                entry.insert(Usage {
                    principal: key.shared_principal().clone(),
                    principal_hash: key.principal_hash(),
                    id: next_usage,
                    in_flight: 1,
                    completed: Completed::default(),
                });
                Heaviest {
                    records: 1,
                    principal_hash: key.principal_hash(),
                    usage: next_usage,
                }
            }
        };
        self.index_heaviest(grown);
        Ok(Claim::Acquired(token))
    }

    /// The record `token` holds, if its lease is still running.
    fn held(&mut self, key: &RecordKey, token: FencingToken) -> Result<&mut Record, StoreError> {
        let now = Instant::now();
        match self.records.find_mut(key.record_hash(), is_record(key)) {
            Some(record) if record.is_held(token, now) => Ok(record),
            _ => Err(StoreError::LeaseLost),
        }
    }

    /// Moves the record `token` holds to live for `live_for` from now,
    /// completed with `completed` if given; one lookup of the record.
    fn extend(
        &mut self,
        key: &RecordKey,
        token: FencingToken,
        live_for: Duration,
        completed: Option<StoredOutcome>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let seq = self.next_seq();
        let record = match self.records.find_mut(key.record_hash(), is_record(key)) {
            Some(record) if record.is_held(token, now) => record,
            _ => return Err(StoreError::LeaseLost),
        };
        let expires_at = now
            .checked_add(live_for)
            .unwrap_or_else(|| crate::time::after(live_for));
        record.seq = seq;
        record.expires_at = expires_at;
        let shared = record.key.clone();
        if let Some(outcome) = completed {
            record.state = RecordState::Completed(outcome);
            if let Some(usage) = self.usage_mut(key) {
                usage.in_flight -= 1;
                usage.completed.push(seq, shared.clone());
            }
        }
        self.index_expiry(expires_at, seq, shared);
        Ok(())
    }
}

// Functions returning `async` blocks rather than `async fn`s: an `async fn`
// keeps a second copy of its arguments (an outcome, here) in its future, and
// these futures are part of every keyed request's.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps a second copy of its arguments"
)]
impl IdempotencyStore for MemoryStore {
    fn claim(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        async move { self.lock().claim(key, fingerprint, lease) }
    }

    fn complete(
        &self,
        key: &RecordKey,
        token: FencingToken,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.lock().extend(key, token, ttl, Some(outcome)) }
    }

    fn renew(
        &self,
        key: &RecordKey,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.lock().extend(key, token, lease, None) }
    }

    fn release(
        &self,
        key: &RecordKey,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let mut state = self.lock();
            state.held(key, token)?;
            state.remove(key);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_expiry_index_drops_what_it_left_behind_and_keeps_live_records() {
        let store = MemoryStore::new();
        let fingerprint = Fingerprint::from_bytes([0; 32]);
        let short = RecordKey::new("p", "short");
        {
            let mut state = store.lock();
            assert!(matches!(
                state.claim(&short, &fingerprint, Duration::from_secs(1)),
                Ok(Claim::Acquired(_))
            ));
            for i in 0..1_000 {
                let key = RecordKey::new("p", i.to_string());
                let Ok(Claim::Acquired(token)) =
                    state.claim(&key, &fingerprint, Duration::from_secs(60))
                else {
                    panic!("claim {i} refused");
                };
                // A renewal and a removal each leave an entry behind.
                state
                    .extend(&key, token, Duration::from_secs(60), None)
                    .unwrap();
                state.remove(&key);
                assert!(state.by_expiry.len() <= MemoryStore::MIN_EXPIRY_REBUILD);
            }
            assert_eq!(state.records.len(), 1);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut state = store.lock();
        let later = RecordKey::new("p", "later");
        assert!(matches!(
            state.claim(&later, &fingerprint, Duration::from_secs(60)),
            Ok(Claim::Acquired(_))
        ));
        // The short record expired through its rebuilt entry.
        assert!(state.record(&short).is_none());
        assert_eq!(state.records.len(), 1);
    }

    /// Claims and completes `key` for `ttl`.
    fn completed(state: &mut State, key: &RecordKey, ttl: Duration) {
        let fingerprint = Fingerprint::from_bytes([0; 32]);
        let Ok(Claim::Acquired(token)) = state.claim(key, &fingerprint, Duration::from_secs(60))
        else {
            panic!("claim of {} refused", key.key());
        };
        let outcome = StoredOutcome::NotStored {
            status: http::StatusCode::OK,
        };
        state.extend(key, token, ttl, Some(outcome)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_skips_completions_that_went_and_sweeps_them_out() {
        let store = MemoryStore::with_max_records(3);
        let key = |name: &str| RecordKey::new("p", name);
        let long = Duration::from_secs(60);
        {
            let mut state = store.lock();
            completed(&mut state, &key("a"), long);
            completed(&mut state, &key("b"), Duration::from_secs(1));
            completed(&mut state, &key("c"), long);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut state = store.lock();
        // `b` expires and makes the room for `d`.
        completed(&mut state, &key("d"), long);
        assert!(state.record(&key("b")).is_none());
        assert!(state.record(&key("a")).is_some());
        // Full: the oldest completion goes, `a`; then `c`, past the entry
        // `b` left behind.
        completed(&mut state, &key("e"), long);
        assert!(state.record(&key("a")).is_none());
        completed(&mut state, &key("f"), long);
        let held: Vec<_> = ["c", "d", "e", "f"]
            .into_iter()
            .filter(|name| state.record(&key(name)).is_some())
            .collect();
        assert_eq!(held, ["d", "e", "f"]);

        // Records that go out of order leave entries behind; they do not
        // pile up.
        for i in 0..100 {
            let name = format!("gone-{i}");
            completed(&mut state, &key(&name), long);
            state.remove(&key(&name));
        }
        let usage = state.principals.iter().next().unwrap();
        assert_eq!(usage.completed.live, state.records.len());
        assert_eq!(usage.completed.live, 2);
        assert!(usage.completed.entries.len() <= 2 * 2 + 16 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_drops_from_the_heaviest_principal_with_a_completed_record() {
        let store = MemoryStore::with_max_records(4);
        let mut state = store.lock();
        let fingerprint = Fingerprint::from_bytes([0; 32]);
        let lease = Duration::from_secs(60);
        let claim = |state: &mut State, principal: &str, key: &str| {
            state.claim(&RecordKey::new(principal, key), &fingerprint, lease)
        };
        for key in ["a1", "a2", "a3"] {
            completed(&mut state, &RecordKey::new("A", key), lease);
        }
        assert!(matches!(
            claim(&mut state, "B", "b1"),
            Ok(Claim::Acquired(_))
        ));
        // `A` shrinks to one record: its count in the index is now too high.
        state.remove(&RecordKey::new("A", "a2"));
        state.remove(&RecordKey::new("A", "a3"));
        for key in ["b2", "b3"] {
            assert!(matches!(
                claim(&mut state, "B", key),
                Ok(Claim::Acquired(_))
            ));
        }
        // Full. `B` holds the most, but nothing completed: `A`'s goes.
        assert!(matches!(
            claim(&mut state, "C", "c1"),
            Ok(Claim::Acquired(_))
        ));
        assert!(state.record(&RecordKey::new("A", "a1")).is_none());
        for (principal, key) in [("B", "b1"), ("B", "b2"), ("B", "b3"), ("C", "c1")] {
            assert!(state.record(&RecordKey::new(principal, key)).is_some());
        }
        // Only claims in flight are left, and none is dropped.
        assert!(matches!(
            claim(&mut state, "D", "d1"),
            Err(StoreError::Full)
        ));
        assert_eq!(state.records.len(), 4);
    }
}
