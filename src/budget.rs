//! A cap on how much extra load retries may add.

use arc_swap::ArcSwap;
use http::Uri;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Number of time slots the window is cut into.
const SLOTS: usize = 10;
/// What one logical request deposits. Withdrawals cost `DEPOSIT / ratio`,
/// so ratios keep two decimal digits of precision in integer arithmetic.
const DEPOSIT: i64 = 100;
/// Hosts a per-host budget (or circuit breaker) tracks by default before
/// new hosts share the overflow one.
pub(crate) const DEFAULT_MAX_HOSTS: usize = 1024;

/// A slot packs the epoch it was last written in (high 24 bits) with a signed
/// balance (low 40 bits), so a stale slot is recognised and reset by the same
/// compare-and-swap that writes to it. 40 bits hold over five billion
/// requests per slot; 24 bits of epoch wrap after 2^24 slots (194 days at the
/// default one-second slots), and the wrapping comparisons stay correct
/// across the wrap.
const EPOCH_BITS: u32 = 24;
const VALUE_BITS: u32 = 64 - EPOCH_BITS;
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;
const VALUE_MAX: i64 = (1 << (VALUE_BITS - 1)) - 1;
const VALUE_MIN: i64 = -(1 << (VALUE_BITS - 1));

/// Allows retries up to a fraction of recent requests, plus a small floor.
///
/// Every logical request deposits into the budget; every retry (including
/// retries of requests the server provably never processed) withdraws from
/// it. With the defaults (`ratio` 0.2, floor 10 retries/s, window 10 s), a
/// client whose every request fails sends at most about 1.2 attempts per
/// logical request, plus 10 retries a second, whatever `max_attempts` says:
/// an outage is not turned into a retry storm.
///
/// A `RetryBudget` is a cheap handle (an `Arc`): every clone of a
/// [`Retry`](crate::Retry) service shares the one given to its layer, and
/// passing the same handle to several layers makes them share it too.
/// Deposits and withdrawals are lock-free, and exact under contention: a
/// withdrawal is granted only if the balance covers it at the instant it is
/// taken, and no deposit or withdrawal is ever lost.
///
/// A budget built with [`per_host`](RetryBudgetBuilder::per_host) keeps one
/// balance per URI authority, so one failing host cannot spend the retries of
/// the healthy ones.
///
/// ```
/// use tower_reissue::RetryBudget;
///
/// let budget = RetryBudget::builder().ratio(0.5).min_per_sec(0).build();
/// assert!(!budget.withdraw(), "nothing deposited yet, no floor");
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw(), "two requests pay for one retry at 50%");
/// assert!(!budget.withdraw());
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

struct Shared {
    /// The whole budget; with a per-host budget, the one of requests without
    /// an authority and of hosts past `max_hosts`.
    bank: Bank,
    hosts: Option<Hosts<Bank>>,
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
}

/// What every bank of one budget is built from.
#[derive(Clone, Copy)]
pub(crate) struct Terms {
    slot_nanos: u64,
    deposit: i64,
    withdraw: i64,
    reserve: i64,
}

/// A sliding window of signed totals in `SLOTS` epoch-tagged atomic slots.
pub(crate) struct Bank {
    terms: Terms,
    start: Instant,
    slots: [AtomicU64; SLOTS],
}

/// One entry (a bank, a circuit breaker) per authority. Reads (every
/// request) take a lock-free snapshot of the map; only the first request to
/// a new host takes the mutex and publishes a grown copy, so the hot path
/// never waits on a writer.
pub(crate) struct Hosts<V> {
    map: ArcSwap<HashMap<Box<str>, Arc<V>>>,
    grow: Mutex<()>,
    max_hosts: usize,
}

/// What a per-host map may evict to make room for a new host.
pub(crate) trait Evictable {
    /// Nothing happened to it within its window.
    fn is_idle(&self) -> bool;
}

