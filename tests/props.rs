//! Property tests: backoff bounds and header parsing on arbitrary input.

use proptest::prelude::*;
use rand::SeedableRng;
use std::time::{Duration, SystemTime};
use tower_reissue::Backoff;
use tower_reissue::classify::{parse_retry_after, parse_retry_after_ms};

fn any_backoff() -> impl Strategy<Value = Backoff> {
    let d = (0u64..=20_000).prop_map(Duration::from_millis);
    prop_oneof![
        Just(Backoff::none()),
        d.clone().prop_map(Backoff::fixed),
        (d.clone(), d.clone()).prop_map(|(b, c)| Backoff::exponential(b, c)),
        (d.clone(), d.clone()).prop_map(|(b, c)| Backoff::equal_jitter(b, c)),
        (d.clone(), d).prop_map(|(b, c)| Backoff::decorrelated_jitter(b, c)),
    ]
}

/// The cap every strategy promises: the largest ceiling it can reach.
fn cap_of(backoff: &Backoff) -> Duration {
    backoff.max_delay(u32::MAX)
}

proptest! {
    #[test]
    fn delays_stay_within_zero_and_the_cap(backoff in any_backoff(), seed: u64, retries in 1u32..64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut previous = Duration::ZERO;
        for retry in 1..=retries {
            let delay = backoff.delay_with(retry, previous, &mut rng);
            prop_assert!(delay <= backoff.max_delay(retry), "retry {retry}: {delay:?} > {:?}", backoff.max_delay(retry));
            prop_assert!(delay <= cap_of(&backoff));
            previous = delay;
        }
    }

    #[test]
    fn ceilings_never_decrease(backoff in any_backoff(), retry in 1u32..10_000) {
        prop_assert!(backoff.max_delay(retry) <= backoff.max_delay(retry + 1));
    }

    #[test]
    fn exponential_ceiling_is_base_times_two_to_the_n_capped(
        base_ms in 1u64..1_000, cap_ms in 1u64..60_000, retry in 1u32..40
    ) {
        let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
        let expected = base.saturating_mul(2u32.saturating_pow(retry - 1)).min(cap.max(base));
        prop_assert_eq!(Backoff::exponential(base, cap).max_delay(retry), expected);
    }

    #[test]
    fn retry_after_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), secs in 0u64..4_000_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let _ = parse_retry_after(&bytes, now);
        let _ = parse_retry_after_ms(&bytes);
    }

    #[test]
    fn retry_after_parses_any_delay_seconds(n: u64) {
        let now = SystemTime::now();
        prop_assert_eq!(parse_retry_after(n.to_string().as_bytes(), now), Some(Duration::from_secs(n)));
    }

    #[test]
    fn retry_after_dates_are_never_in_the_past(offset in -1_000_000i64..1_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = if offset >= 0 {
            now + Duration::from_secs(offset as u64)
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        let parsed = parse_retry_after(httpdate::fmt_http_date(at).as_bytes(), now);
        prop_assert_eq!(parsed, Some(Duration::from_secs(offset.max(0) as u64)));
    }

    #[test]
    fn stored_outcomes_decode_without_panics_and_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        use tower_reissue::idempotency::store::StoredOutcome;
        if let Ok(outcome) = StoredOutcome::from_bytes(&bytes) {
            prop_assert_eq!(StoredOutcome::from_bytes(&outcome.to_bytes()).ok(), Some(outcome));
        }
    }
}
