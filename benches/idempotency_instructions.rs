//! A fixed number of requests through an axum handler, bare, behind
//! `IdempotencyLayer` (`MemoryStore`) and behind the peer `axum-idempotent`,
//! for instruction counts under callgrind, where timings are too noisy:
//!
//! ```text
//! benches/instructions.sh idempotency_instructions
//! ```
//!
//! runs each mode twice under callgrind (`MODE 1000` and `MODE 11000`); the
//! difference of the two totals over 10,000 is the cost of one request,
//! without the fixed cost of starting the process and setting up the app.
//! `--list` prints the modes with the baseline they are compared with.
//!
//! The workload is the one of `benches/idempotency.rs`: the Router called in
//! process with `oneshot`, a JSON payload, the response body collected.
//! `new_keys` sends a fresh key per request (the handler runs and its result
//! is stored), `replay` one key again and again (the stored result answers).
//! `new_keys_many_clients` sends fresh keys from 1,000 clients taking turns,
//! each with its own `Authorization`, to a store filled beforehand: every
//! new key makes room, as on a busy server.
//! `minimal_*` run the same workloads behind `Minimal`, the least an idempotency
//! layer does (`common/server_app.rs` says what it leaves out): what no
//! layer keeping the contract can cost less than.
//! What axum-idempotent needs to run is described in `common/server_app.rs`.

#[path = "common/server_app.rs"]
mod server_app;

use std::hint::black_box;

use axum::Router;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use tower::ServiceExt;

// Each layer is compared with the bare handler receiving the same requests:
// `bare_new_keys` and `bare_replay` send the keys the keyed modes send (the
// bare handler ignores them), so that making a key and its header, which is
// the client's work, is not counted as the layer's.
const MODES: [(&str, &str); 12] = [
    ("bare", ""),
    ("bare_new_keys", ""),
    ("bare_replay", ""),
    ("tower_reissue_no_key", "bare"),
    ("tower_reissue_new_keys", "bare_new_keys"),
    ("tower_reissue_replay", "bare_replay"),
    ("axum_idempotent_new_keys", "bare_new_keys"),
    ("axum_idempotent_replay", "bare_replay"),
    ("minimal_new_keys", "bare_new_keys"),
    ("minimal_replay", "bare_replay"),
    ("bare_new_keys_many_clients", ""),
    (
        "tower_reissue_new_keys_many_clients",
        "bare_new_keys_many_clients",
    ),
];

/// The clients of the `many_clients` modes, each with its own
/// `Authorization` (and so its own principal), taking turns.
const CLIENTS: u64 = 1_000;

fn main() {
    // `cargo bench` passes `--bench`; a bare word is the mode, a number the
    // request count.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for (mode, baseline) in MODES {
            println!("{mode} {baseline}");
        }
        return;
    }
    let requests: u64 = args.iter().find_map(|arg| arg.parse().ok()).unwrap_or(1000);
    let modes: Vec<&str> = match args.iter().find(|arg| MODES.iter().any(|(m, _)| m == arg)) {
        Some(mode) => vec![mode.as_str()],
        None => MODES.iter().map(|(mode, _)| *mode).collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for mode in modes {
        runtime.block_on(run(mode, requests));
    }
}

async fn run(mode: &str, requests: u64) {
    let (app, cookie, replayed_header) = match mode {
        "bare" | "bare_new_keys" | "bare_replay" | "bare_new_keys_many_clients" => {
            (server_app::bare(), None, None)
        }
        "axum_idempotent_new_keys" | "axum_idempotent_replay" => {
            let (app, cookie) = server_app::axum_idempotent().await;
            (
                app,
                Some(cookie),
                Some(HeaderName::from_static("idempotency-replayed")),
            )
        }
        "minimal_new_keys" | "minimal_replay" => (
            server_app::minimal(),
            None,
            Some(HeaderName::from_static("idempotent-replayed")),
        ),
        _ => (
            server_app::tower_reissue(),
            None,
            Some(HeaderName::from_static("idempotent-replayed")),
        ),
    };
    let cookie = cookie.as_ref();
    match mode {
        "bare" | "tower_reissue_no_key" => {
            for _ in 0..requests {
                call(&app, None, cookie, None).await;
            }
        }
        "bare_new_keys_many_clients" | "tower_reissue_new_keys_many_clients" => {
            let clients: Vec<HeaderValue> = (0..CLIENTS)
                .map(|i| HeaderValue::try_from(format!("Bearer client-{i}")).unwrap())
                .collect();
            // Set-up, the same in both run lengths: the store is filled, as a
            // busy server's is, so that every measured key makes room.
            for i in 0..10_000 {
                let key = format!("fill-{i}");
                let client = &clients[(i % CLIENTS) as usize];
                call_as(&app, Some(&key), Some(client), None).await;
            }
            for i in 0..requests {
                let key = format!("key-{i}");
                let client = &clients[(i % CLIENTS) as usize];
                call_as(&app, Some(&key), Some(client), None).await;
            }
        }
        "bare_new_keys"
        | "tower_reissue_new_keys"
        | "axum_idempotent_new_keys"
        | "minimal_new_keys" => {
            for i in 0..requests {
                let key = format!("key-{i}");
                call(&app, Some(&key), cookie, None).await;
            }
        }
        _ => {
            call(&app, Some("replayed"), cookie, None).await;
            for _ in 0..requests {
                call(&app, Some("replayed"), cookie, replayed_header.as_ref()).await;
            }
        }
    }
}

/// One request; `replayed_header` names the header that must mark the answer
/// as a replay (a `HeaderName` made once, so that checking it costs the
/// bench's loop no parsing).
async fn call(
    app: &Router,
    key: Option<&str>,
    cookie: Option<&HeaderValue>,
    replayed_header: Option<&HeaderName>,
) {
    let request = server_app::request("/emails", key, cookie);
    send(app, request, replayed_header).await;
}

/// A request from the client `authorization` names.
async fn call_as(
    app: &Router,
    key: Option<&str>,
    authorization: Option<&HeaderValue>,
    replayed_header: Option<&HeaderName>,
) {
    let mut request = server_app::request("/emails", key, None);
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, authorization.clone());
    }
    send(app, request, replayed_header).await;
}

async fn send(
    app: &Router,
    request: http::Request<axum::body::Body>,
    replayed_header: Option<&HeaderName>,
) {
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(response.status().is_success());
    if let Some(name) = replayed_header {
        assert!(response.headers().contains_key(name), "not a replay");
    }
    black_box(response.into_body().collect().await.unwrap().to_bytes());
}
