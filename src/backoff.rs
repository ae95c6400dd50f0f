//! How long to wait before the next attempt when the server did not say.

use rand::Rng;
use std::time::Duration;

/// A backoff strategy: the delay before retry number `n` (the first retry is
/// `n = 1`).
///
/// The default is [`Backoff::exponential`] with full jitter, base 100 ms,
/// cap 10 s: the delay before retry `n` is drawn uniformly from
/// `[0, min(cap, base * 2^(n-1))]`, which spreads a fleet of clients that
/// failed together over the whole window instead of sending them back in
/// lock-step.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10));
/// assert_eq!(backoff.max_delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.max_delay(4), Duration::from_millis(800));
/// assert_eq!(backoff.max_delay(30), Duration::from_secs(10));
/// for retry in 1..20 {
///     assert!(backoff.delay(retry, Duration::ZERO) <= backoff.max_delay(retry));
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Fixed(Duration),
    Exponential { base: Duration, cap: Duration },
    EqualJitter { base: Duration, cap: Duration },
    Decorrelated { base: Duration, cap: Duration },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// The default backoff after throttling (see
    /// [`RetryLayer::throttle_backoff`](crate::RetryLayer::throttle_backoff)):
    /// exponential with full jitter, base 1 s, cap 10 s. The base is the AWS
    /// SDKs' after throttling (against 50 ms after a transient error; ours is
    /// 100 ms); the cap is the one of [`Backoff::default`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::throttling();
    /// assert_eq!(b.max_delay(1), Duration::from_secs(1));
    /// assert_eq!(b.max_delay(3), Duration::from_secs(4));
    /// assert_eq!(b.max_delay(10), Duration::from_secs(10));
    /// ```
    pub fn throttling() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// Retry at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// assert_eq!(Backoff::none().delay(5, Duration::ZERO), Duration::ZERO);
    /// ```
    pub const fn none() -> Self {
        Backoff { kind: Kind::None }
    }

    /// Always wait `delay`, without jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::fixed(Duration::from_millis(250));
    /// assert_eq!(b.delay(3, Duration::ZERO), Duration::from_millis(250));
    /// ```
    pub const fn fixed(delay: Duration) -> Self {
        Backoff {
            kind: Kind::Fixed(delay),
        }
    }

    /// Exponential backoff with full jitter: uniform in
    /// `[0, min(cap, base * 2^(n-1))]`. A `cap` below `base` is raised to
    /// `base`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2));
    /// assert!(b.delay(2, Duration::ZERO) <= Duration::from_millis(100));
    /// ```
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Exponential {
                base,
                cap: cap.max(base),
            },
        }
    }

    /// Exponential backoff with equal jitter: half the exponential ceiling
    /// plus a uniform draw over the other half. Never retries sooner than
    /// half the ceiling.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::equal_jitter(Duration::from_millis(100), Duration::from_secs(10));
    /// let d = b.delay(3, Duration::ZERO);
    /// assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
    /// ```
    pub fn equal_jitter(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::EqualJitter {
                base,
                cap: cap.max(base),
            },
        }
    }

    /// Decorrelated jitter: uniform in `[base, 3 * previous delay]`, capped.
    /// Each delay depends on the one before, so pass it to
    /// [`delay`](Backoff::delay).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::decorrelated_jitter(Duration::from_millis(100), Duration::from_secs(10));
    /// let first = b.delay(1, Duration::ZERO);
    /// let second = b.delay(2, first);
    /// assert!(second >= Duration::from_millis(100) && second <= (first * 3).max(Duration::from_millis(100)));
    /// ```
    pub fn decorrelated_jitter(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Decorrelated {
                base,
                cap: cap.max(base),
            },
        }
    }

    /// The largest delay this strategy can choose before retry `retry`
    /// (1-based). Never decreases as `retry` grows.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let b = Backoff::default();
    /// assert_eq!(b.max_delay(2), Duration::from_millis(200));
    /// ```
    pub fn max_delay(&self, retry: u32) -> Duration {
        match self.kind {
            Kind::None => Duration::ZERO,
            Kind::Fixed(d) => d,
            Kind::Exponential { base, cap } | Kind::EqualJitter { base, cap } => {
                grow(base, 2, retry).min(cap)
            }
            Kind::Decorrelated { base, cap } => grow(base, 3, retry).min(cap),
        }
    }

    /// Draws the delay before retry `retry` (1-based), given the previous
    /// delay (only decorrelated jitter uses it), from the thread-local RNG.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    /// let d = Backoff::default().delay(1, Duration::ZERO);
    /// assert!(d <= Duration::from_millis(100));
    /// ```
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        self.delay_with(retry, previous, &mut rand::rng())
    }

    /// Like [`delay`](Backoff::delay), drawing from the given random number
    /// generator (for reproducible runs).
    ///
    /// ```
    /// use rand::SeedableRng;
    /// use std::time::Duration;
    /// use tower_reissue::Backoff;
    ///
    /// let b = Backoff::default();
    /// let a = b.delay_with(3, Duration::ZERO, &mut rand::rngs::StdRng::seed_from_u64(7));
    /// let c = b.delay_with(3, Duration::ZERO, &mut rand::rngs::StdRng::seed_from_u64(7));
    /// assert_eq!(a, c);
    /// ```
    pub fn delay_with<R: Rng + ?Sized>(
        &self,
        retry: u32,
        previous: Duration,
        rng: &mut R,
    ) -> Duration {
        match self.kind {
            Kind::None => Duration::ZERO,
            Kind::Fixed(d) => d,
            Kind::Exponential { .. } => uniform(rng, Duration::ZERO, self.max_delay(retry)),
            Kind::EqualJitter { .. } => {
                let ceiling = self.max_delay(retry);
                let half = ceiling / 2;
                half + uniform(rng, Duration::ZERO, ceiling - half)
            }
            Kind::Decorrelated { base, cap } => {
                let upper = previous.saturating_mul(3).max(base).min(cap);
                uniform(rng, base.min(upper), upper).min(self.max_delay(retry))
            }
        }
    }
}

/// `base * factor^(retry-1)`, saturating.
fn grow(base: Duration, factor: u32, retry: u32) -> Duration {
    let mut d = base;
    for _ in 1..retry {
        let next = d.saturating_mul(factor);
        if next == d {
            break;
        }
        d = next;
    }
    d
}

/// A duration drawn uniformly from `[low, high]`.
fn uniform<R: Rng + ?Sized>(rng: &mut R, low: Duration, high: Duration) -> Duration {
    let low_ns = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
    let high_ns = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
    if high_ns <= low_ns {
        return low;
    }
    Duration::from_nanos(rng.random_range(low_ns..=high_ns))
}
