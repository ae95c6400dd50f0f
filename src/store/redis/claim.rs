//! Reading the claim script's answer. Anything but what the script returns
//! is [`StoreError::Corrupt`], never a panic (the fuzz target `redis_record`
//! feeds it any reply).

use ::redis::Value;

use crate::error::Corrupt;
use crate::redis_conn::ReplyError;
use crate::store::{Claim, FencingToken, Fingerprint, StoreError, StoredOutcome};

/// How many low bits of a [`FencingToken`] are the claimer's random bits;
/// the bits above are Redis's clock in microseconds, which fills 52 bits
/// until the year 2112.
pub(crate) const RANDOM_BITS: u32 = 12;

/// The token made of Redis's clock and the claimer's `random` bits.
pub(crate) fn token(micros: u64, random: u64) -> FencingToken {
    let mask = (1 << RANDOM_BITS) - 1;
    let time = if micros >> (64 - RANDOM_BITS) == 0 {
        micros << RANDOM_BITS
    } else {
        u64::MAX
    };
    FencingToken::new(time & !mask | random & mask)
}

/// A token as the scripts keep it: `micros:bits`.
pub(crate) fn token_arg(token: FencingToken) -> String {
    let mask = (1 << RANDOM_BITS) - 1;
    format!("{}:{}", token.get() >> RANDOM_BITS, token.get() & mask)
}

/// The claim script's answer to a claim sent with the `random` bits.
pub(crate) fn parse_claim(value: Value, random: u64) -> Result<Claim, StoreError> {
    let Value::Array(items) = value else {
        return Err(StoreError::unexpected(&value));
    };
    match items.as_slice() {
        [Value::Int(0), Value::Int(micros)] => u64::try_from(*micros)
            .map(|micros| Claim::Acquired(token(micros, random)))
            .map_err(|_| StoreError::corrupt("negative time in a fencing token")),
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
            Value::Array(vec![Value::Int(0)]),
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
                matches!(parse_claim(value.clone(), 1), Err(StoreError::Corrupt(_))),
                "{value:?}"
            );
        }
        assert!(matches!(
            parse_claim(Value::Array(vec![Value::Int(0), Value::Int(5)]), 3),
            Ok(Claim::Acquired(token)) if token.get() == 5 << 12 | 3
        ));
    }

    #[test]
    fn tokens_are_the_time_then_the_random_bits() {
        let now = 1_765_000_000_000_000; // microseconds, in 2025
        assert_eq!(token(now, 0xabc).get() >> 12, now);
        assert_eq!(token(now, 0xabc).get() & 0xfff, 0xabc);
        // Random bits beyond 12 are dropped, not mixed into the time.
        assert_eq!(token(now, 0x1abc), token(now, 0xabc));
        // Later times give larger tokens, whatever the random bits.
        assert!(token(now + 1, 0) > token(now, 0xfff));
        assert_eq!(token_arg(token(now, 7)), format!("{now}:7"));
        // Past 2112 the time saturates rather than wrapping.
        assert_eq!(token(u64::MAX, 1).get(), !0xfff | 1);
    }
}
