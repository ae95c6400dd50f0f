//! A cap on how much extra load retries may add.
//!
//! # Throttled retries cost less
//!
//! A retry after a [`Throttled`](crate::Verdict::Throttled) verdict (a 429,
//! or a 503 that says when to come back) withdraws
//! [`throttled_cost`](RetryBudgetBuilder::throttled_cost) of what a retry
//! after a failure does: 5/14 by default, the AWS SDKs' retry costs (5
//! tokens for a throttling error against 14 for a transient one). A
//! throttled request was turned away before any work was done, usually by a
//! rate limiter that answers for next to nothing, and it comes back on the
//! longer throttling backoff; charged like a failure, a client that is only
//! being paced would spend the budget that its real failures need.
//!
//! A cheaper retry buys more of them. With cost `c` (relative to a failure's
//! retry), a client whose every attempt is throttled settles at
//! `1 + ratio / c` attempts per logical request (the floor's share is
//! divided by `c` too), where a total outage of failures stays at
//! `1 + ratio`. Measured over loopback HTTP, 2,000 logical requests in 60 s,
//! 10 attempts allowed (`tests/throttling.rs`; the floor's share is 10
//! retries/s over the 60 s and one window, 700 / 2,000 = 0.35):
//!
//! | every attempt answers | budget | bound | measured |
//! |---|---|---|---|
//! | 500 (GETs) | ratio 0.2, no floor | 1 + 0.2 = 1.2x | 1.198x |
//! | 429 | ratio 0.2, no floor | 1 + 0.2 × 14/5 = 1.56x | 1.559x |
//! | 500 (GETs) | default (floor 10/s) | 1.2 + 0.35 = 1.55x | 1.498x |
//! | 429 | default (floor 10/s) | 1 + (0.2 + 0.35) × 14/5 = 2.54x | 2.399x |
//!
//! The floor lets a client with little traffic retry at all, so its share
//! is large at the test's 33 requests a second, and a throttled retry buys
//! 14/5 as much of it (28 throttled retries a second); at 1,000 requests a
//! second it adds 0.01 attempts per request, 0.028 throttled.
//!
//! `throttled_cost(1.0)` charges throttling like a failure, and caps both
//! at 1.2x (plus the floor's share).

use http::Uri;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::hosts::{DEFAULT_MAX_HOSTS, Evictable, Hosts, host_key};
use crate::window::{Bank, Terms, slot_nanos};

/// What one logical request deposits. Withdrawals cost `DEPOSIT / ratio`
/// (throttled ones `throttled_cost` of that, rounded up) in integer
/// arithmetic; 1400 = 14 × 100 keeps ratios to two decimal digits at least
/// and makes the default throttled cost of 5/14 exact at the default ratio
/// (and at 0.1, 0.25, 0.5 and 1).
const DEPOSIT: i64 = 1400;

/// The default [`RetryBudgetBuilder::throttled_cost`]: the AWS SDKs' 5
/// tokens for a throttling error against 14 for a transient one.
const THROTTLED_COST: f64 = 5.0 / 14.0;

