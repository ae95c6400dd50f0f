//! Reading entries and leases out of the scripts' answers. Anything but
//! what the scripts write is [`QueueError::Corrupt`], never a panic.

use ::redis::Value;
use bytes::Bytes;
use http::{Method, StatusCode, Uri};

use crate::dead_letter::{
    AttemptOutcome, DeadLetter, DeadLetterId, DeadLetterState, FailedRequest, KeptBody, Lease,
    LeaseToken, QueueError, StateKind, decode_headers, decode_history, from_millis,
};
use crate::error::Corrupt;
use crate::redis_conn::ReplyError;

fn bytes<'a>(value: &'a Value, field: &str) -> Result<Option<&'a [u8]>, QueueError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        other => Err(QueueError::corrupt(format!("field {field} is {other:?}"))),
    }
}

pub(super) fn text(value: &Value, field: &str) -> Result<String, QueueError> {
    let bytes =
        bytes(value, field)?.ok_or_else(|| QueueError::corrupt(format!("no field {field}")))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| QueueError::corrupt(format!("field {field} is not UTF-8")))
}

pub(super) fn number<T: std::str::FromStr>(value: &Value, field: &str) -> Result<T, QueueError> {
    match value {
        Value::Int(n) => n.to_string(),
        other => text(other, field)?,
    }
    .parse()
    .map_err(|_| QueueError::corrupt(format!("field {field} is not a number")))
}

fn optional<T>(
    value: &Value,
    field: &str,
    read: impl Fn(&Value, &str) -> Result<T, QueueError>,
) -> Result<Option<T>, QueueError> {
    match value {
        Value::Nil => Ok(None),
        value => read(value, field).map(Some),
    }
}

/// Decodes a lease as the lease scripts return it: `{token, entry}`.
pub(super) fn decode_lease(lease: &Value) -> Result<Lease, QueueError> {
    match lease {
        Value::Array(pair) => match pair.as_slice() {
            [Value::Int(token), Value::Array(entry)] => Ok(Lease {
                letter: decode_entry(entry)?,
                token: LeaseToken::new(
                    u64::try_from(*token).map_err(|_| QueueError::corrupt("negative token"))?,
                ),
            }),
            _ => Err(QueueError::unexpected(lease)),
        },
        other => Err(QueueError::unexpected(other)),
    }
}

/// Decodes an entry as the scripts return it: the id, then [`FIELDS`](super::scripts::FIELDS).
pub(super) fn decode_entry(entry: &[Value]) -> Result<DeadLetter, QueueError> {
    let [
        id,
        at,
        method,
        uri,
        headers,
        body,
        not_kept,
        key,
        reason,
        attempts,
        last_status,
        last_error,
        state,
        until,
        status,
        history,
    ] = entry
    else {
        return Err(QueueError::corrupt(format!(
            "{} fields instead of 16",
            entry.len()
        )));
    };
    let id = DeadLetterId::new(number(id, "id")?);
    let status_code = |value: &Value, field: &str| {
        let code: u16 = number(value, field)?;
        StatusCode::from_u16(code)
            .map_err(|_| QueueError::corrupt(format!("invalid status {code}")))
    };
    let time = |value: &Value, field: &str| number(value, field).map(from_millis);
    let state = match text(state, "state")?.parse::<StateKind>()? {
        StateKind::Pending => DeadLetterState::Pending,
        StateKind::Leased => DeadLetterState::Leased {
            until: time(until, "until")?,
        },
        StateKind::FailedAgain => DeadLetterState::FailedAgain {
            retry_at: time(until, "until")?,
        },
        StateKind::Replayed => DeadLetterState::Replayed {
            status: status_code(status, "status")?,
        },
        StateKind::Discarded => DeadLetterState::Discarded,
    };
    let last = match (
        optional(last_status, "last_status", status_code)?,
        optional(last_error, "last_error", text)?,
    ) {
        (Some(status), _) => AttemptOutcome::Status(status),
        (None, Some(error)) => AttemptOutcome::Error(error),
        (None, None) => return Err(QueueError::corrupt("no last outcome")),
    };
    let body = match (bytes(body, "body")?, optional(not_kept, "not_kept", text)?) {
        (Some(bytes), _) => KeptBody::Kept(Bytes::copy_from_slice(bytes)),
        (None, Some(why)) => KeptBody::NotKept(why),
        (None, None) => {
            return Err(QueueError::corrupt(
                "neither a body nor why it was not kept",
            ));
        }
    };
    let method = bytes(method, "method")?.ok_or_else(|| QueueError::corrupt("no method"))?;
    Ok(DeadLetter {
        id,
        request: FailedRequest {
            at: time(at, "at")?,
            method: Method::from_bytes(method)
                .map_err(|_| QueueError::corrupt("invalid method"))?,
            uri: text(uri, "uri")?
                .parse::<Uri>()
                .map_err(|_| QueueError::corrupt("invalid URI"))?,
            headers: decode_headers(bytes(headers, "headers")?.unwrap_or_default())?,
            body,
            idempotency_key: optional(key, "key", text)?,
            reason: text(reason, "reason")?,
            attempts: number(attempts, "attempts")?,
            last,
        },
        state,
        history: decode_history(&text(history, "history")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_entries_are_corrupt_not_panics() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let good = || -> Vec<Value> {
            vec![
                Value::Int(4),
                bulk("1700000000000"),
                bulk("POST"),
                bulk("http://api.example/emails"),
                bulk("accept: text/plain\n"),
                bulk("{}"),
                Value::Nil,
                bulk("k-1"),
                bulk("max_attempts"),
                bulk("3"),
                bulk("503"),
                Value::Nil,
                bulk("pending"),
                Value::Nil,
                Value::Nil,
                bulk("[]"),
            ]
        };
        let letter = decode_entry(&good()).unwrap();
        assert_eq!(letter.id, DeadLetterId::new(4));
        assert_eq!(letter.request.host(), Some("api.example"));

        let broken: [(usize, Value); 8] = [
            (1, bulk("yesterday")),
            (2, bulk("")),
            (3, bulk("http://[::1")),
            (5, Value::Nil),
            (10, bulk("1000")),
            (12, bulk("lost")),
            (12, bulk("leased")),
            (15, bulk("{")),
        ];
        for (at, value) in broken {
            let mut entry = good();
            entry[at] = value.clone();
            assert!(
                matches!(decode_entry(&entry), Err(QueueError::Corrupt(_))),
                "field {at} = {value:?}"
            );
        }
        assert!(matches!(
            decode_entry(&good()[..15]),
            Err(QueueError::Corrupt(_))
        ));
    }
}
