//! Reading the claim script's answer. Anything but what the script returns
//! is [`StoreError::Corrupt`], never a panic (the fuzz target `redis_record`
//! feeds it any reply).

use ::redis::Value;

use crate::error::Corrupt;
use crate::redis_conn::ReplyError;
use crate::store::{Claim, FencingToken, Fingerprint, StoreError, StoredOutcome};

pub(crate) fn parse_claim(value: Value) -> Result<Claim, StoreError> {
    let Value::Array(items) = value else {
        return Err(StoreError::unexpected(&value));
    };
    match items.as_slice() {
        [Value::Int(0), Value::Int(token)] => u64::try_from(*token)
            .map(|token| Claim::Acquired(FencingToken::new(token)))
            .map_err(|_| StoreError::corrupt("negative fencing token")),
        [Value::Int(1), Value::BulkString(fingerprint)] => Ok(Claim::InFlight {
            fingerprint: parse_fingerprint(fingerprint)?,
        }),
        [
            Value::Int(2),
            Value::BulkString(fingerprint),
            Value::BulkString(outcome),
        ] => Ok(Claim::Completed {
            fingerprint: parse_fingerprint(fingerprint)?,
            outcome: StoredOutcome::from_bytes(outcome)?,
        }),
        _ => Err(StoreError::corrupt("unexpected claim reply")),
    }
}

fn parse_fingerprint(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| StoreError::corrupt("fingerprint is not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_replies_are_errors() {
        let bad = [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(0), Value::Int(-1)]),
            Value::Array(vec![Value::Int(1), Value::BulkString(vec![0; 31])]),
            Value::Array(vec![
                Value::Int(2),
                Value::BulkString(vec![0; 32]),
                Value::BulkString(vec![9]),
            ]),
            Value::Array(vec![Value::Int(7)]),
        ];
        for value in bad {
            assert!(
                matches!(parse_claim(value.clone()), Err(StoreError::Corrupt(_))),
                "{value:?}"
            );
        }
        assert!(matches!(
            parse_claim(Value::Array(vec![Value::Int(0), Value::Int(5)])),
            Ok(Claim::Acquired(token)) if token.get() == 5
        ));
    }
}