impl RetryBudget {
    /// A budget allowing `ratio` extra load (0.2 means 20%) with the default
    /// floor (10 retries/s) and window (10 s). `ratio` is clamped to
    /// `0.0..=100.0`; NaN counts as 0.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::new(0.2);
    /// // The floor lets a client with little traffic retry at all.
    /// assert!(budget.withdraw());
    /// ```
    pub fn new(ratio: f64) -> Self {
        Self::builder().ratio(ratio).build()
    }

    /// Starts a budget with the defaults: ratio 0.2, 10 retries/s, 10 s, one
    /// balance for all hosts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder()
    ///     .ratio(0.1)
    ///     .min_per_sec(1)
    ///     .window(Duration::from_secs(30))
    ///     .per_host()
    ///     .build();
    /// # let _ = budget;
    /// ```
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
            max_hosts: None,
        }
    }

    /// Records one logical request. For a per-host budget this is the
    /// balance of requests without an authority; see
    /// [`deposit_for`](Self::deposit_for).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    /// budget.deposit();
    /// assert!(budget.withdraw());
    /// ```
    pub fn deposit(&self) {
        self.shared.bank.deposit();
    }

    /// Takes the cost of one retry if the budget allows it. For a per-host
    /// budget this is the balance of requests without an authority; see
    /// [`withdraw_for`](Self::withdraw_for).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().min_per_sec(0).build();
    /// assert!(!budget.withdraw());
    /// ```
    pub fn withdraw(&self) -> bool {
        self.shared.bank.withdraw()
    }

    /// How many retries the budget would allow right now (for a per-host
    /// budget: requests without an authority, and hosts past `max_hosts`).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(0.25).min_per_sec(0).build();
    /// for _ in 0..8 { budget.deposit(); }
    /// assert_eq!(budget.available(), 2);
    /// ```
    pub fn available(&self) -> u64 {
        self.shared.bank.available()
    }

    /// Records one logical request to `uri`: the retry layer calls this once
    /// per request, before its first attempt. Same as
    /// [`deposit`](Self::deposit) unless the budget is per host.
    ///
    /// ```
    /// use http::Uri;
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).per_host().build();
    /// let uri = Uri::from_static("https://api.example/v1/emails");
    /// budget.deposit_for(&uri);
    /// assert_eq!(budget.available_for(&uri), 1);
    /// assert_eq!(budget.available_for(&Uri::from_static("https://other.example/")), 0);
    /// ```
    pub fn deposit_for(&self, uri: &Uri) {
        match &self.shared.hosts {
            None => self.shared.bank.deposit(),
            Some(hosts) => hosts.with_bank(&self.shared.bank, uri, true, Bank::deposit),
        }
    }

    /// Takes the cost of one retry of a request to `uri` if its budget allows
    /// it. Same as [`withdraw`](Self::withdraw) unless the budget is per host.
    ///
    /// ```
    /// use http::Uri;
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).per_host().build();
    /// let (down, up) = (Uri::from_static("http://down.example/"), Uri::from_static("http://up.example/"));
    /// budget.deposit_for(&up);
    /// assert!(!budget.withdraw_for(&down), "up.example's deposit is not down.example's");
    /// assert!(budget.withdraw_for(&up));
    /// ```
    pub fn withdraw_for(&self, uri: &Uri) -> bool {
        match &self.shared.hosts {
            None => self.shared.bank.withdraw(),
            Some(hosts) => hosts.with_bank(&self.shared.bank, uri, true, Bank::withdraw),
        }
    }

    /// How many retries of requests to `uri` the budget would allow right
    /// now. Same as [`available`](Self::available) unless the budget is per
    /// host. A host not seen yet has the floor's share.
    pub fn available_for(&self, uri: &Uri) -> u64 {
        match &self.shared.hosts {
            None => self.shared.bank.available(),
            Some(hosts) => hosts.with_bank(&self.shared.bank, uri, false, Bank::available),
        }
    }

    /// Whether the budget keeps one balance per authority.
    pub fn is_per_host(&self) -> bool {
        self.shared.hosts.is_some()
    }

    /// The configured extra-load ratio.
    pub fn ratio(&self) -> f64 {
        self.shared.ratio
    }

    /// The configured floor, in retries per second.
    pub fn min_per_sec(&self) -> u32 {
        self.shared.min_per_sec
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.shared.window
    }

    /// Whether two handles share one budget.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let a = RetryBudget::default();
    /// assert!(a.same_budget(&a.clone()));
    /// assert!(!a.same_budget(&RetryBudget::default()));
    /// ```
    pub fn same_budget(&self, other: &RetryBudget) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Default for RetryBudget {
    /// Ratio 0.2, 10 retries/s floor, 10 s window, one balance for all hosts.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RetryBudget");
        debug
            .field("ratio", &self.shared.ratio)
            .field("min_per_sec", &self.shared.min_per_sec)
            .field("window", &self.shared.window)
            .field("available", &self.available());
        if let Some(hosts) = &self.shared.hosts {
            debug
                .field("hosts", &hosts.len())
                .field("max_hosts", &hosts.max_hosts());
        }
        debug.finish()
    }
}

