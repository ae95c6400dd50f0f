use std::error::Error as StdError;
use std::io;

use super::open::CircuitOpen;
use super::{Processed, Verdict};
use crate::retry::{AttemptTimedOut, DeadlineExceeded};

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
    if err.is::<AttemptTimedOut>() || err.is::<DeadlineExceeded>() {
        return Some(Processed::Maybe);
    }
    if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
        if e.is_connect() {
            return Some(Processed::No);
        }
        // A send error: its source says more.
        return None;
    }
    if let Some(e) = err.downcast_ref::<hyper::Error>() {
        if e.is_canceled() {
            // hyper's dispatcher dropped the request before writing it.
            return Some(Processed::No);
        }
        if e.is_timeout() || e.is_incomplete_message() || e.is_closed() {
            return Some(Processed::Maybe);
        }
        return None;
    }
    if let Some(e) = err.downcast_ref::<h2::Error>() {
        return match e.reason() {
            Some(h2::Reason::REFUSED_STREAM) => Some(Processed::No),
            // A graceful GOAWAY only fails the streams the server never
            // started; any other GOAWAY may have cut a processed stream.
            Some(h2::Reason::NO_ERROR) if e.is_go_away() && e.is_remote() => Some(Processed::No),
            _ if e.is_go_away() || e.is_reset() || e.is_io() => Some(Processed::Maybe),
            _ => None,
        };
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        if e.is_connect() {
            return Some(Processed::No);
        }
        if e.is_timeout() {
            return Some(Processed::Maybe);
        }
        return None;
    }
    if let Some(e) = err.downcast_ref::<io::Error>() {
        return match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => Some(Processed::No),
            io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Some(Processed::Maybe),
            _ => None,
        };
    }
    None
}
