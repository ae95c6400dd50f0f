//! One entry per host (a budget's bank, a circuit breaker), shared by the
//! folders that keep state per authority.

use arc_swap::ArcSwap;
use http::Uri;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Hosts a per-host budget (or circuit breaker) tracks by default before
/// new hosts share the overflow one.
pub(crate) const DEFAULT_MAX_HOSTS: usize = 1024;

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
