//! The state machine of one breaker: lock-free while closed, a mutex for
//! the rare open / half-open transitions.

use http::Uri;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use super::{BreakerState, StateChange};
use crate::error::CircuitOpen;
use crate::hosts::{Evictable, Hosts, host_key};
use crate::window::Bank;

pub(crate) type StateHook = Arc<dyn Fn(&StateChange<'_>) + Send + Sync>;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What every breaker of one layer follows.
pub(crate) struct Policy {
    pub(crate) failure_ratio: f64,
    pub(crate) min_throughput: u32,
    pub(crate) window: Duration,
    pub(crate) break_duration: Duration,
    pub(crate) max_break_duration: Duration,
    pub(crate) probes: u32,
    pub(crate) on_state_change: Option<StateHook>,
}

impl Policy {
    /// The break after `reopens` failed probes in a row: doubled each time,
    /// capped.
    fn break_after(&self, reopens: u32) -> Duration {
        self.break_duration
            .saturating_mul(1u32 << reopens.min(31))
            .min(self.max_break_duration)
    }

    /// What a caller is told while every probe slot is taken: the probe's
    /// answer is not due at a known instant, so come back after a short
    /// while (a tenth of the break, at most a second) and be told again if
    /// it is still out.
    fn half_open_wait(&self) -> Duration {
        (self.break_duration / 10).min(Duration::from_secs(1))
    }
}

/// The breakers of one layer: one for all hosts, or one per host.
pub(crate) struct Breakers {
    pub(crate) policy: Policy,
    /// The only breaker, or with `per_host` the one of requests without an
    /// authority and of hosts past `max_hosts`.
    global: Arc<Breaker>,
    hosts: Option<Hosts<Breaker>>,
}

impl Breakers {
    pub(crate) fn new(policy: Policy, max_hosts: Option<usize>) -> Self {
        let global = Arc::new(Breaker::new(None, policy.window));
        Breakers {
            policy,
            global,
            hosts: max_hosts.map(Hosts::new),
        }
    }

    pub(crate) fn is_per_host(&self) -> bool {
        self.hosts.is_some()
    }

    /// The breaker that guards requests to `uri`.
    #[inline]
    pub(crate) fn breaker_for(&self, uri: &Uri) -> Arc<Breaker> {
        let Some(hosts) = &self.hosts else {
            return self.global.clone();
        };
        let Some(key) = host_key(uri) else {
            return self.global.clone();
        };
        if let Some(breaker) = hosts.find(&key, Arc::clone) {
            return breaker;
        }
        let window = self.policy.window;
        hosts
            .insert(key, |host| Breaker::new(Some(host.into()), window))
            .unwrap_or_else(|| self.global.clone())
    }

    /// The state of the breaker of `uri` (a host not seen yet is closed).
    pub(crate) fn state_for(&self, uri: &Uri) -> BreakerState {
        let found = self
            .hosts
            .as_ref()
            .zip(host_key(uri))
            .map(|(hosts, key)| hosts.find(&key, |b| b.state()));
        match found {
            Some(Some(state)) => state,
            Some(None) => BreakerState::Closed,
            None => self.global.state(),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.global.state()
    }
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: counted in the window.
    Closed,
    /// A half-open probe of the given episode.
    Probe(u64),
}

pub(crate) struct Breaker {
    host: Option<Box<str>>,
    state: AtomicU8,
    start: Instant,
    /// While open: when the break ends, in nanoseconds since `start`. Read
    /// without the lock, so refusals while open stay lock-free too.
    open_until: AtomicU64,
    calls: Bank,
    failures: Bank,
    trips: Mutex<Trips>,
}

/// The open / half-open bookkeeping.
#[derive(Default)]
struct Trips {
    /// Failed probes since the breaker last closed.
    reopens: u32,
    /// Counts half-open periods, so that a probe of an earlier one that
    /// answers late is not taken for one of the current period.
    episode: u64,
    probes_out: u32,
    probes_ok: u32,
}

impl Evictable for Breaker {
    fn is_idle(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED && self.calls.is_idle()
    }
}

impl Breaker {
    fn new(host: Option<Box<str>>, window: Duration) -> Self {
        Breaker {
            host,
            state: AtomicU8::new(CLOSED),
            start: Instant::now(),
            open_until: AtomicU64::new(0),
            calls: Bank::counter(window),
            failures: Bank::counter(window),
            trips: Mutex::default(),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn now_nanos(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    fn time_left(&self) -> Duration {
        let until = self.open_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.now_nanos()))
    }

    /// Lets a call through, or refuses it with the time until the next
    /// probe.
    #[inline]
    pub(crate) fn admit(&self, policy: &Policy) -> Result<Admission, CircuitOpen> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(Admission::Closed),
            OPEN => {
                let left = self.time_left();
                if !left.is_zero() {
                    return Err(CircuitOpen::new(left));
                }
                self.admit_tripped(policy)
            }
            _ => self.admit_tripped(policy),
        }
    }

    #[cold]
    fn admit_tripped(&self, policy: &Policy) -> Result<Admission, CircuitOpen> {
        let mut change = None;
        let admission = {
            let mut trips = self.lock();
            match self.state.load(Ordering::Acquire) {
                CLOSED => Ok(Admission::Closed),
                OPEN if !self.time_left().is_zero() => Err(CircuitOpen::new(self.time_left())),
                state => {
                    if state == OPEN {
                        trips.episode += 1;
                        trips.probes_out = 0;
                        trips.probes_ok = 0;
                        self.state.store(HALF_OPEN, Ordering::Release);
                        change = Some((BreakerState::Open, BreakerState::HalfOpen, None));
                    }
                    if trips.probes_out < policy.probes {
                        trips.probes_out += 1;
                        Ok(Admission::Probe(trips.episode))
                    } else {
                        Err(CircuitOpen::new(policy.half_open_wait()))
                    }
                }
            }
        };
        self.announce(policy, change);
        admission
    }

    /// Records the outcome of a call it let through.
    #[inline]
    pub(crate) fn record(&self, policy: &Policy, admission: Admission, failed: bool) {
        match admission {
            Admission::Closed => {
                self.calls.deposit();
                if failed {
                    self.failures.deposit();
                    self.check_ratio(policy);
                }
            }
            Admission::Probe(episode) => self.probe_done(policy, episode, failed),
        }
    }

    /// Opens the breaker if the window holds enough calls and failures. Only
    /// a failure can raise the ratio, so only failures pay for the check.
    fn check_ratio(&self, policy: &Policy) {
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let calls = self.calls.total();
        if calls < i64::from(policy.min_throughput) {
            return;
        }
        let failures = self.failures.total();
        if failures == 0 || (failures as f64) < policy.failure_ratio * calls as f64 {
            return;
        }
        let change = {
            let mut trips = self.lock();
            if self.state.load(Ordering::Acquire) != CLOSED {
                return;
            }
            trips.reopens = 0;
            Some(self.open(policy, &trips))
        };
        self.announce(policy, change);
    }

    fn probe_done(&self, policy: &Policy, episode: u64, failed: bool) {
        let change = {
            let mut trips = self.lock();
            if self.state.load(Ordering::Acquire) != HALF_OPEN || trips.episode != episode {
                return;
            }
            if failed {
                trips.reopens = trips.reopens.saturating_add(1);
                Some(self.open(policy, &trips))
            } else {
                trips.probes_ok += 1;
                if trips.probes_ok < policy.probes {
                    return;
                }
                trips.reopens = 0;
                // What failed before the break says nothing about the
                // service that just answered every probe.
                self.calls.clear();
                self.failures.clear();
                self.state.store(CLOSED, Ordering::Release);
                Some((BreakerState::HalfOpen, BreakerState::Closed, None))
            }
        };
        self.announce(policy, change);
    }

    /// A probe that ended without an outcome (its future was dropped) gives
    /// its slot back.
    pub(crate) fn probe_abandoned(&self, episode: u64) {
        let mut trips = self.lock();
        if self.state.load(Ordering::Acquire) == HALF_OPEN && trips.episode == episode {
            trips.probes_out = trips.probes_out.saturating_sub(1);
        }
    }

    /// Opens for the break `trips` calls for; the caller holds the lock.
    fn open(
        &self,
        policy: &Policy,
        trips: &Trips,
    ) -> (BreakerState, BreakerState, Option<Duration>) {
        let pause = policy.break_after(trips.reopens);
        let until = self
            .now_nanos()
            .saturating_add(u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
        self.open_until.store(until, Ordering::Release);
        let from = self.state();
        self.state.store(OPEN, Ordering::Release);
        (from, BreakerState::Open, Some(pause))
    }

    fn announce(
        &self,
        policy: &Policy,
        change: Option<(BreakerState, BreakerState, Option<Duration>)>,
    ) {
        let Some((from, to, break_duration)) = change else {
            return;
        };
        let event = StateChange {
            host: self.host.as_deref(),
            from,
            to,
            break_duration,
        };
        tracing::info!(
            target: "tower_reissue::circuit",
            host = event.host,
            from = ?from,
            to = ?to,
            break_ms = break_duration.map(|d| d.as_millis() as u64),
            "circuit breaker state change"
        );
        crate::telemetry::breaker_changed(from.as_str(), to.as_str());
        if let Some(hook) = &policy.on_state_change {
            hook(&event);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Trips> {
        // The bookkeeping is updated in single assignments; a panic in
        // another thread cannot leave it half-written.
        self.trips.lock().unwrap_or_else(|e| e.into_inner())
    }
}
