//! The admin router over real HTTP, with real dead letters in a SQLite file:
//! links under the mount prefix, escaping, the cross-site check, the JSON
//! API and bad input.
#![cfg(feature = "admin")]

mod admin_fixture;

use admin_fixture::{HOSTILE, Incident, PREFIX, incident};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_reissue::dead_letter::{DeadLetterQueue, DeadLetterState, StateKind};

async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(HttpConnector::new());
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(url: &str) -> (StatusCode, String) {
    call(Method::GET, url, &[], "").await
}

async fn json(method: Method, url: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call(
        method,
        url,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every `href`, `action` and `formaction` value in a page.
fn links(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in [" href=\"", " action=\"", " formaction=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            found.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    found
}

async fn states(incident: &Incident) -> Vec<StateKind> {
    let mut states = Vec::new();
    for id in &incident.ids {
        states.push(incident.queue.get(*id).await.unwrap().unwrap().state.kind());
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_link_under_the_mount_prefix_and_escape_what_they_show() {
    let incident = incident().await;
    let hostile = incident.ids[4];
    let (status, list) = get(&incident.url("")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, entry) = get(&incident.url(&format!("/entries/{hostile}"))).await;
    assert_eq!(status, StatusCode::OK);
    for page in [&list, &entry] {
        let links = links(page);
        assert!(links.len() >= 3, "{links:?}");
        for link in links {
            assert!(
                link == PREFIX
                    || link.starts_with(&format!("{PREFIX}/"))
                    || link.starts_with(&format!("{PREFIX}?")),
                "{link} is not under {PREFIX}"
            );
        }
        assert!(
            !page.contains("<script"),
            "markup from a dead letter reached the page"
        );
        assert!(!page.contains("<img"));
        assert!(!page.contains("\"onmouseover"));
    }
    // Shown, as text: in the URI (list and entry), header and body (entry).
    assert!(
        list.contains("/emails/&quot;onmouseover='window.__pwned=3'&amp;amp;?note=%3Cscript%3E"),
        "{list}"
    );
    let escaped = "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=&quot;window.__pwned = 2&quot;&gt;";
    assert_eq!(
        entry.matches(escaped).count(),
        2,
        "header and body: {entry}"
    );
    // And the page for an entry of the list links to where it says.
    let (status, _) = get(&format!(
        "http://{}{}",
        incident.admin,
        links(&list)
            .iter()
            .find(|l| l.contains("/entries/"))
            .unwrap()
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let _ = HOSTILE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_is_refused_and_changes_nothing() {
    let incident = incident().await;
    let [a, b, ..] = incident.ids[..] else {
        unreachable!()
    };
    let form = format!("id={a}&id={b}");
    let posts = [
        (format!("/entries/{a}/replay"), String::new()),
        (format!("/entries/{a}/discard"), String::new()),
        ("/replay".to_owned(), form.clone()),
        ("/discard".to_owned(), form.clone()),
        (format!("/api/entries/{a}/replay"), String::new()),
        (format!("/api/entries/{a}/discard"), String::new()),
        ("/api/replay".to_owned(), "{}".to_owned()),
    ];
    let forged: [&[(&str, &str)]; 3] = [
        // A current browser, on a form from another site...
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        // ...or from another port of this host,
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://127.0.0.1:1"),
        ],
        // and an older browser, with only `Origin`.
        &[("origin", "http://evil.example")],
    ];
    for (path, body) in &posts {
        for headers in forged {
            let mut headers = headers.to_vec();
            headers.push(("content-type", "application/x-www-form-urlencoded"));
            let (status, text) = call(Method::POST, &incident.url(path), &headers, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(text.contains("cross-site request refused"), "{text}");
        }
    }
    assert_eq!(states(&incident).await, [StateKind::Pending; 5]);
    assert_eq!(incident.effects.total(), 0, "nothing was replayed");

    // The same form from the page's own origin goes through.
    let own = format!("http://{}", incident.admin);
    let (status, outcome) = call(
        Method::POST,
        &incident.url("/replay"),
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", &own),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &form,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        outcome.matches("replayed (201 Created)").count(),
        2,
        "{outcome}"
    );
    assert_eq!(
        (incident.effects.of("k-1"), incident.effects.of("k-2")),
        (1, 1)
    );
    let (status, _) = call(
        Method::POST,
        &incident.url(&format!("/entries/{}/discard", incident.ids[2])),
        &[("origin", &own)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        states(&incident).await,
        [
            StateKind::Replayed,
            StateKind::Replayed,
            StateKind::Discarded,
            StateKind::Pending,
            StateKind::Pending
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_pages_replays_and_discards() {
    let incident = incident().await;
    let ids: Vec<u64> = incident.ids.iter().map(|id| id.get()).collect();

    // Pages with a cursor.
    let mut seen = Vec::new();
    let mut url = incident.url("/api/entries?limit=2");
    loop {
        let (status, page) = json(Method::GET, &url, Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => url = incident.url(&format!("/api/entries?limit=2&after={next}")),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, localhost) = json(
        Method::GET,
        &incident.url("/api/entries?host=localhost"),
        Value::Null,
    )
    .await;
    let entries = localhost["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], ids[3]);

    // One entry, as parked.
    let (status, entry) = json(
        Method::GET,
        &incident.url(&format!("/api/entries/{}", ids[0])),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["body_text"], "{\"to\":\"ada\"}");
    assert_eq!(entry["idempotency_key"], "k-1");
    assert_eq!(entry["reason"], "max_attempts");
    assert_eq!(entry["attempts"], 2);
    assert_eq!(entry["last"]["status"], 503);
    assert_eq!(entry["state"]["kind"], "pending");

    // Replay one: sent once, then finished.
    let replay = incident.url(&format!("/api/entries/{}/replay", ids[0]));
    let (status, after) = json(Method::POST, &replay, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(
        after["state"],
        json!({"kind": "replayed", "status": 201, "until_ms": null})
    );
    assert_eq!(after["history"][0]["outcome"]["status"], 201);
    assert_eq!(incident.effects.of("k-1"), 1);
    let (status, again) = json(Method::POST, &replay, Value::Null).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(
        incident.effects.of("k-1"),
        1,
        "a finished entry is not sent again"
    );

    // Discard: 204, and a replayed entry cannot be discarded.
    let (status, _) = call(
        Method::POST,
        &incident.url(&format!("/api/entries/{}/discard", ids[1])),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, refused) = json(
        Method::POST,
        &incident.url(&format!("/api/entries/{}/discard", ids[0])),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refused["error"], "the dead letter was replayed already");

    // Bulk replay by filter: the two unfinished 127.0.0.1 entries.
    let (status, bulk) = json(
        Method::POST,
        &incident.url("/api/replay"),
        json!({"host": "127.0.0.1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    assert_eq!(
        bulk,
        json!({"replayed": [ids[2], ids[4]], "failed": [], "skipped": []})
    );
    assert_eq!(
        (
            incident.effects.of("k-3"),
            incident.effects.of("k-5"),
            incident.effects.of("k-4")
        ),
        (1, 1, 0)
    );
    let (_, counts) = json(Method::GET, &incident.url("/api/counts"), Value::Null).await;
    assert_eq!(
        counts["by_state"],
        json!({"pending": 1, "leased": 0, "replayed": 3, "failed_again": 0, "discarded": 1})
    );
    assert_eq!(counts["by_reason"], json!({"max_attempts": 5}));
    assert!(matches!(
        incident
            .queue
            .get(incident.ids[3])
            .await
            .unwrap()
            .unwrap()
            .state,
        DeadLetterState::Pending
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error() {
    let incident = incident().await;
    let (status, page) = get(&incident.url("?state=lost")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("unknown state &quot;lost&quot;"), "{page}");
    let (status, page) = get(&incident.url("/entries/x1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not an entry id"), "{page}");
    let (status, page) = get(&incident.url("/entries/999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no such dead letter"));
    let (status, body) = json(
        Method::GET,
        &incident.url("/api/entries?limit=0"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "limit \"0\" is not a number from 1 to 500");
    let (status, body) = json(
        Method::POST,
        &incident.url("/api/entries/999/replay"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no such dead letter");
    let (status, _) = json(
        Method::POST,
        &incident.url("/api/replay"),
        json!({"state": "lost"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, page) = call(
        Method::POST,
        &incident.url("/replay"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "id=one",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("&quot;one&quot; is not an entry id"),
        "{page}"
    );
    assert_eq!(incident.effects.total(), 0);
}
