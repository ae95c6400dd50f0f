//! Entry points for the fuzz targets in `fuzz/` into parsers that are not
//! public. Compiled only under `cargo fuzz`, which sets `--cfg fuzzing`.

/// Parses `value` as a request's only `Idempotency-Key` header: `None` when
/// `value` cannot be a header value at all, `Some(Err(detail))` for a key
/// the layer answers 400.
pub fn idempotency_key(value: &[u8]) -> Option<Result<String, &'static str>> {
    let value = http::HeaderValue::from_bytes(value).ok()?;
    let mut headers = http::HeaderMap::new();
    headers.insert(crate::key::IDEMPOTENCY_KEY, value);
    Some(match crate::key::parse(&headers) {
        Ok(key) => Ok(key.expect("the header was set")),
        Err(err) => Err(err.detail()),
    })
}

/// Decodes a `RedisStore` claim reply made of a tag and bulk strings, as the
/// claim script returns it.
#[cfg(feature = "redis")]
pub fn redis_claim_reply(
    tag: i64,
    fields: &[&[u8]],
) -> Result<crate::idempotency::store::Claim, crate::idempotency::store::StoreError> {
    use ::redis::Value;
    let mut items = vec![Value::Int(tag)];
    items.extend(fields.iter().map(|field| Value::BulkString(field.to_vec())));
    crate::store::parse_redis_claim(Value::Array(items), 1)
}
