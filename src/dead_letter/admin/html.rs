//! The HTML pages, rendered by maud (which escapes every value it is given).

use axum::extract::{OriginalUri, Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, Uri};
use maud::{DOCTYPE, Markup, html};

use super::{Done, ListParams, Shared, mount_prefix, parse_id, status_of};
use crate::dead_letter::{DeadLetter, DeadLetterId, DeadLetterState, KeptBody, StateKind};

const PAGE_SIZE: usize = 50;
/// The most body bytes an entry page shows.
const PREVIEW: usize = 16 * 1024;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.counts a{margin-right:1em}.uri{font-family:monospace;word-break:break-all}\
pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap;word-break:break-all}\
.error{color:#a00}form.inline{display:inline}button{margin:0 .2em}";

fn layout(prefix: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (STYLE) }
            }
            body {
                p { a href=(home(prefix)) { "Dead letters" } }
                (body)
            }
        }
    }
}

/// The list's own path: the mount point itself (a nested router answers
/// `/admin`, not `/admin/`).
fn home(prefix: &str) -> &str {
    if prefix.is_empty() { "/" } else { prefix }
}

fn error_page(prefix: &str, status: StatusCode, message: &str) -> Response {
    let body = html! { h1 { (status) } p.error { (message) } };
    (status, layout(prefix, "Error", body)).into_response()
}

fn state_text(state: &DeadLetterState) -> String {
    match state {
        DeadLetterState::Replayed { status } => format!("replayed ({status})"),
        DeadLetterState::FailedAgain { .. } => "failed again".into(),
        other => other.kind().as_str().into(),
    }
}

fn when(at: std::time::SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

fn link_query(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<_> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

pub(super) async fn list(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    Query(params): Query<ListParams>,
) -> Response {
    let prefix = mount_prefix(&original, &seen);
    let query = match params.query(PAGE_SIZE) {
        Ok(query) => query,
        Err(message) => return error_page(&prefix, StatusCode::BAD_REQUEST, &message),
    };
    let read = async {
        Ok::<_, crate::dead_letter::QueueError>((
            backend.page(query.clone()).await?,
            backend.counts().await?,
        ))
    };
    let (page, counts) = match read.await {
        Ok(both) => both,
        Err(error) => return error_page(&prefix, status_of(&error), &error.to_string()),
    };
    let state = query.state.map_or("", StateKind::as_str);
    let reason = query.reason.as_deref().unwrap_or("");
    let host = query.host.as_deref().unwrap_or("");
    let body = html! {
        h1 { "Dead letters" }
        p.counts {
            a href=(home(&prefix)) { "all " (counts.total()) }
            @for kind in StateKind::ALL {
                a href={ (home(&prefix)) "?state=" (kind.as_str()) } { (kind.as_str()) " " span id={ "count-" (kind.as_str()) } { (counts.state(kind)) } }
            }
        }
        form #filters method="get" action=(home(&prefix)) {
            label { "State " select name="state" {
                option value="" { "any" }
                @for kind in StateKind::ALL {
                    option value=(kind.as_str()) selected[kind.as_str() == state] { (kind.as_str()) }
                }
            } }
            " "
            label { "Reason " select name="reason" {
                option value="" { "any" }
                @for known in counts.by_reason.keys() {
                    option value=(known) selected[known == reason] { (known) }
                }
            } }
            " "
            label { "Host " input name="host" value=(host); }
            " "
            button type="submit" { "Filter" }
        }
        form #entries method="post" action={ (prefix) "/replay" } {
            table {
                tr { th {} th { "#" } th { "Given up" } th { "Request" } th { "Reason" } th { "Attempts" } th { "Last" } th { "State" } th {} }
                @for letter in &page.entries {
                    @let id = letter.id;
                    tr id={ "entry-" (id) } {
                        td { input type="checkbox" name="id" value=(id) aria-label={ "select " (id) }; }
                        td { a href={ (prefix) "/entries/" (id) } { (id) } }
                        td { (when(letter.request.at)) }
                        td.uri { (letter.request.method) " " (letter.request.uri) }
                        td { (letter.request.reason) }
                        td { (letter.request.attempts) }
                        td { (letter.request.last) }
                        td.state { (state_text(&letter.state)) }
                        td {
                            @if !letter.state.kind().is_final() {
                                button type="submit" formaction={ (prefix) "/entries/" (id) "/replay" } { "Replay" }
                                button type="submit" formaction={ (prefix) "/entries/" (id) "/discard" } { "Discard" }
                            }
                        }
                    }
                }
            }
            @if page.entries.is_empty() { p { "No entries match." } }
            button type="submit" { "Replay selected" }
            button type="submit" formaction={ (prefix) "/discard" } { "Discard selected" }
        }
        @if let Some(next) = page.next {
            p { a #next href={ (home(&prefix)) "?" (link_query(&[("state", state), ("reason", reason), ("host", host), ("after", &next.to_string())])) } { "Next page" } }
        }
    };
    layout(&prefix, "Dead letters", body).into_response()
}

/// The body as text when it is UTF-8, else as hex, cut at [`PREVIEW`].
fn body_preview(bytes: &Bytes) -> (&'static str, String, usize) {
    let shown = &bytes[..bytes.len().min(PREVIEW)];
    let rest = bytes.len() - shown.len();
    match std::str::from_utf8(shown) {
        Ok(text) => ("text", text.to_owned(), rest),
        Err(_) => {
            let lines: Vec<String> = shown
                .chunks(16)
                .map(|line| {
                    line.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            ("hex", lines.join("\n"), rest)
        }
    }
}

fn entry_details(prefix: &str, letter: &DeadLetter) -> Markup {
    let request = &letter.request;
    let id = letter.id;
    html! {
        table {
            tr { th { "State" } td.state { (state_text(&letter.state)) } }
            tr { th { "Method" } td { (request.method) } }
            tr { th { "URI" } td.uri { (request.uri) } }
            tr { th { "Given up" } td { (when(request.at)) } }
            tr { th { "Reason" } td { (request.reason) } }
            tr { th { "Attempts" } td { (request.attempts) ", last: " (request.last) } }
            tr { th { "Idempotency key" } td { (request.idempotency_key.as_deref().unwrap_or("none")) } }
        }
        h2 { "Headers" }
        table #headers {
            @for (name, value) in &request.headers {
                tr { th { (name) } td { (String::from_utf8_lossy(value.as_bytes())) } }
            }
        }
        h2 { "Body" }
        @match &request.body {
            KeptBody::Kept(bytes) => {
                @let (kind, shown, rest) = body_preview(bytes);
                p { (bytes.len()) " bytes, shown as " (kind) @if rest > 0 { " (" (rest) " more not shown)" } }
                pre #body { (shown) }
            }
            KeptBody::NotKept(why) => p.error { "Not kept: " (why) }
        }
        h2 { "Replays" }
        @if letter.history.is_empty() { p { "None yet." } } @else {
            table #history {
                tr { th { "At" } th { "Outcome" } }
                @for record in &letter.history {
                    tr { td { (when(record.at)) } td { (record.outcome) } }
                }
            }
        }
        @if !letter.state.kind().is_final() {
            form.inline method="post" action={ (prefix) "/entries/" (id) "/replay" } { button type="submit" { "Replay" } }
            form.inline method="post" action={ (prefix) "/entries/" (id) "/discard" } { button type="submit" { "Discard" } }
        }
    }
}

pub(super) async fn entry(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    Path(id): Path<String>,
) -> Response {
    let prefix = mount_prefix(&original, &seen);
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(message) => return error_page(&prefix, StatusCode::BAD_REQUEST, &message),
    };
    match backend.get(id).await {
        Ok(Some(letter)) => {
            let body = html! { h1 { "Dead letter " (id) } (entry_details(&prefix, &letter)) };
            layout(&prefix, &format!("Dead letter {id}"), body).into_response()
        }
        Ok(None) => error_page(&prefix, StatusCode::NOT_FOUND, "no such dead letter"),
        Err(error) => error_page(&prefix, status_of(&error), &error.to_string()),
    }
}

