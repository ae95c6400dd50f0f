use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::StoreError;

/// The stored result of a completed request or [`Once`](crate::once::Once) run.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredOutcome {
    /// The response, replayed to every duplicate.
    Response(StoredResponse),
    /// The request ran, but its response could not be kept (its body was over
    /// the layer's `max_body`, or it carried trailers). Duplicates get an
    /// error instead of a second execution.
    NotStored {
        /// The status the original response had.
        status: StatusCode,
    },
    /// The value a [`Once`](crate::once::Once) run returned, as JSON.
    Value(Bytes),
    /// A [`Once`](crate::once::Once) run that failed after taking effect
    /// (see [`Failure::store`](crate::once::Failure::store)), kept so it does
    /// not run again: the error's message.
    Failed(String),
}

/// A response as kept in a store: status, headers and the whole body.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers (without connection-level headers).
    pub headers: HeaderMap,
    /// The full response body.
    pub body: Bytes,
}

const ENCODING_VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 0;
const KIND_NOT_STORED: u8 = 1;
const KIND_VALUE: u8 = 2;
const KIND_FAILED: u8 = 3;

impl StoredOutcome {
    /// A compact, self-describing binary encoding, for stores that keep bytes.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{HeaderMap, StatusCode};
    /// use tower_reissue::idempotency::store::{StoredOutcome, StoredResponse};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("content-type", "text/plain".parse().unwrap());
    /// let outcome = StoredOutcome::Response(StoredResponse {
    ///     status: StatusCode::CREATED,
    ///     headers,
    ///     body: Bytes::from_static(b"done"),
    /// });
    /// assert_eq!(StoredOutcome::from_bytes(&outcome.to_bytes()).unwrap(), outcome);
    /// ```
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(ENCODING_VERSION);
        match self {
            StoredOutcome::NotStored { status } => {
                out.put_u8(KIND_NOT_STORED);
                out.put_u16(status.as_u16());
            }
            StoredOutcome::Response(response) => {
                out.put_u8(KIND_RESPONSE);
                out.put_u16(response.status.as_u16());
                out.put_u32(response.headers.len() as u32);
                for (name, value) in &response.headers {
                    out.put_u32(name.as_str().len() as u32);
                    out.put_slice(name.as_str().as_bytes());
                    out.put_u32(value.len() as u32);
                    out.put_slice(value.as_bytes());
                }
                out.put_slice(&response.body);
            }
            StoredOutcome::Value(value) => {
                out.put_u8(KIND_VALUE);
                out.put_slice(value);
            }
            StoredOutcome::Failed(message) => {
                out.put_u8(KIND_FAILED);
                out.put_slice(message.as_bytes());
            }
        }
        out.freeze()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) produced.
    ///
    /// Anything else is a [`StoreError::Corrupt`], never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut input = bytes;
        let corrupt = |what: &str| StoreError::Corrupt(format!("stored outcome: {what}"));
        if input.remaining() < 2 {
            return Err(corrupt("truncated header"));
        }
        if input.get_u8() != ENCODING_VERSION {
            return Err(corrupt("unknown encoding version"));
        }
        let kind = input.get_u8();
        match kind {
            KIND_VALUE => return Ok(StoredOutcome::Value(Bytes::copy_from_slice(input))),
            KIND_FAILED => {
                return String::from_utf8(input.to_vec())
                    .map(StoredOutcome::Failed)
                    .map_err(|_| corrupt("failure message is not UTF-8"));
            }
            _ => {}
        }
        if input.remaining() < 2 {
            return Err(corrupt("truncated header"));
        }
        let status =
            StatusCode::from_u16(input.get_u16()).map_err(|_| corrupt("invalid status"))?;
        match kind {
            KIND_NOT_STORED if input.is_empty() => Ok(StoredOutcome::NotStored { status }),
            KIND_RESPONSE => {
                let count = take_len(&mut input).ok_or_else(|| corrupt("truncated headers"))?;
                let mut headers = HeaderMap::with_capacity(count.min(64));
                for _ in 0..count {
                    let name = take_field(&mut input).ok_or_else(|| corrupt("truncated header"))?;
                    let value =
                        take_field(&mut input).ok_or_else(|| corrupt("truncated header"))?;
                    let name =
                        HeaderName::from_bytes(name).map_err(|_| corrupt("invalid header name"))?;
                    let value = HeaderValue::from_bytes(value)
                        .map_err(|_| corrupt("invalid header value"))?;
                    headers
                        .try_append(name, value)
                        .map_err(|_| corrupt("too many headers"))?;
                }
                Ok(StoredOutcome::Response(StoredResponse {
                    status,
                    headers,
                    body: Bytes::copy_from_slice(input),
                }))
            }
            _ => Err(corrupt("unknown kind")),
        }
    }
}

fn take_len(input: &mut &[u8]) -> Option<usize> {
    (input.remaining() >= 4).then(|| input.get_u32() as usize)
}

fn take_field<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_len(input)?;
    let bytes: &'a [u8] = input;
    if bytes.len() < len {
        return None;
    }
    let (field, rest) = bytes.split_at(len);
    *input = rest;
    Some(field)
}
