//! Where what the layer gives up on goes: a sink the layer calls once per
//! give-up. Dead letters attach through it, so this folder names no queue.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::GiveUpReason;
use crate::classify::{Outcome, RequestView};
use crate::error::BoxError;
use crate::request::NotReplayable;

/// A request the layer gave up on, as handed to a [`GiveUpSink`].
pub(crate) struct GaveUp<'a> {
    /// The request (method, URI, headers, extensions, idempotency key).
    pub(crate) request: RequestView<'a>,
    /// How many attempts were made.
    pub(crate) attempts: u32,
    /// Why no further attempt is made.
    pub(crate) reason: GiveUpReason,
    /// The last attempt's result, if one ended (none when the service
    /// failed before a retry could be sent).
    pub(crate) last: Option<Outcome<'a>>,
    /// The body copy the layer kept, read only by a sink that keeps it.
    pub(crate) body: &'a dyn Fn() -> Result<Bytes, NotReplayable>,
}

/// The work a sink does for one give-up: async, since a durable sink writes
/// somewhere, and fallible, since that write can fail. It resolves to the
/// stored entry's id.
pub(crate) type Parking = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;

/// Takes what the retry layer gives up on.
///
/// `park` runs on the caller's path and copies what it keeps out of the
/// borrowed [`GaveUp`]; it returns the work to do with it (`None` when it
/// keeps nothing, such as for a permanent failure). Today the layer runs
/// that work on a task of its own, so the caller's answer never waits for
/// it; the future's output is where a caller that waits gets the entry's id.
pub(crate) trait GiveUpSink: Send + Sync + 'static {
    fn park(&self, gave_up: &GaveUp<'_>) -> Option<Parking>;
}

/// Runs a sink's work on the current tokio runtime. Without one, the work
/// is lost, and says so.
pub(crate) fn spawn(parking: Parking, request: &RequestView<'_>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            // The sink reports its own success or failure; the id is for a
            // caller that waits, and this one does not.
            runtime.spawn(async move {
                let _ = parking.await;
            });
        }
        Err(_) => {
            crate::telemetry::dead_letter("push_failed");
            tracing::error!(
                target: "tower_reissue::dead_letter",
                method = %request.method(),
                uri = %request.uri(),
                "dead letter lost: no tokio runtime to push it on"
            );
        }
    }
}
