use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value (RFC 9110 10.2.3): delay-seconds or an
/// HTTP-date.
///
/// A date in the past means zero. A delay too large to represent saturates
/// (the retry layer then refuses to wait for it). Anything else (empty,
/// negative, fractional seconds, malformed dates, non-ASCII bytes) is `None`,
/// so the caller falls back to its own backoff. Never panics.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_reissue::classify::parse_retry_after;
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(b"3", now), Some(Duration::from_secs(3)));
/// assert_eq!(parse_retry_after(b"soon", now), None);
///
/// let later = now + Duration::from_secs(5);
/// let date = httpdate::fmt_http_date(later);
/// let delay = parse_retry_after(date.as_bytes(), now).unwrap();
/// // HTTP-dates have one-second resolution.
/// assert!(delay > Duration::from_secs(4) && delay <= Duration::from_secs(5));
/// ```
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too long for u64: the server asked for longer than
        // anyone will wait, which is still an answer, not garbage.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a `retry-after-ms` value: a non-negative number of milliseconds,
/// fractions allowed. Anything else is `None`. Never panics.
///
/// ```
/// use std::time::Duration;
/// use tower_reissue::classify::parse_retry_after_ms;
///
/// assert_eq!(parse_retry_after_ms(b"1500"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_retry_after_ms(b"2.5"), Some(Duration::from_micros(2500)));
/// assert_eq!(parse_retry_after_ms(b"-1"), None);
/// assert_eq!(parse_retry_after_ms(b"NaN"), None);
/// ```
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    let value = std::str::from_utf8(value).ok()?.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let ms: f64 = value.parse().ok()?;
    // Only digits and dots reach here, so `ms` is finite and not negative;
    // `try_from_secs_f64` still guards against overflow.
    Duration::try_from_secs_f64(ms / 1000.0)
        .ok()
        .or(Some(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(b" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after(b"-5", now), None);
        assert_eq!(parse_retry_after(b"1.5", now), None);
        assert_eq!(parse_retry_after(b"", now), None);
        assert_eq!(parse_retry_after(&[0xff, 0xfe], now), None);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(
            parse_retry_after(past.as_bytes(), now),
            Some(Duration::ZERO)
        );
        let ahead = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(ahead.as_bytes(), now),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn milliseconds() {
        assert_eq!(parse_retry_after_ms(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after_ms(b"1.2.3"), None);
        assert_eq!(parse_retry_after_ms(b"."), None);
        assert_eq!(parse_retry_after_ms(b"1e3"), None);
        assert_eq!(parse_retry_after_ms(b"inf"), None);
        let huge = "9".repeat(400);
        assert_eq!(parse_retry_after_ms(huge.as_bytes()), Some(Duration::MAX));
    }
}
