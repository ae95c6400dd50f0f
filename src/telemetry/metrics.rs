//! The names of the metrics the crate records with feature `metrics`.
//!
//! They go through the [`metrics`](https://docs.rs/metrics) facade, so any
//! exporter (Prometheus, OpenTelemetry, statsd) picks them up once it is
//! installed as the recorder. Every label takes its values from a closed
//! set: no URI, host, key or principal ever becomes a label, so the number
//! of series stays bounded whatever the traffic.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tower_reissue_retries_total` | counter | `reason`: the failed attempt's `error.type` (status code such as `503`, or `connect`, `timeout`, `connection_reset`, `connection_closed`, `canceled`, `refused_stream`, `goaway`, `stream_reset`, `deadline_exceeded`, `circuit_open`, `_OTHER`) | retries made |
//! | `tower_reissue_give_ups_total` | counter | `reason`: `permanent`, `not_safe`, `disabled`, `max_attempts`, `not_replayable`, `retry_after_too_long`, `deadline`, `budget_exhausted`, `unreconciled`, `service_not_ready` | failures handed to the caller |
//! | `tower_reissue_reconcile_answers_total` | counter | `answer`: `applied`, `not_applied`, `unknown`, `timeout`, `error` | what reconcilers answered about ambiguous attempts |
//! | `tower_reissue_dead_letters_total` | counter | `event`: `pushed`, `push_failed`, `replayed`, `failed_again`, `not_replayable`, `expired` | dead letters parked by the retry layer and settled by a `Replayer` |
//! | `tower_reissue_hedges_total` | counter | `event`: `sent`, `won` (its answer was the one kept), `budget_exhausted`, `breaker_open`, `not_replayable`, `service_not_ready` (a hedge was due and not sent, for that reason) | hedges of slow requests by the hedge layer |
//! | `tower_reissue_budget_refusals_total` | counter | none | retries the budget refused |
//! | `tower_reissue_attempts` | histogram | none | attempts per logical request |
//! | `tower_reissue_retry_delay_seconds` | histogram | none | the delay before each retry |
//! | `tower_reissue_breaker_transitions_total` | counter | `from`, `to`: `closed`, `open`, `half_open` | circuit breaker state changes |
//! | `tower_reissue_breakers` | gauge | `state`: `open`, `half_open` | breakers in that state now (closed ones are not counted) |
//! | `tower_reissue_server_requests_total` | counter | `outcome`: `executed`, `executed_unprotected` (store down, failing open), `replayed`, `conflict` (409), `mismatch` (422), `missing_key` (400), `invalid_key` (400), `request_too_large` (413), `request_unreadable` (400), `not_stored` (410), `store_unavailable` (503), `quota_exceeded` (429) | keyed requests on the server, by what the idempotency layer did |
//!
//! ```
//! use tower_reissue::telemetry::metrics;
//! assert_eq!(metrics::RETRIES, "tower_reissue_retries_total");
//! ```

/// Counter of retries, label `reason` (the failed attempt's `error.type`).
pub const RETRIES: &str = "tower_reissue_retries_total";
/// Counter of failures handed to the caller, label `reason` (why no further
/// attempt was made).
pub const GIVE_UPS: &str = "tower_reissue_give_ups_total";
/// Counter of retries the retry budget refused.
pub const BUDGET_REFUSALS: &str = "tower_reissue_budget_refusals_total";
/// Histogram of attempts per logical request, counting the first.
pub const ATTEMPTS: &str = "tower_reissue_attempts";
/// Histogram of the delay before each retry, in seconds.
pub const RETRY_DELAY: &str = "tower_reissue_retry_delay_seconds";
/// Counter of circuit breaker state changes, labels `from` and `to`
/// (`closed`, `open`, `half_open`).
pub const BREAKER_TRANSITIONS: &str = "tower_reissue_breaker_transitions_total";
/// Gauge of circuit breakers by state, label `state` (`open`, `half_open`;
/// closed breakers are not counted).
pub const BREAKERS: &str = "tower_reissue_breakers";
/// Counter of keyed requests on the server, label `outcome`.
pub const SERVER_REQUESTS: &str = "tower_reissue_server_requests_total";
/// Counter of reconciler answers, label `answer`.
pub const RECONCILE_ANSWERS: &str = "tower_reissue_reconcile_answers_total";
/// Counter of dead-letter events, label `event`.
pub const DEAD_LETTERS: &str = "tower_reissue_dead_letters_total";
/// Counter of hedges (extra copies of slow requests), label `event`.
pub const HEDGES: &str = "tower_reissue_hedges_total";

/// The label naming why a retry was made.
pub const LABEL_REASON: &str = "reason";
/// The label naming the state a breaker left.
pub const LABEL_FROM: &str = "from";
/// The label naming the state a breaker entered.
pub const LABEL_TO: &str = "to";
/// The label naming a breaker state.
pub const LABEL_STATE: &str = "state";
/// The label naming what the idempotency layer did with a request.
pub const LABEL_OUTCOME: &str = "outcome";
/// The label naming a reconciler's answer.
pub const LABEL_ANSWER: &str = "answer";
/// The label naming what happened to a dead letter, or to a hedge.
pub const LABEL_EVENT: &str = "event";