/// Allows retries up to a fraction of recent requests, plus a small floor.
///
/// Every logical request deposits into the budget; every retry (including
/// retries of requests the server provably never processed) withdraws from
/// it. With the defaults (`ratio` 0.2, floor 10 retries/s, window 10 s), a
/// client whose every request fails sends at most about 1.2 attempts per
/// logical request, plus 10 retries a second, whatever `max_attempts` says:
/// an outage is not turned into a retry storm. A retry after throttling
/// costs 5/14 of one after a failure (see the [module docs](self)): a
/// client whose every request is throttled sends at most about 1.56
/// attempts per logical request, plus 28 throttled retries a second.
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
    throttled_cost: f64,
    min_per_sec: u32,
    window: Duration,
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
            throttled_cost: THROTTLED_COST,
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

    /// Takes the cost of one retry after throttling (see
    /// [`throttled_cost`](RetryBudgetBuilder::throttled_cost)) if the budget
    /// allows it. For a per-host budget this is the balance of requests
    /// without an authority; see
    /// [`withdraw_throttled_for`](Self::withdraw_throttled_for).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    /// budget.deposit();
    /// // One request pays for one retry after a failure, or for two after
    /// // throttling (5/14 each).
    /// assert!(budget.withdraw_throttled());
    /// assert!(budget.withdraw_throttled());
    /// assert!(!budget.withdraw_throttled());
    /// ```
    pub fn withdraw_throttled(&self) -> bool {
        self.shared.bank.withdraw_throttled()
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

    /// How many retries after throttling the budget would allow right now
    /// (for a per-host budget: requests without an authority, and hosts past
    /// `max_hosts`).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(0.2).min_per_sec(0).build();
    /// for _ in 0..5 { budget.deposit(); }
    /// assert_eq!(budget.available(), 1);
    /// assert_eq!(budget.available_throttled(), 2, "5 requests at 20%, 5/14 each");
    /// ```
    pub fn available_throttled(&self) -> u64 {
        self.shared.bank.available_throttled()
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

    /// Takes the cost of one retry after throttling of a request to `uri`
    /// if its budget allows it. Same as
    /// [`withdraw_throttled`](Self::withdraw_throttled) unless the budget is
    /// per host.
    ///
    /// ```
    /// use http::Uri;
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).per_host().build();
    /// let uri = Uri::from_static("http://api.example/");
    /// budget.deposit_for(&uri);
    /// assert!(budget.withdraw_throttled_for(&uri));
    /// assert!(budget.withdraw_throttled_for(&uri));
    /// assert!(!budget.withdraw_for(&uri), "4/14 of a retry is left");
    /// ```
    pub fn withdraw_throttled_for(&self, uri: &Uri) -> bool {
        match &self.shared.hosts {
            None => self.shared.bank.withdraw_throttled(),
            Some(hosts) => hosts.with_bank(&self.shared.bank, uri, true, Bank::withdraw_throttled),
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

    /// How many retries after throttling of requests to `uri` the budget
    /// would allow right now. Same as
    /// [`available_throttled`](Self::available_throttled) unless the budget
    /// is per host.
    pub fn available_throttled_for(&self, uri: &Uri) -> u64 {
        match &self.shared.hosts {
            None => self.shared.bank.available_throttled(),
            Some(hosts) => {
                hosts.with_bank(&self.shared.bank, uri, false, Bank::available_throttled)
            }
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

    /// The configured cost of a retry after throttling, as a fraction of a
    /// retry after a failure.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// assert_eq!(RetryBudget::default().throttled_cost(), 5.0 / 14.0);
    /// ```
    pub fn throttled_cost(&self) -> f64 {
        self.shared.throttled_cost
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
    /// Ratio 0.2, throttled cost 5/14, 10 retries/s floor, 10 s window, one
    /// balance for all hosts.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RetryBudget");
        debug
            .field("ratio", &self.shared.ratio)
            .field("throttled_cost", &self.shared.throttled_cost)
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
    throttled_cost: f64,
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

    /// What a retry after throttling (a
    /// [`Throttled`](crate::Verdict::Throttled) verdict) costs, as a fraction
    /// of a retry after a failure: 5/14 by default (the AWS SDKs' 5 tokens
    /// against 14). In a total outage of throttling, attempts per logical
    /// request settle at `1 + ratio / cost` (1.56x at the defaults), where a
    /// total outage of failures stays at `1 + ratio`; see the
    /// [module docs](super::budget). Clamped to `0.01..=100.0`; NaN counts
    /// as 1 (throttling charged like a failure).
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// // Charge throttling like a failure: 1.2x at most in either outage.
    /// let budget = RetryBudget::builder().throttled_cost(1.0).build();
    /// assert_eq!(budget.throttled_cost(), 1.0);
    /// ```
    pub fn throttled_cost(mut self, cost: f64) -> Self {
        self.throttled_cost = if cost.is_nan() {
            1.0
        } else {
            cost.clamp(0.01, 100.0)
        };
        self
    }

    /// Retries per second allowed whatever the traffic, so that a client with
    /// few requests can still retry. With [`per_host`](Self::per_host), each
    /// host has its own floor. The floor is counted in retries after a
    /// failure: retries after throttling draw
    /// [`throttled_cost`](Self::throttled_cost) of one each.
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
        // Rounded up, so that the amplification bound holds: a throttled
        // retry never costs less than configured (a product a float's noise
        // away from a whole number is that number).
        let exact = withdraw as f64 * self.throttled_cost;
        let nearest = exact.round();
        let throttled = if (exact - nearest).abs() <= exact * 1e-9 {
            nearest
        } else {
            exact.ceil()
        };
        let throttled = (throttled as i64).max(1);
        let deposit = if self.ratio == 0.0 { 0 } else { DEPOSIT };
        let reserve = i64::from(self.min_per_sec)
            .saturating_mul(self.window.as_secs() as i64)
            .saturating_mul(withdraw);
        let slot_nanos = slot_nanos(self.window);
        let terms = Terms {
            slot_nanos,
            deposit,
            withdraw,
            throttled,
            reserve,
        };
        RetryBudget {
            shared: Arc::new(Shared {
                bank: Bank::new(terms),
                hosts: self.max_hosts.map(Hosts::new),
                ratio: self.ratio,
                throttled_cost: self.throttled_cost,
                min_per_sec: self.min_per_sec,
                window: self.window,
            }),
        }
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
            let full = self.len() >= self.max_hosts();
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

impl Evictable for Bank {
    fn is_idle(&self) -> bool {
        Bank::is_idle(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