/// Configures a [`RetryBudget`]; see [`RetryBudget::builder`].
///
/// ```
/// use tower_reissue::RetryBudget;
/// let budget = RetryBudget::builder().ratio(0.1).build();
/// assert_eq!(budget.ratio(), 0.1);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RetryBudgetBuilder {
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
    max_hosts: Option<usize>,
}

impl RetryBudgetBuilder {
    /// Extra load allowed, as a fraction of recent requests (0.2 = 20%).
    /// Clamped to `0.0..=100.0`; NaN counts as 0.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 100.0)
        };
        self
    }

    /// Retries per second allowed whatever the traffic, so that a client with
    /// few requests can still retry. With [`per_host`](Self::per_host), each
    /// host has its own floor.
    pub fn min_per_sec(mut self, min_per_sec: u32) -> Self {
        self.min_per_sec = min_per_sec;
        self
    }

    /// How far back requests count. Clamped to 1 s ..= 60 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self
    }

    /// Keeps one balance per URI authority (host and port, without regard to
    /// case), like reqwest's per-host retry budgets: a host that is down
    /// spends its own retries, not those of the healthy hosts. At most 1024
    /// hosts are tracked (see [`max_hosts`](Self::max_hosts)).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().per_host().build();
    /// assert!(budget.is_per_host());
    /// ```
    pub fn per_host(mut self) -> Self {
        if self.max_hosts.is_none() {
            self.max_hosts = Some(DEFAULT_MAX_HOSTS);
        }
        self
    }

    /// Makes the budget per host (see [`per_host`](Self::per_host)) and
    /// bounds how many hosts get their own balance. A new host past the bound
    /// takes the place of a host idle for a whole window, if there is one;
    /// otherwise it shares the budget of requests without an authority.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().max_hosts(16).build();
    /// assert!(budget.is_per_host());
    /// ```
    pub fn max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = Some(max_hosts);
        self
    }

    /// Builds the budget.
    pub fn build(self) -> RetryBudget {
        let withdraw = if self.ratio == 0.0 {
            // Deposits buy nothing: only the floor pays for retries. Any
            // positive cost works; keep it at one request's worth.
            DEPOSIT
        } else {
            ((DEPOSIT as f64 / self.ratio).round() as i64).max(1)
        };
        let deposit = if self.ratio == 0.0 { 0 } else { DEPOSIT };
        let reserve = i64::from(self.min_per_sec)
            .saturating_mul(self.window.as_secs() as i64)
            .saturating_mul(withdraw);
        let slot_nanos = slot_nanos(self.window);
        let terms = Terms {
            slot_nanos,
            deposit,
            withdraw,
            reserve,
        };
        RetryBudget {
            shared: Arc::new(Shared {
                bank: Bank::new(terms),
                hosts: self.max_hosts.map(Hosts::new),
                ratio: self.ratio,
                min_per_sec: self.min_per_sec,
                window: self.window,
            }),
        }
    }
}

