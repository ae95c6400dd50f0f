//! Instants computed from durations a user or a server chose.

use std::time::Duration;
use tokio::time::Instant;

/// Far enough to mean "never" (about 30 years, as tokio itself uses), near
/// enough to stay representable.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + duration`, saturating at a far-future instant instead of panicking
/// on an overflow (`Duration::MAX` timeouts, a server asking for 10^20 s).
pub(crate) fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        let far = after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(86_400 * 365));
        assert!(after(Duration::from_secs(1)) <= Instant::now() + Duration::from_secs(1));
    }
}
