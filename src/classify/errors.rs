use std::error::Error as StdError;
use std::io;

use super::{Processed, Verdict};
use crate::error::{AttemptTimedOut, CircuitOpen, DeadlineExceeded};

/// Classifies a transport error by walking its `source()` chain, outermost
/// first, and stopping at the first cause it recognises:
///
/// - connect errors (hyper-util's legacy client, reqwest), connection refused,
///   DNS failures, HTTP/2 `REFUSED_STREAM`, a graceful HTTP/2 `GOAWAY`, and
///   hyper's "canceled before it was sent": `Transient`, processed `No`;
/// - [`CircuitOpen`]: `Transient`, processed `No`, `retry_after` the time
///   left in the break;
/// - timeouts, resets, aborted or closed connections, incomplete messages:
///   `Transient`, processed `Maybe`;
/// - anything else: `Permanent`.
///
/// ```
/// use std::io;
/// use tower_reissue::classify::classify_error;
/// use tower_reissue::{Processed, Verdict};
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// assert_eq!(classify_error(&refused), Verdict::transient(Processed::No));
///
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert_eq!(classify_error(&reset), Verdict::transient(Processed::Maybe));
///
/// let other = io::Error::other("certificate expired");
/// assert_eq!(classify_error(&other), Verdict::Permanent);
/// ```
pub fn classify_error(error: &(dyn StdError + 'static)) -> Verdict {
    let mut next = Some(error);
    while let Some(err) = next {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return Verdict::Transient {
                processed: Processed::No,
                retry_after: Some(open.retry_after()),
            };
        }
        if let Some(processed) = recognise(err) {
            return Verdict::transient(processed);
        }
        next = err.source();
    }
    Verdict::Permanent
}

fn recognise(err: &(dyn StdError + 'static)) -> Option<Processed> {
    cause(err).map(Cause::processed)
}

/// The name of the first cause [`classify_error`] recognises in `error`'s
/// chain, as telemetry reports it (`error.type`); `_OTHER` when none is
/// recognised, as OpenTelemetry names a failure outside its known set.
pub(crate) fn error_type(error: &(dyn StdError + 'static)) -> &'static str {
    let mut next = Some(error);
    while let Some(err) = next {
        if err.is::<CircuitOpen>() {
            return "circuit_open";
        }
        if let Some(cause) = cause(err) {
            return cause.as_str();
        }
        next = err.source();
    }
    "_OTHER"
}

/// A transport failure the classifier recognises: a closed set, so that
/// telemetry labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Connect,
    Canceled,
    RefusedStream,
    GracefulGoaway,
    Timeout,
    DeadlineExceeded,
    ConnectionClosed,
    ConnectionReset,
    Goaway,
    StreamReset,
}

impl Cause {
    fn processed(self) -> Processed {
        match self {
            Cause::Connect | Cause::Canceled | Cause::RefusedStream | Cause::GracefulGoaway => {
                Processed::No
            }
            Cause::Timeout
            | Cause::DeadlineExceeded
            | Cause::ConnectionClosed
            | Cause::ConnectionReset
            | Cause::Goaway
            | Cause::StreamReset => Processed::Maybe,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Canceled => "canceled",
            Cause::RefusedStream => "refused_stream",
            Cause::GracefulGoaway | Cause::Goaway => "goaway",
            Cause::Timeout => "timeout",
            Cause::DeadlineExceeded => "deadline_exceeded",
            Cause::ConnectionClosed => "connection_closed",
            Cause::ConnectionReset => "connection_reset",
            Cause::StreamReset => "stream_reset",
        }
    }
}

fn cause(err: &(dyn StdError + 'static)) -> Option<Cause> {
    if err.is::<AttemptTimedOut>() {
        return Some(Cause::Timeout);
    }
    if err.is::<DeadlineExceeded>() {
        return Some(Cause::DeadlineExceeded);
    }
    if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
        if e.is_connect() {
            return Some(Cause::Connect);
        }
        // A send error: its source says more.
        return None;
    }
    if let Some(e) = err.downcast_ref::<hyper::Error>() {
        if e.is_canceled() {
            // hyper's dispatcher dropped the request before writing it.
            return Some(Cause::Canceled);
        }
        if e.is_timeout() {
            return Some(Cause::Timeout);
        }
        if e.is_incomplete_message() || e.is_closed() {
            return Some(Cause::ConnectionClosed);
        }
        return None;
    }
    if let Some(e) = err.downcast_ref::<h2::Error>() {
        return match e.reason() {
            Some(h2::Reason::REFUSED_STREAM) => Some(Cause::RefusedStream),
            // A graceful GOAWAY only fails the streams the server never
            // started; any other GOAWAY may have cut a processed stream.
            Some(h2::Reason::NO_ERROR) if e.is_go_away() && e.is_remote() => {
                Some(Cause::GracefulGoaway)
            }
            _ if e.is_go_away() => Some(Cause::Goaway),
            _ if e.is_reset() => Some(Cause::StreamReset),
            _ if e.is_io() => Some(Cause::ConnectionReset),
            _ => None,
        };
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        if e.is_connect() {
            return Some(Cause::Connect);
        }
        if e.is_timeout() {
            return Some(Cause::Timeout);
        }
        return None;
    }
    if let Some(e) = err.downcast_ref::<io::Error>() {
        return match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => Some(Cause::Connect),
            io::ErrorKind::TimedOut => Some(Cause::Timeout),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Some(Cause::ConnectionReset),
            io::ErrorKind::UnexpectedEof => Some(Cause::ConnectionClosed),
            _ => None,
        };
    }
    None
}