impl<V: Evictable> Hosts<V> {
    pub(crate) fn new(max_hosts: usize) -> Self {
        Hosts {
            map: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
            max_hosts,
        }
    }

    /// Runs `op` on the entry of `key`, if there is one.
    pub(crate) fn find<R>(&self, key: &str, op: impl FnOnce(&Arc<V>) -> R) -> Option<R> {
        self.map.load().get(key).map(op)
    }

    /// How many hosts have an entry.
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    pub(crate) fn max_hosts(&self) -> usize {
        self.max_hosts
    }

    /// Adds an entry made by `make` for a new host; `None` when the map is
    /// full of hosts active within their window.
    pub(crate) fn insert(&self, key: Cow<'_, str>, make: impl FnOnce(&str) -> V) -> Option<Arc<V>> {
        // A poisoned lock only means another thread panicked while copying
        // the map; the published map is still whole.
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        if let Some(entry) = current.get(&*key) {
            return Some(entry.clone());
        }
        let mut next: HashMap<Box<str>, Arc<V>> = if current.len() >= self.max_hosts {
            current
                .iter()
                .filter(|(_, entry)| !entry.is_idle())
                .map(|(k, entry)| (k.clone(), entry.clone()))
                .collect()
        } else {
            (*current).clone()
        };
        if next.len() >= self.max_hosts {
            return None;
        }
        let entry = Arc::new(make(&key));
        next.insert(key.into_owned().into_boxed_str(), entry.clone());
        self.map.store(Arc::new(next));
        Some(entry)
    }
}

impl Hosts<Bank> {
    /// Runs `op` on the bank of `uri`'s authority. `create` says whether an
    /// unseen host gets a bank of its own (deposits and withdrawals) or is
    /// looked at through a fresh one (`available_for`).
    fn with_bank<R>(&self, overflow: &Bank, uri: &Uri, create: bool, op: fn(&Bank) -> R) -> R {
        let Some(key) = host_key(uri) else {
            return op(overflow);
        };
        if let Some(result) = self.find(&key, |bank| op(bank)) {
            return result;
        }
        if !create {
            let full = self.len() >= self.max_hosts;
            return if full {
                op(overflow)
            } else {
                op(&Bank::new(overflow.terms))
            };
        }
        match self.insert(key, |_| Bank::new(overflow.terms)) {
            Some(bank) => op(&bank),
            None => op(overflow),
        }
    }
}

/// The authority of `uri` without user info, in lower case; borrowed unless
/// the URI spells the host with capitals.
pub(crate) fn host_key(uri: &Uri) -> Option<Cow<'_, str>> {
    let authority = uri.authority()?.as_str();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

impl Bank {
    /// A plain event counter over `window`: each [`deposit`](Self::deposit)
    /// adds one, [`total`](Self::total) counts those within the window.
    pub(crate) fn counter(window: Duration) -> Bank {
        Bank::new(Terms {
            slot_nanos: slot_nanos(window),
            deposit: 1,
            withdraw: 1,
            reserve: 0,
        })
    }

    /// The live slots' total.
    pub(crate) fn total(&self) -> i64 {
        self.sum(self.epoch(), None)
    }

