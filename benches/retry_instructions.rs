//! A fixed number of success-path requests through each retry layer and its
//! peers (no tracing subscriber, no metrics recorder), for instruction counts
//! under callgrind, where timings are too noisy:
//!
//! ```text
//! benches/instructions.sh retry_instructions
//! ```
//!
//! runs each mode twice under callgrind (`MODE 1000` and `MODE 11000`); the
//! difference of the two totals over 10,000 is the cost of one request,
//! without the fixed cost of starting the process and the runtime.
//! `--list` prints the modes, each with the peer it is compared with.
//!
//! GET: an empty body, the inner service answers 200 at once. POST: a 1 KiB
//! `Full` body that the inner service reads to the end before answering.
//! `minimal_*` are the same requests through `Minimal`, the least a retry layer
//! does on the success path (`retry_peers/mod.rs` says what that is): what
//! no retry layer keeping the design's contract can cost less than.

mod retry_peers;

use http::Request;
use std::hint::black_box;
use tower::{Layer, Service, ServiceExt};
use tower_reissue::RetryLayer;

use retry_peers::{
    Minimal, TowerPolicy, get_request, post_request, reading_upstream, tower_resilience, upstream,
};

/// `MODE [BASELINE]`, baselines first.
const MODES: &[(&str, Option<&str>)] = &[
    ("bare_get", None),
    ("tower_retry_get", None),
    ("tower_resilience_get", Some("tower_retry_get")),
    ("tower_reissue_get", Some("tower_retry_get")),
    ("minimal_get", Some("tower_retry_get")),
    ("bare_post", None),
    ("tower_retry_post", None),
    ("tower_reissue_post", Some("tower_retry_post")),
    ("minimal_post", Some("tower_retry_post")),
];

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the request count.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for (mode, baseline) in MODES {
            println!("{mode} {}", baseline.unwrap_or_default());
        }
        return;
    }
    let requests: u64 = args.iter().find_map(|arg| arg.parse().ok()).unwrap_or(1000);
    let mode = args
        .iter()
        .find(|arg| !arg.starts_with("--") && arg.parse::<u64>().is_err())
        .map_or("tower_reissue_get", String::as_str);
    match mode {
        "bare_get" => run(upstream(), get_request, requests),
        "tower_retry_get" => run(
            tower::retry::RetryLayer::new(TowerPolicy::new()).layer(upstream()),
            get_request,
            requests,
        ),
        "tower_resilience_get" => run(tower_resilience().layer(upstream()), get_request, requests),
        "tower_reissue_get" => run(RetryLayer::new().layer(upstream()), get_request, requests),
        "minimal_get" => run(Minimal::new(upstream()), get_request, requests),
        "minimal_post" => run(Minimal::new(reading_upstream()), post_request, requests),
        "bare_post" => run(reading_upstream(), post_request, requests),
        "tower_retry_post" => run(
            tower::retry::RetryLayer::new(TowerPolicy::new()).layer(reading_upstream()),
            post_request,
            requests,
        ),
        "tower_reissue_post" => run(
            RetryLayer::new().layer(reading_upstream()),
            post_request,
            requests,
        ),
        other => {
            eprintln!("no mode {other}: `--list` prints the modes");
            std::process::exit(2);
        }
    }
}

/// `requests` requests made by `request`, one at a time, each through a
/// clone of `client` as a caller sharing it would.
fn run<S, B>(client: S, request: fn() -> Request<B>, requests: u64)
where
    S: Service<Request<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..requests {
            black_box(client.clone().oneshot(request()).await.unwrap());
        }
    });
}
