//! A sliding window of signed totals in epoch-tagged atomic slots: the
//! retry budget's balance and the circuit breaker's failure counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Number of time slots the window is cut into.
const SLOTS: usize = 10;

/// A slot packs the epoch it was last written in (high 24 bits) with a signed
/// balance (low 40 bits), so a stale slot is recognised and reset by the same
/// compare-and-swap that writes to it. 40 bits hold 2^39 units per slot:
/// 390 million requests for the retry budget (1,400 units each), over
/// five hundred billion for the breaker's counts; 24 bits of epoch wrap after 2^24 slots (194 days at the
/// default one-second slots), and the wrapping comparisons stay correct
/// across the wrap.
const EPOCH_BITS: u32 = 24;
const VALUE_BITS: u32 = 64 - EPOCH_BITS;
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;
const VALUE_MAX: i64 = (1 << (VALUE_BITS - 1)) - 1;
const VALUE_MIN: i64 = -(1 << (VALUE_BITS - 1));

/// What every bank of one budget is built from.
#[derive(Clone, Copy)]
pub(crate) struct Terms {
    pub(crate) slot_nanos: u64,
    pub(crate) deposit: i64,
    pub(crate) withdraw: i64,
    /// What a throttled retry withdraws (the budget's); no more than
    /// `withdraw` at the budget's defaults.
    pub(crate) throttled: i64,
    pub(crate) reserve: i64,
}

/// A sliding window of signed totals in `SLOTS` epoch-tagged atomic slots.
pub(crate) struct Bank {
    pub(crate) terms: Terms,
    start: Instant,
    slots: [AtomicU64; SLOTS],
}

impl Bank {
    /// A plain event counter over `window`: each [`deposit`](Self::deposit)
    /// adds one, [`total`](Self::total) counts those within the window.
    pub(crate) fn counter(window: Duration) -> Bank {
        Bank::new(Terms {
            slot_nanos: slot_nanos(window),
            deposit: 1,
            withdraw: 1,
            throttled: 1,
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

    pub(crate) fn new(terms: Terms) -> Bank {
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

    pub(crate) fn withdraw(&self) -> bool {
        self.take(self.terms.withdraw)
    }

    pub(crate) fn withdraw_throttled(&self) -> bool {
        self.take(self.terms.throttled)
    }

    /// Takes `cost` if the balance covers it.
    fn take(&self, cost: i64) -> bool {
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
                let left = match value.checked_sub(cost) {
                    Some(left) if left >= VALUE_MIN && others.saturating_add(value) >= cost => left,
                    _ => return false,
                };
                let next = pack(epoch, left);
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

    pub(crate) fn available(&self) -> u64 {
        self.affords(self.terms.withdraw)
    }

    pub(crate) fn available_throttled(&self) -> u64 {
        self.affords(self.terms.throttled)
    }

    /// How many withdrawals of `cost` the balance covers.
    fn affords(&self, cost: i64) -> u64 {
        let balance = self
            .sum(self.epoch(), None)
            .saturating_add(self.terms.reserve);
        u64::try_from(balance.max(0) / cost.max(1)).unwrap_or(0)
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

impl Bank {
    /// No slot was written within the window.
    pub(crate) fn is_idle(&self) -> bool {
        let epoch = self.epoch();
        self.slots
            .iter()
            .all(|slot| !is_live(slot.load(Ordering::Acquire), epoch))
    }
}

/// One slot's share of `window`, in nanoseconds.
pub(crate) fn slot_nanos(window: Duration) -> u64 {
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
        for (e, v) in [(0, 0), (1, -1), (EPOCH_MASK, VALUE_MAX), (7, VALUE_MIN)] {
            assert_eq!(unpack(pack(e, v)), (e, v));
        }
    }
}