    /// Forgets everything deposited so far.
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.store(0, Ordering::Release);
        }
    }

    fn new(terms: Terms) -> Bank {
        Bank {
            terms,
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    fn epoch(&self) -> u32 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        // u64 nanoseconds last 584 years; a u128 division would cost more
        // than the rest of a deposit.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        (nanos / self.terms.slot_nanos) as u32 & EPOCH_MASK
    }

    pub(crate) fn deposit(&self) {
        let amount = self.terms.deposit;
        if amount == 0 {
            return;
        }
        let epoch = self.epoch();
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let value = live_value(current, epoch);
            // Past the slot's range a deposit is dropped: the budget then
            // allows fewer retries, never more.
            let next = pack(epoch, (value + amount).min(VALUE_MAX));
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn withdraw(&self) -> bool {
        let cost = self.terms.withdraw;
        'period: loop {
            let epoch = self.epoch();
            let index = epoch as usize % SLOTS;
            let slot = &self.slots[index];
            // Within one slot period only the current slot changes, so
            // checking the balance and taking the cost in one
            // compare-and-swap on it makes the withdrawal exact: it never
            // overdraws, and a racing withdrawal never makes it refuse while
            // the balance still covers it.
            let others = self
                .sum(epoch, Some(index))
                .saturating_add(self.terms.reserve);
            let mut current = slot.load(Ordering::Acquire);
            loop {
                let value = live_value(current, epoch);
                if others.saturating_add(value) < cost || value - cost < VALUE_MIN {
                    return false;
                }
                let next = pack(epoch, value - cost);
                match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) if self.epoch() == epoch => return true,
                    Ok(_) => {
                        // The period ended mid-withdrawal: a thread already in
                        // the next one may have judged the balance without
                        // this withdrawal. Give it back and decide again.
                        self.refund(epoch, index, cost);
                        continue 'period;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// Adds `amount` back to slot `index` if it still belongs to `epoch`.
    fn refund(&self, epoch: u32, index: usize, amount: i64) {
        let slot = &self.slots[index];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let (slot_epoch, value) = unpack(current);
            if slot_epoch != epoch & EPOCH_MASK {
                return;
            }
            let next = pack(epoch, (value + amount).min(VALUE_MAX));
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn available(&self) -> u64 {
        let balance = self
            .sum(self.epoch(), None)
            .saturating_add(self.terms.reserve);
        u64::try_from(balance.max(0) / self.terms.withdraw).unwrap_or(0)
    }

    /// The live slots' total, leaving out `skip`.
    fn sum(&self, epoch: u32, skip: Option<usize>) -> i64 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, slot)| live_value(slot.load(Ordering::Acquire), epoch))
            .fold(0i64, i64::saturating_add)
    }
}

impl Evictable for Bank {
    /// No slot was written within the window.
    fn is_idle(&self) -> bool {
        let epoch = self.epoch();
        self.slots
            .iter()
            .all(|slot| !is_live(slot.load(Ordering::Acquire), epoch))
    }
}

/// One slot's share of `window`, in nanoseconds.
fn slot_nanos(window: Duration) -> u64 {
    u64::try_from(window.as_nanos() / SLOTS as u128)
        .unwrap_or(u64::MAX)
        .max(1)
}

fn is_live(word: u64, epoch: u32) -> bool {
    let (slot_epoch, _) = unpack(word);
    word != 0 && epoch.wrapping_sub(slot_epoch) & EPOCH_MASK < SLOTS as u32
}

/// The slot's balance if it was written within the window, else 0.
fn live_value(word: u64, epoch: u32) -> i64 {
    if is_live(word, epoch) {
        unpack(word).1
    } else {
        0
    }
}

fn pack(epoch: u32, value: i64) -> u64 {
    (u64::from(epoch & EPOCH_MASK) << VALUE_BITS) | (value as u64 & ((1 << VALUE_BITS) - 1))
}

fn unpack(word: u64) -> (u32, i64) {
    let epoch = (word >> VALUE_BITS) as u32;
    // Shifting left then arithmetically right sign-extends the 40-bit value.
    let value = ((word << EPOCH_BITS) as i64) >> EPOCH_BITS;
    (epoch, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        for (e, v) in [(0, 0), (7, -5), (EPOCH_MASK, VALUE_MIN), (3, VALUE_MAX)] {
            assert_eq!(unpack(pack(e, v)), (e, v));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = RetryBudget::builder()
            .ratio(1.0)
            .min_per_sec(0)
            .window(Duration::from_secs(1))
            .build();
        budget.deposit();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert_eq!(budget.available(), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(budget.available(), 0);
    }

    #[test]
    fn zero_ratio_only_spends_the_floor() {
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(1)
            .window(Duration::from_secs(2))
            .build();
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }
}
