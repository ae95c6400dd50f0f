//! What the retry future tells the world: the `tracing` events, the metrics,
//! the hooks and the give-up sink, each reported from one place.

use std::time::Duration;

use super::{GiveUpEvent, GiveUpReason, RetryEvent, RetryLayer, sink};
use crate::BoxError;
use crate::classify::{Outcome, RequestView};
use crate::request::{RequestTemplate, RetryResponse};
use crate::{Verdict, telemetry};

/// An attempt's result as the classifier sees it.
#[inline(always)]
/// The one place a retry is reported: the `tracing` event, the metrics and
/// the hook.
pub(super) fn retrying<C>(
    config: &RetryLayer<C>,
    request: RequestView<'_>,
    attempt: u32,
    verdict: Verdict,
    error_type: Option<&telemetry::ErrorType>,
    delay: Duration,
) {
    tracing::debug!(
        target: "tower_reissue::retry",
        method = %request.method(),
        uri = %request.uri(),
        attempt,
        ?verdict,
        delay_ms = delay.as_millis() as u64,
        "retrying"
    );
    telemetry::retrying(error_type, delay);
    if let Some(hook) = &config.settings.on_retry {
        hook(&RetryEvent {
            request,
            attempt,
            verdict,
            delay,
        });
    }
}

/// The one place a give-up is reported: the `tracing` event, the metrics,
/// the hook, and the give-up sink (with the request's template and last
/// result, if there was one).
pub(super) fn give_up<C, T: RequestTemplate, R: RetryResponse>(
    config: &RetryLayer<C>,
    template: &T,
    request: RequestView<'_>,
    attempts: u32,
    verdict: Verdict,
    reason: GiveUpReason,
    last: Option<&Result<R, BoxError>>,
) {
    tracing::debug!(
        target: "tower_reissue::retry",
        method = %request.method(),
        uri = %request.uri(),
        attempts,
        ?verdict,
        %reason,
        "giving up"
    );
    telemetry::gave_up(reason.as_str(), attempts);
    if let Some(hook) = &config.settings.on_give_up {
        hook(&GiveUpEvent {
            request,
            attempts,
            verdict,
            reason,
        });
    }
    if let Some(sink) = &config.settings.give_up_sink {
        let gave_up = sink::GaveUp {
            request,
            attempts,
            reason,
            last: last.map(Outcome::of),
            body: &|| template.kept_body(),
        };
        if let Some(parking) = sink.park(&gave_up) {
            sink::spawn(parking, &request);
        }
    }
}
