//! How the durable queues write an entry's times, headers and history:
//! readable encodings, so a database shell shows what a queue holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{AttemptOutcome, QueueError, ReplayRecord};

/// Milliseconds since the Unix epoch, the resolution stores keep times at
/// (0 for a time before the epoch, which no clock of a running system gives).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tower_reissue::dead_letter::{from_millis, to_millis};
/// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// assert_eq!(from_millis(to_millis(at)), at);
/// ```
pub fn to_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time [`to_millis`] gave `millis` for (negative values are the epoch).
pub fn from_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// `now + duration` in milliseconds, saturating instead of overflowing.
pub(crate) fn millis_after(now: i64, duration: Duration) -> i64 {
    now.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// Headers as `name: value` lines, a readable encoding for stores that keep
/// bytes (values may hold any byte a header value may, which excludes line
/// breaks, so lines are unambiguous).
///
/// ```
/// use http::HeaderMap;
/// use tower_reissue::dead_letter::{decode_headers, encode_headers};
///
/// let mut headers = HeaderMap::new();
/// headers.append("accept", "text/plain".parse().unwrap());
/// headers.append("accept", "application/json".parse().unwrap());
/// let bytes = encode_headers(&headers);
/// assert_eq!(&bytes[..], b"accept: text/plain\naccept: application/json\n");
/// assert_eq!(decode_headers(&bytes).unwrap(), headers);
/// assert!(decode_headers(b"no colon\n").is_err());
/// ```
pub fn encode_headers(headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.freeze()
}

/// Decodes what [`encode_headers`] produced; anything else is
/// [`QueueError::Corrupt`].
pub fn decode_headers(bytes: &[u8]) -> Result<HeaderMap, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("stored headers: {what}"));
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let at = line
            .windows(2)
            .position(|w| w == b": ")
            .ok_or_else(|| corrupt("a line without a name"))?;
        let name = HeaderName::from_bytes(&line[..at]).map_err(|_| corrupt("invalid name"))?;
        let value =
            HeaderValue::from_bytes(&line[at + 2..]).map_err(|_| corrupt("invalid value"))?;
        headers
            .try_append(name, value)
            .map_err(|_| corrupt("too many headers"))?;
    }
    Ok(headers)
}

/// A history as JSON, `[{"at_ms":…,"status":503}, {"at_ms":…,"error":"…"}]`:
/// readable in a database shell.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use http::StatusCode;
/// use tower_reissue::dead_letter::{decode_history, encode_history, AttemptOutcome, ReplayRecord};
///
/// let history = vec![ReplayRecord {
///     at: UNIX_EPOCH + Duration::from_millis(5),
///     outcome: AttemptOutcome::Status(StatusCode::BAD_GATEWAY),
/// }];
/// let text = encode_history(&history);
/// assert_eq!(text, r#"[{"at_ms":5,"status":502}]"#);
/// assert_eq!(decode_history(&text).unwrap(), history);
/// ```
pub fn encode_history(history: &[ReplayRecord]) -> String {
    let records: Vec<serde_json::Value> = history
        .iter()
        .map(|record| {
            let at = to_millis(record.at);
            match &record.outcome {
                AttemptOutcome::Status(status) => {
                    serde_json::json!({ "at_ms": at, "status": status.as_u16() })
                }
                AttemptOutcome::Error(text) => serde_json::json!({ "at_ms": at, "error": text }),
            }
        })
        .collect();
    serde_json::Value::Array(records).to_string()
}

/// Decodes what [`encode_history`] produced; anything else is
/// [`QueueError::Corrupt`].
pub fn decode_history(text: &str) -> Result<Vec<ReplayRecord>, QueueError> {
    let corrupt = |what: &str| QueueError::Corrupt(format!("stored history: {what}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt("not JSON"))?;
    let records = value.as_array().ok_or_else(|| corrupt("not a list"))?;
    records
        .iter()
        .map(|record| {
            let at = record["at_ms"].as_i64().ok_or_else(|| corrupt("no time"))?;
            let outcome = match (&record["status"], &record["error"]) {
                (serde_json::Value::Number(n), _) => AttemptOutcome::Status(
                    n.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .and_then(|n| StatusCode::from_u16(n).ok())
                        .ok_or_else(|| corrupt("invalid status"))?,
                ),
                (_, serde_json::Value::String(text)) => AttemptOutcome::Error(text.clone()),
                _ => return Err(corrupt("neither status nor error")),
            };
            Ok(ReplayRecord {
                at: from_millis(at),
                outcome,
            })
        })
        .collect()
}
