//! The JSON API: the same reads and actions as the pages.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Done, ListParams, MAX_LIMIT, Shared, parse_id, status_of};
use crate::dead_letter::{
    AttemptOutcome, DeadLetter, DeadLetterState, KeptBody, PageQuery, QueueError, StateKind,
    to_millis,
};

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.into(),
        }),
    )
        .into_response()
}

fn failed(error: QueueError) -> Response {
    refuse(status_of(&error), error.to_string())
}

/// An entry as JSON; times are milliseconds since the Unix epoch.
#[derive(Serialize)]
struct Entry {
    id: u64,
    at_ms: i64,
    method: String,
    uri: String,
    /// `[name, value]` pairs in order; values not UTF-8 are decoded lossily.
    headers: Vec<(String, String)>,
    /// The body as UTF-8 text, when it was kept and is text.
    body_text: Option<String>,
    /// The body as lowercase hex, when it was kept and is not text.
    body_hex: Option<String>,
    /// Why the body was not kept, when it was not.
    body_not_kept: Option<String>,
    idempotency_key: Option<String>,
    reason: String,
    attempts: u32,
    last: Outcome,
    state: State_,
    history: Vec<Replay>,
}

#[derive(Serialize)]
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

#[derive(Serialize)]
struct State_ {
    kind: &'static str,
    /// The replay's status, when replayed.
    status: Option<u16>,
    /// When the lease runs out (leased) or the entry may be leased again
    /// (failed again).
    until_ms: Option<i64>,
}

#[derive(Serialize)]
struct Replay {
    at_ms: i64,
    outcome: Outcome,
}

fn outcome(outcome: &AttemptOutcome) -> Outcome {
    match outcome {
        AttemptOutcome::Status(status) => Outcome {
            status: Some(status.as_u16()),
            error: None,
        },
        AttemptOutcome::Error(text) => Outcome {
            status: None,
            error: Some(text.clone()),
        },
    }
}

impl From<&DeadLetter> for Entry {
    fn from(letter: &DeadLetter) -> Self {
        let request = &letter.request;
        let (mut body_text, mut body_hex, mut body_not_kept) = (None, None, None);
        match &request.body {
            KeptBody::Kept(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => body_text = Some(text.to_owned()),
                Err(_) => body_hex = Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
            },
            KeptBody::NotKept(why) => body_not_kept = Some(why.clone()),
        }
        let (status, until_ms) = match &letter.state {
            DeadLetterState::Replayed { status } => (Some(status.as_u16()), None),
            DeadLetterState::Leased { until: at }
            | DeadLetterState::FailedAgain { retry_at: at } => (None, Some(to_millis(*at))),
            DeadLetterState::Pending | DeadLetterState::Discarded => (None, None),
        };
        Entry {
            id: letter.id.get(),
            at_ms: to_millis(request.at),
            method: request.method.to_string(),
            uri: request.uri.to_string(),
            headers: request
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_text,
            body_hex,
            body_not_kept,
            idempotency_key: request.idempotency_key.clone(),
            reason: request.reason.clone(),
            attempts: request.attempts,
            last: outcome(&request.last),
            state: State_ {
                kind: letter.state.kind().as_str(),
                status,
                until_ms,
            },
            history: letter
                .history
                .iter()
                .map(|record| Replay {
                    at_ms: to_millis(record.at),
                    outcome: outcome(&record.outcome),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct PageBody {
    entries: Vec<Entry>,
    next: Option<u64>,
}

pub(super) async fn list(
    State(backend): State<Shared>,
    Query(params): Query<ListParams>,
) -> Response {
    let query = match params.query(100) {
        Ok(query) => query,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    match backend.page(query).await {
        Ok(page) => Json(PageBody {
            entries: page.entries.iter().map(Entry::from).collect(),
            next: page.next.map(|id| id.get()),
        })
        .into_response(),
        Err(error) => failed(error),
    }
}

#[derive(Serialize)]
struct CountsBody {
    by_state: BTreeMap<&'static str, u64>,
    by_reason: BTreeMap<String, u64>,
}

pub(super) async fn counts(State(backend): State<Shared>) -> Response {
    match backend.counts().await {
        Ok(counts) => Json(CountsBody {
            by_state: StateKind::ALL
                .into_iter()
                .map(|kind| (kind.as_str(), counts.state(kind)))
                .collect(),
            by_reason: counts.by_reason,
        })
        .into_response(),
        Err(error) => failed(error),
    }
}

pub(super) async fn entry(State(backend): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    match backend.get(id).await {
        Ok(Some(letter)) => Json(Entry::from(&letter)).into_response(),
        Ok(None) => failed(QueueError::NotFound),
        Err(error) => failed(error),
    }
}

pub(super) async fn replay_one(State(backend): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    match backend.replay(id).await {
        Ok(Some(letter)) => Json(Entry::from(&letter)).into_response(),
        Ok(None) => refuse(
            StatusCode::CONFLICT,
            "not replayed: finished already, or another replayer holds it",
        ),
        Err(error) => failed(error),
    }
}

pub(super) async fn discard_one(State(backend): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    match backend.discard(id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => failed(error),
    }
}

/// Which entries `POST api/replay` replays.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Matching {
    state: Option<StateName>,
    reason: Option<String>,
    host: Option<String>,
    limit: Option<usize>,
}

/// A state by its label, checked while the JSON is read.
#[derive(Debug)]
struct StateName(StateKind);

impl<'de> Deserialize<'de> for StateName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = String::deserialize(deserializer)?;
        label
            .parse()
            .map(StateName)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize)]
struct BulkBody {
    /// Entries answered for good.
    replayed: Vec<u64>,
    /// Entries whose replay failed again (or that were discarded as too old).
    failed: Vec<u64>,
    /// Entries left alone (finished meanwhile, or held by a replayer), with why.
    skipped: Vec<(u64, String)>,
}

pub(super) async fn replay_matching(
    State(backend): State<Shared>,
    Json(matching): Json<Matching>,
) -> Response {
    let limit = matching.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is not from 1 to {MAX_LIMIT}"),
        );
    }
    let mut query = PageQuery::new(limit);
    query.state = matching.state.map(|name| name.0);
    query.reason = matching.reason;
    query.host = matching.host;
    let mut body = BulkBody {
        replayed: Vec::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen = 0;
    // Finished entries match a state-less filter too; they are paged over,
    // not counted against the limit.
    'pages: loop {
        let page = match backend.page(query.clone()).await {
            Ok(page) => page,
            Err(error) => return failed(error),
        };
        for letter in page.entries.iter().filter(|l| !l.state.kind().is_final()) {
            if seen == limit {
                break 'pages;
            }
            seen += 1;
            match Done::replay(&*backend, letter.id).await {
                Done::Changed(after) => match after.state {
                    DeadLetterState::Replayed { .. } => body.replayed.push(after.id.get()),
                    _ => body.failed.push(after.id.get()),
                },
                Done::Discarded(id) => body.failed.push(id.get()),
                Done::Refused(id, why) => body.skipped.push((id.get(), why)),
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    Json(body).into_response()
}
