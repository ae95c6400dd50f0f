//! `Idempotency-Key` parsing: never panics, accepts only 1..=255 visible
//! ASCII characters, and reads back what a client wrote either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_reissue::fuzzing::idempotency_key;

fuzz_target!(|value: &[u8]| {
    let Some(parsed) = idempotency_key(value) else {
        return;
    };
    let Ok(key) = parsed else {
        return;
    };
    assert!((1..=255).contains(&key.len()), "{key:?}");
    assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{key:?}");
    if value.first() != Some(&b'"') {
        assert_eq!(key.as_bytes(), value, "a bare key is taken as it is");
    }
    // The same key sent as an sf-string is the same key.
    let mut quoted = String::from("\"");
    for c in key.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    assert_eq!(idempotency_key(quoted.as_bytes()), Some(Ok(key)));
});
