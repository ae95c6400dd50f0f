//! A real incident for the admin page's tests: a mail API that is down
//! while a client behind `RetryLayer::dead_letters` sends five requests, so
//! a SQLite queue holds five real dead letters; then the API is back, and
//! the admin router (nested under [`PREFIX`]) serves the queue on
//! 127.0.0.1:0, replaying through a plain client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_reissue::dead_letter::{
    DeadLetterId, DeadLetterQueue, PageQuery, Replayer, SqliteQueue, admin,
};
use tower_reissue::{Backoff, ReplayBody, RetryLayer};

/// Where the host app mounts the admin router.
pub const PREFIX: &str = "/ops/dead-letters";

/// Markup that would run if the page did not escape it.
pub const HOSTILE: &str =
    r#"<script>window.__pwned = 1</script>"><img src=x onerror="window.__pwned = 2">"#;

/// The most hostile path `http::Uri` lets through.
pub const HOSTILE_PATH: &str = "/emails/\"onmouseover='window.__pwned=3'&amp;?note=%3Cscript%3E";

/// What the mail API did: effects per idempotency key, once it was back.
#[derive(Clone, Default)]
pub struct Effects {
    down: Arc<AtomicBool>,
    by_key: Arc<Mutex<HashMap<String, usize>>>,
}

impl Effects {
    pub fn of(&self, key: &str) -> usize {
        self.by_key.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.by_key.lock().unwrap().values().sum()
    }
}

async fn mail(State(effects): State<Effects>, request: Request) -> StatusCode {
    if effects.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    *effects.by_key.lock().unwrap().entry(key).or_default() += 1;
    StatusCode::CREATED
}

pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The incident's queue, the five dead letters' ids (three emails to
/// `127.0.0.1`, one to `localhost`, one hostile), and the servers.
pub struct Incident {
    pub queue: SqliteQueue,
    pub ids: Vec<DeadLetterId>,
    pub effects: Effects,
    /// The host app serving the admin router under [`PREFIX`].
    pub admin: SocketAddr,
    pub api: SocketAddr,
}

impl Incident {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{PREFIX}{path}", self.admin)
    }
}

fn fresh_file(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "admin-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub async fn incident() -> Incident {
    let effects = Effects::default();
    effects.down.store(true, Ordering::SeqCst);
    let api = serve(Router::new().fallback(mail).with_state(effects.clone())).await;
    let queue = SqliteQueue::open(fresh_file("dead-letters.sqlite"))
        .await
        .unwrap();

    let client = RetryLayer::new()
        .max_attempts(2)
        .no_budget()
        .backoff(Backoff::fixed(Duration::from_millis(5)))
        .dead_letters(queue.clone())
        .layer(
            Client::builder(TokioExecutor::new())
                .build::<_, ReplayBody<Full<Bytes>>>(HttpConnector::new()),
        );
    let port = api.port();
    let sends = [
        (
            format!("http://127.0.0.1:{port}/emails"),
            "k-1",
            "{\"to\":\"ada\"}",
            None,
        ),
        (
            format!("http://127.0.0.1:{port}/emails"),
            "k-2",
            "{\"to\":\"grace\"}",
            None,
        ),
        (
            format!("http://127.0.0.1:{port}/emails"),
            "k-3",
            "{\"to\":\"edsger\"}",
            None,
        ),
        (
            format!("http://localhost:{port}/emails"),
            "k-4",
            "{\"to\":\"barbara\"}",
            None,
        ),
        (
            // `http::Uri` refuses `<` and `>`, so a URI can carry only the
            // quotes and `&` of an attribute injection.
            format!("http://127.0.0.1:{port}{HOSTILE_PATH}"),
            "k-5",
            HOSTILE,
            Some(HOSTILE),
        ),
    ];
    for (uri, key, body, note) in sends {
        let mut request = http::Request::post(uri)
            .header("idempotency-key", key)
            .header("content-type", "application/json");
        if let Some(note) = note {
            request = request.header("x-note", note);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let answer = client.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    // The layer parks on a task of its own; wait for all five.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let page = queue.page(&PageQuery::new(10)).await.unwrap();
        if page.entries.len() == 5 {
            break page.entries.iter().map(|e| e.id).collect::<Vec<_>>();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead letters never landed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(effects.total(), 0, "nothing got through the outage");
    effects.down.store(false, Ordering::SeqCst);

    let replay_client =
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(HttpConnector::new());
    let replayer = Replayer::new(queue.clone(), replay_client);
    let host_app = Router::new().nest(PREFIX, admin::router(queue.clone(), replayer));
    let admin = serve(host_app).await;
    Incident {
        queue,
        ids,
        effects,
        admin,
        api,
    }
}
