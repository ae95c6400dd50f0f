//! Decoding what `RedisStore` reads back (a claim reply and the stored
//! outcome inside it): never panics, and whatever decodes re-encodes to a
//! record that decodes to the same outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_reissue::fuzzing::redis_claim_reply;
use tower_reissue::idempotency::store::{Claim, StoredOutcome};

fuzz_target!(|input: (u8, Vec<&[u8]>)| {
    let (tag, fields) = input;
    let Ok(claim) = redis_claim_reply(i64::from(tag % 4), &fields) else {
        return;
    };
    if let Claim::Completed { fingerprint, outcome } = claim {
        assert_eq!(fields.first().copied(), Some(&fingerprint.as_bytes()[..]));
        let encoded = outcome.to_bytes();
        assert_eq!(StoredOutcome::from_bytes(&encoded).ok(), Some(outcome));
    }
});
