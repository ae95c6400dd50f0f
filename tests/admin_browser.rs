//! The admin page in a real headless Chromium, driven over WebDriver: the
//! list shows an incident's dead letters, a filter narrows them, "Replay"
//! sends one (the mail API counts it) and the page says so, "Discard"
//! takes one out, markup in a dead letter stays text, and a form on another
//! site cannot replay or discard.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install
//! chromium chromium-driver`), or `CHROMIUM` and `CHROMEDRIVER` naming the
//! binaries. With `ADMIN_SCREENSHOT=path.png` it also saves a screenshot of
//! the list page there.
#![cfg(feature = "admin")]

mod admin_fixture;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use admin_fixture::{HOSTILE, Incident, incident, serve};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tower_reissue::dead_letter::{DeadLetterQueue, StateKind};

fn binary(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: this test drives a headless Chromium over WebDriver. \
         On Debian or Ubuntu: `sudo apt-get install chromium chromium-driver`; \
         elsewhere set CHROMIUM and CHROMEDRIVER to the browser and its driver. \
         (Plain `cargo test`, without `--features admin`, does not run it.)",
        path.display()
    );
    path
}

/// A chromedriver on a free port, killed when dropped, with a profile
/// directory of its own.
struct Browser {
    driver: Child,
    client: Option<Client>,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chromium-profile-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser {
            driver,
            client: None,
            profile,
        };
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", browser.profile.display()),
                ]
            }
        });
        let url = format!("http://127.0.0.1:{port}");
        // The driver needs a moment to listen; give it up to 20 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(capabilities.as_object().unwrap().clone());
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!(
                    "no WebDriver session from {}: {error}",
                    chromedriver.display()
                ),
            }
        };
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn stop(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn click(client: &Client, locator: Locator<'_>) {
    let element = client
        .find(locator)
        .await
        .unwrap_or_else(|e| panic!("nothing to click at {locator:?}: {e}"));
    element.click().await.unwrap();
}

/// Clicks the button labelled `label` in the list's row for `id`.
async fn click_in_row(client: &Client, id: impl std::fmt::Display, label: &str) {
    let xpath = format!("//tr[@id='entry-{id}']//button[text()='{label}']");
    click(client, Locator::XPath(&xpath)).await;
}

/// The ids of the rows the list page shows.
async fn rows(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for row in client
        .find_all(Locator::Css("tr[id^='entry-']"))
        .await
        .unwrap()
    {
        ids.push(row.attr("id").await.unwrap().unwrap());
    }
    ids
}

/// Waits until a click has taken the browser to a URL starting with
/// `prefix`.
async fn until_at(client: &Client, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = client.current_url().await.unwrap();
        if url.as_str().starts_with(prefix) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still at {url}, not {prefix}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of the first element matching `css`, waiting for a page that
/// a click started to load.
async fn text(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn no_script_ran(client: &Client) {
    let pwned = client
        .execute(
            "return window.__pwned === undefined ? null : window.__pwned;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        pwned,
        serde_json::Value::Null,
        "markup from a dead letter ran"
    );
}

async fn state_of(incident: &Incident, index: usize) -> StateKind {
    incident
        .queue
        .get(incident.ids[index])
        .await
        .unwrap()
        .unwrap()
        .state
        .kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_replays_and_discards_in_chromium() {
    let incident = incident().await;
    let browser = Browser::start().await;
    let client = browser.client();
    let [ada, grace, _, barbara, hostile] = incident.ids[..] else {
        unreachable!()
    };

    // The list shows the incident's five dead letters and their counts.
    client.goto(&incident.url("")).await.unwrap();
    assert_eq!(rows(client).await.len(), 5);
    assert_eq!(text(client, "#count-pending").await, "5");
    no_script_ran(client).await;
    if let Some(path) = std::env::var_os("ADMIN_SCREENSHOT") {
        std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    }

    // A filter narrows them: the one email sent to localhost.
    client
        .find(Locator::Css("input[name=host]"))
        .await
        .unwrap()
        .send_keys("localhost")
        .await
        .unwrap();
    click(client, Locator::Css("#filters button")).await;
    until_at(client, &incident.url("?state=&reason=&host=localhost")).await;
    assert_eq!(rows(client).await, [format!("entry-{barbara}")]);

    // "Replay" on one sends it once, and the page shows it replayed.
    client.goto(&incident.url("")).await.unwrap();
    click_in_row(client, ada, "Replay").await;
    assert_eq!(
        text(client, &format!("#outcome-{ada} .state")).await,
        "replayed (201 Created)"
    );
    assert_eq!(incident.effects.of("k-1"), 1);
    assert_eq!(incident.effects.total(), 1, "only that one was sent");
    click(client, Locator::Css("#back")).await;
    assert_eq!(
        text(client, &format!("#entry-{ada} .state")).await,
        "replayed (201 Created)"
    );
    assert_eq!(text(client, "#count-replayed").await, "1");

    // "Discard" takes one out of the pending ones, without sending it.
    click_in_row(client, grace, "Discard").await;
    assert_eq!(
        text(client, &format!("#outcome-{grace} .state")).await,
        "discarded"
    );
    client.goto(&incident.url("?state=pending")).await.unwrap();
    let pending = rows(client).await;
    assert_eq!(pending.len(), 3);
    assert!(!pending.contains(&format!("entry-{grace}")));
    assert_eq!(state_of(&incident, 1).await, StateKind::Discarded);
    assert_eq!(incident.effects.of("k-2"), 0);

    // Markup in the hostile entry is shown as text, and none of it ran.
    client
        .goto(&incident.url(&format!("/entries/{hostile}")))
        .await
        .unwrap();
    assert_eq!(text(client, "#body").await, HOSTILE);
    assert!(text(client, "#headers").await.contains(HOSTILE));
    assert!(
        text(client, "td.uri")
            .await
            .contains("\"onmouseover='window.__pwned=3'")
    );
    assert!(
        client
            .find_all(Locator::Css("img"))
            .await
            .unwrap()
            .is_empty()
    );
    let source = client.source().await.unwrap();
    assert!(!source.contains("<script"), "{source}");
    no_script_ran(client).await;

    // A form on another site, posting to the replay and discard actions,
    // is refused with 403 and changes nothing.
    let admin = incident.admin;
    let forms = format!(
        "<!doctype html><form id=replay method=post action='{}'><button>win</button></form>\
         <form id=discard method=post action='{}'><button>win</button></form>",
        incident.url(&format!("/entries/{barbara}/replay")),
        incident.url(&format!("/entries/{barbara}/discard")),
    );
    let evil = serve(Router::new().route("/", get(move || async move { Html(forms) }))).await;
    for form in ["replay", "discard"] {
        // `localhost` is another site than `127.0.0.1`.
        client
            .goto(&format!("http://localhost:{}/", evil.port()))
            .await
            .unwrap();
        click(client, Locator::Css(&format!("#{form} button"))).await;
        until_at(client, &format!("http://{admin}/")).await;
        let answer = text(client, "body").await;
        assert!(
            answer.contains("cross-site request refused"),
            "{form}: {answer}"
        );
    }
    assert_eq!(state_of(&incident, 3).await, StateKind::Pending);
    assert_eq!(incident.effects.of("k-4"), 0);

    browser.stop().await;
}
