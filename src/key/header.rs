//! Reading the `Idempotency-Key` request header.

use http::HeaderMap;

/// The request header that carries the key (a `HeaderName`, so looking it
/// up does not parse the name each time).
pub(crate) use super::IDEMPOTENCY_KEY;

const MAX_KEY_LEN: usize = 255;

/// Why a request's `Idempotency-Key` header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    Repeated,
    Empty,
    TooLong,
    NotVisibleAscii,
    MalformedString,
}

impl KeyError {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            KeyError::Repeated => "The request carries more than one Idempotency-Key header.",
            KeyError::Empty => "The Idempotency-Key header is empty.",
            KeyError::TooLong => "The Idempotency-Key is longer than 255 characters.",
            KeyError::NotVisibleAscii => {
                "The Idempotency-Key may only contain visible ASCII characters (no spaces or control characters)."
            }
            KeyError::MalformedString => {
                "The Idempotency-Key starts with a quote but is not a valid structured-field string."
            }
        }
    }
}

/// The request's key: `Ok(None)` when the header is absent.
///
/// Accepts an RFC 8941 sf-string (`"abc"`, with `\"` and `\\` escapes) or the
/// bare value; either way the key itself must be 1..=255 visible ASCII
/// characters.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let raw = value.as_bytes();
    let key = match raw.first() {
        Some(b'"') => unquote(raw)?,
        _ => raw.to_vec(),
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::NotVisibleAscii);
    }
    // Every byte is visible ASCII, so this cannot fail.
    String::from_utf8(key)
        .map(Some)
        .map_err(|_| KeyError::NotVisibleAscii)
}

fn unquote(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut key = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().skip(1);
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return Err(KeyError::MalformedString),
            },
            b'"' if bytes.next().is_none() => return Ok(key),
            b'"' => return Err(KeyError::MalformedString),
            0x20..=0x7e => key.push(byte),
            _ => return Err(KeyError::NotVisibleAscii),
        }
    }
    Err(KeyError::MalformedString)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(value: &[u8]) -> Result<Option<String>, KeyError> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(value).unwrap());
        parse(&headers)
    }

    #[test]
    fn accepts_bare_and_quoted_keys() {
        assert_eq!(key(b"abc-123").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(key(b"\"abc-123\"").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(key(br#""a\"b\\c""#).unwrap().as_deref(), Some(r#"a"b\c"#));
        assert_eq!(key(&[b'k'; 255]).unwrap().map(|k| k.len()), Some(255));
        assert_eq!(parse(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(key(b""), Err(KeyError::Empty));
        assert_eq!(key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(key(&[b'k'; 256]), Err(KeyError::TooLong));
        assert_eq!(key(b"a b"), Err(KeyError::NotVisibleAscii));
        assert_eq!(key(b"\"a b\""), Err(KeyError::NotVisibleAscii));
        assert_eq!(key(b"a\tb"), Err(KeyError::NotVisibleAscii));
        assert_eq!(key("clé".as_bytes()), Err(KeyError::NotVisibleAscii));
        assert_eq!(key(b"\"abc"), Err(KeyError::MalformedString));
        assert_eq!(key(b"\"a\"b\""), Err(KeyError::MalformedString));
        assert_eq!(key(br#""a\nb""#), Err(KeyError::MalformedString));
        let mut headers = HeaderMap::new();
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        headers.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(parse(&headers), Err(KeyError::Repeated));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_quoting_keeps_the_key(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()); };
            let mut headers = HeaderMap::new();
            headers.insert(IDEMPOTENCY_KEY, value);
            if let Ok(Some(parsed)) = parse(&headers) {
                proptest::prop_assert!((1..=MAX_KEY_LEN).contains(&parsed.len()));
                let quoted = format!("\"{}\"", parsed.replace('\\', "\\\\").replace('"', "\\\""));
                proptest::prop_assert_eq!(key(quoted.as_bytes()), Ok(Some(parsed)));
            }
        }
    }
}
