//! `Retry-After` and `retry-after-ms` parsing: never panics, reads
//! delay-seconds exactly, and never returns a delay into the past.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tower_reissue::classify::{parse_retry_after, parse_retry_after_ms};

fuzz_target!(|input: (u32, &[u8])| {
    let (secs, value) = input;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(secs));
    let delay = parse_retry_after(value, now);
    if let Ok(text) = std::str::from_utf8(value) {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let expected = text.parse::<u64>().unwrap_or(u64::MAX);
            assert_eq!(delay, Some(Duration::from_secs(expected)));
        }
        if let (Some(delay), Ok(at)) = (delay, httpdate::parse_http_date(text)) {
            // A date is measured from `now`; one in the past means "now".
            assert_eq!(delay, at.duration_since(now).unwrap_or_default());
        }
    }
    if let Some(ms) = parse_retry_after_ms(value) {
        let text = std::str::from_utf8(value).expect("parsed as text").trim();
        let expected: f64 = text.parse().expect("parsed as a number");
        assert!(expected >= 0.0);
        let tolerance = (expected / 1e12).max(1e-6);
        assert!(ms == Duration::MAX || (ms.as_secs_f64() * 1000.0 - expected).abs() <= tolerance * 1000.0, "{text} -> {ms:?}");
    }
});
