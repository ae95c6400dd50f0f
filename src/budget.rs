//! A cap on how much extra load retries may add.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Number of time slots the window is cut into.
const SLOTS: usize = 10;
/// What one logical request deposits. Withdrawals cost `DEPOSIT / ratio`,
/// so ratios keep two decimal digits of precision in integer arithmetic.
const DEPOSIT: i64 = 100;

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
/// Deposits and withdrawals are lock-free.
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
    bank: Arc<Bank>,
}

struct Bank {
    start: Instant,
    slot_nanos: u64,
    /// Each slot packs the epoch it was last written in (high 32 bits) with a
    /// signed balance (low 32 bits), so a stale slot is recognised and reset
    /// by the same compare-and-swap that writes to it.
    slots: [AtomicU64; SLOTS],
    deposit: i64,
    withdraw: i64,
    reserve: i64,
    ratio: f64,
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

    /// Starts a budget with the defaults: ratio 0.2, 10 retries/s, 10 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder()
    ///     .ratio(0.1)
    ///     .min_per_sec(1)
    ///     .window(Duration::from_secs(30))
    ///     .build();
    /// # let _ = budget;
    /// ```
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }

    /// Records one logical request. The retry layer calls this once per
    /// request, before its first attempt.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(1.0).min_per_sec(0).build();
    /// budget.deposit();
    /// assert!(budget.withdraw());
    /// ```
    pub fn deposit(&self) {
        if self.bank.deposit != 0 {
            self.bank.add(self.bank.deposit);
        }
    }

    /// Takes the cost of one retry if the budget allows it.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().min_per_sec(0).build();
    /// assert!(!budget.withdraw());
    /// ```
    pub fn withdraw(&self) -> bool {
        let bank = &*self.bank;
        if bank.balance() < bank.withdraw {
            return false;
        }
        bank.add(-bank.withdraw);
        // Another thread may have withdrawn between the check and the
        // subtraction: refund rather than overdraw.
        if bank.balance() < 0 {
            bank.add(bank.withdraw);
            return false;
        }
        true
    }

    /// How many retries the budget would allow right now.
    ///
    /// ```
    /// use tower_reissue::RetryBudget;
    /// let budget = RetryBudget::builder().ratio(0.25).min_per_sec(0).build();
    /// for _ in 0..8 { budget.deposit(); }
    /// assert_eq!(budget.available(), 2);
    /// ```
    pub fn available(&self) -> u64 {
        let bank = &*self.bank;
        if bank.withdraw == 0 {
            return u64::MAX;
        }
        u64::try_from(bank.balance().max(0) / bank.withdraw).unwrap_or(0)
    }

    /// The configured extra-load ratio.
    pub fn ratio(&self) -> f64 {
        self.bank.ratio
    }

    /// The configured floor, in retries per second.
    pub fn min_per_sec(&self) -> u32 {
        self.bank.min_per_sec
    }

    /// The configured window.
    pub fn window(&self) -> Duration {
        self.bank.window
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
        Arc::ptr_eq(&self.bank, &other.bank)
    }
}

impl Default for RetryBudget {
    /// Ratio 0.2, 10 retries/s floor, 10 s window.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.bank.ratio)
            .field("min_per_sec", &self.bank.min_per_sec)
            .field("window", &self.bank.window)
            .field("available", &self.available())
            .finish()
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
    /// few requests can still retry.
    pub fn min_per_sec(mut self, min_per_sec: u32) -> Self {
        self.min_per_sec = min_per_sec;
        self
    }

    /// How far back requests count. Clamped to 1 s ..= 60 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
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
        let slot_nanos = u64::try_from(self.window.as_nanos() / SLOTS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        RetryBudget {
            bank: Arc::new(Bank {
                start: Instant::now(),
                slot_nanos,
                slots: Default::default(),
                deposit,
                withdraw,
                reserve,
                ratio: self.ratio,
                min_per_sec: self.min_per_sec,
                window: self.window,
            }),
        }
    }
}

impl Bank {
    fn epoch(&self) -> u32 {
        let nanos = Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos();
        // Wraps after 2^32 slots (over a century at one-second slots); the
        // wrapping comparisons below stay correct across the wrap.
        (nanos / u128::from(self.slot_nanos)) as u32
    }

    fn add(&self, amount: i64) {
        let epoch = self.epoch();
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let (slot_epoch, value) = unpack(current);
            let base = if slot_epoch == epoch { value } else { 0 };
            let next = pack(epoch, clamp_i32(i64::from(base) + amount));
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn balance(&self) -> i64 {
        let epoch = self.epoch();
        let live: i64 = self
            .slots
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Acquire)))
            .filter(|(slot_epoch, _)| epoch.wrapping_sub(*slot_epoch) < SLOTS as u32)
            .map(|(_, value)| i64::from(value))
            .sum();
        live.saturating_add(self.reserve)
    }
}

fn pack(epoch: u32, value: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(value as u32)
}

fn unpack(word: u64) -> (u32, i32) {
    ((word >> 32) as u32, word as u32 as i32)
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        for (e, v) in [(0, 0), (7, -5), (u32::MAX, i32::MIN), (3, i32::MAX)] {
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
