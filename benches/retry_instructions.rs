//! A fixed number of success-path requests through `Retry` (a GET whose inner
//! service answers 200 at once, no tracing subscriber, no metrics recorder),
//! for instruction counts under callgrind, where timings are too noisy:
//!
//! ```text
//! benches/instructions.sh retry_instructions
//! ```
//!
//! runs each mode twice under callgrind (`MODE 1000` and `MODE 11000`); the
//! difference of the two totals over 10,000 is the cost of one request,
//! without the fixed cost of starting the process and the runtime.
//! `--list` prints the modes.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use tower::{Layer, ServiceExt};
use tower_reissue::RetryLayer;

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the request count.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("tower_reissue_get");
        return;
    }
    let requests: u64 = args.iter().find_map(|arg| arg.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let upstream = tower::service_fn(|_req: Request<_>| {
        ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
    });
    let client = RetryLayer::new().layer(upstream);
    rt.block_on(async {
        for _ in 0..requests {
            let request = Request::get("http://api.example/items/42")
                .header("accept", "application/json")
                .body(Empty::<Bytes>::new())
                .unwrap();
            black_box(client.clone().oneshot(request).await.unwrap());
        }
    });
}