/// The page shown after an action: what happened to each entry.
fn outcome_page(prefix: &str, done: &[Done]) -> Response {
    let body = html! {
        h1 { "Outcome" }
        table #outcome {
            tr { th { "#" } th { "Outcome" } }
            @for item in done {
                @match item {
                    Done::Changed(letter) => tr id={ "outcome-" (letter.id) } {
                        td { a href={ (prefix) "/entries/" (letter.id) } { (letter.id) } }
                        td.state {
                            (state_text(&letter.state))
                            @if let (DeadLetterState::FailedAgain { .. }, Some(last)) = (&letter.state, letter.history.last()) { ": " (last.outcome) }
                        }
                    },
                    Done::Discarded(id) => tr id={ "outcome-" (id) } {
                        td { a href={ (prefix) "/entries/" (id) } { (id) } } td.state { "discarded" }
                    },
                    Done::Refused(id, why) => tr id={ "outcome-" (id) } {
                        td { a href={ (prefix) "/entries/" (id) } { (id) } } td.error { (why) }
                    },
                }
            }
        }
        @if done.is_empty() { p { "No entry was selected." } }
        p { a #back href=(home(prefix)) { "Back to the list" } }
    };
    layout(prefix, "Outcome", body).into_response()
}

async fn act_on_one(backend: Shared, prefix: &str, id: &str, replay: bool) -> Response {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(message) => return error_page(prefix, StatusCode::BAD_REQUEST, &message),
    };
    let done = if replay {
        Done::replay(&*backend, id).await
    } else {
        Done::discard(&*backend, id).await
    };
    outcome_page(prefix, &[done])
}

pub(super) async fn replay_one(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    Path(id): Path<String>,
) -> Response {
    act_on_one(backend, &mount_prefix(&original, &seen), &id, true).await
}

pub(super) async fn discard_one(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    Path(id): Path<String>,
) -> Response {
    act_on_one(backend, &mount_prefix(&original, &seen), &id, false).await
}

/// The ids ticked in the list's form (`id`, repeated).
fn selected(form: &[u8]) -> Result<Vec<DeadLetterId>, String> {
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(form).map_err(|error| format!("unreadable form: {error}"))?;
    fields
        .iter()
        .filter(|(name, _)| name == "id")
        .map(|(_, value)| parse_id(value))
        .collect()
}

async fn act_on_selected(backend: Shared, prefix: &str, form: &[u8], replay: bool) -> Response {
    let ids = match selected(form) {
        Ok(ids) => ids,
        Err(message) => return error_page(prefix, StatusCode::BAD_REQUEST, &message),
    };
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        done.push(if replay {
            Done::replay(&*backend, id).await
        } else {
            Done::discard(&*backend, id).await
        });
    }
    outcome_page(prefix, &done)
}

pub(super) async fn replay_selected(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    form: Bytes,
) -> Response {
    act_on_selected(backend, &mount_prefix(&original, &seen), &form, true).await
}

pub(super) async fn discard_selected(
    State(backend): State<Shared>,
    original: OriginalUri,
    seen: Uri,
    form: Bytes,
) -> Response {
    act_on_selected(backend, &mount_prefix(&original, &seen), &form, false).await
}
