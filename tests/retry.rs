//! RetryLayer over real HTTP on loopback, with tokio's paused clock.

mod common;

use bytes::Bytes;
use common::{ManualClock, Reply, TestServer, closed_port, until_seen};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_reissue::retry::{GiveUpReason, NotReplayable};
use tower_reissue::{Attempts, Backoff, BoxError, ReplayBody, RetryLayer};

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

/// Sends one request through a retry layer around a hyper-util client.
async fn send(
    layer: &RetryLayer,
    method: Method,
    url: &str,
    body: &'static str,
) -> Result<Response<Incoming>, BoxError> {
    let client: FullClient = common::client();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    layer.layer(client).oneshot(request).await
}

fn attempts(response: &Response<Incoming>) -> u32 {
    response
        .extensions()
        .get::<Attempts>()
        .expect("Attempts extension")
        .get()
}

/// (attempts, reason) of each give-up, as the hook reported them.
type GiveUpLog = Arc<Mutex<Vec<(u32, GiveUpReason)>>>;

/// Records give-up reasons through the hook.
fn give_up_log(layer: RetryLayer) -> (RetryLayer, GiveUpLog) {
    let log: GiveUpLog = Arc::default();
    let sink = log.clone();
    let layer =
        layer.on_give_up(move |event| sink.lock().unwrap().push((event.attempts, event.reason)));
    (layer, log)
}

#[tokio::test(start_paused = true)]
async fn email_case_post_without_key_is_sent_once() {
    // The server sends the email, then fails: a retry would send another.
    let emails = Arc::new(AtomicUsize::new(0));
    let sent = emails.clone();
    let server = TestServer::start(move |_, _| {
        sent.fetch_add(1, Ordering::SeqCst);
        async { Reply::status(500) }
    })
    .await;
    let (layer, gave_up) = give_up_log(RetryLayer::new().max_attempts(10));

    let response = send(
        &layer,
        Method::POST,
        &server.url("/emails"),
        "{\"to\":\"a@b.c\"}",
    )
    .await
    .unwrap();

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts(&response), 1);
    assert_eq!(server.count(), 1);
    assert_eq!(emails.load(Ordering::SeqCst), 1);
    assert_eq!(*gave_up.lock().unwrap(), vec![(1, GiveUpReason::NotSafe)]);
}

#[tokio::test(start_paused = true)]
async fn post_answered_429_is_retried() {
    let server = TestServer::start(|n, _| async move {
        if n == 1 {
            Reply::status(429)
        } else {
            Reply::status(201)
        }
    })
    .await;
    let response = send(
        &RetryLayer::new(),
        Method::POST,
        &server.url("/emails"),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(attempts(&response), 2);
    assert_eq!(server.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn post_to_a_closed_port_is_retried() {
    let (addr, _reserved) = closed_port();
    let retries = Arc::new(AtomicUsize::new(0));
    let counter = retries.clone();
    let (layer, gave_up) = give_up_log(RetryLayer::new().max_attempts(4).on_retry(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    let error = send(&layer, Method::POST, &format!("http://{addr}/emails"), "x")
        .await
        .unwrap_err();
    let legacy = error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .expect("the client's own error, unchanged");
    assert!(legacy.is_connect());
    assert_eq!(retries.load(Ordering::SeqCst), 3);
    assert_eq!(
        *gave_up.lock().unwrap(),
        vec![(4, GiveUpReason::MaxAttempts)]
    );
}

#[tokio::test(start_paused = true)]
async fn get_is_retried_on_transient_statuses_up_to_max_attempts() {
    for status in [500, 502, 503, 504, 408] {
        let server = TestServer::always(status).await;
        let (layer, gave_up) = give_up_log(RetryLayer::new());
        let response = send(&layer, Method::GET, &server.url("/items"), "")
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(attempts(&response), 3, "status {status}");
        assert_eq!(server.count(), 3, "status {status}");
        assert_eq!(
            *gave_up.lock().unwrap(),
            vec![(3, GiveUpReason::MaxAttempts)]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn get_recovers_after_transient_failures() {
    let server = TestServer::fails_first(2, || Reply::status(503)).await;
    let response = send(&RetryLayer::new(), Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_statuses_are_never_retried_for_any_method() {
    let permanent = [400, 401, 403, 404, 405, 409, 410, 413, 422, 418, 501, 505];
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
    ];
    for status in permanent {
        let server = TestServer::always(status).await;
        for method in methods.clone() {
            let (layer, gave_up) = give_up_log(RetryLayer::new().max_attempts(5));
            let response = send(&layer, method.clone(), &server.url("/"), "")
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(attempts(&response), 1, "{method} {status}");
            assert_eq!(*gave_up.lock().unwrap(), vec![(1, GiveUpReason::Permanent)]);
        }
        assert_eq!(server.count(), methods.len(), "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_post_is_retried_on_409_and_unkeyed_is_not() {
    // 409 to a keyed request: the first copy is still running on the server.
    let keyed_seen = Arc::new(AtomicUsize::new(0));
    let counter = keyed_seen.clone();
    let server = TestServer::start(move |_, seen| {
        let keyed = seen.headers.contains_key("idempotency-key");
        let n = if keyed {
            counter.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            0
        };
        async move {
            if keyed && n > 1 {
                Reply::status(201)
            } else {
                Reply::status(409)
            }
        }
    })
    .await;
    let unkeyed = send(&RetryLayer::new(), Method::POST, &server.url("/"), "x")
        .await
        .unwrap();
    assert_eq!(unkeyed.status(), StatusCode::CONFLICT);
    assert_eq!(attempts(&unkeyed), 1);

    let client: FullClient = common::client();
    let keyed = RetryLayer::new()
        .layer(client)
        .oneshot(
            Request::post(server.url("/"))
                .header("idempotency-key", "k-1")
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::CREATED);
    assert_eq!(attempts(&keyed), 2);
    assert_eq!(keyed_seen.load(Ordering::SeqCst), 2);
}

/// Answers the first request with `status` and the delay header `name`
/// (its value made when the answer is sent), the second with 200; returns
/// the time between the two attempts as the server saw them.
async fn gap_before_retry(
    method: Method,
    status: u16,
    name: &'static str,
    value: fn() -> String,
) -> Duration {
    let server = TestServer::start(move |n, _| async move {
        if n == 1 {
            Reply::with_header(status, name, &value())
        } else {
            Reply::status(200)
        }
    })
    .await;
    let response = send(&RetryLayer::new(), method, &server.url("/"), "x")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    let seen = server.seen();
    seen[1].at - seen[0].at
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_honoured() {
    let gap = gap_before_retry(Method::GET, 503, "retry-after", || "3".into()).await;
    // Retry-After plus at most a tenth of it in jitter (and the timer's
    // millisecond tick).
    assert!(
        gap >= Duration::from_secs(3) && gap <= Duration::from_millis(3301),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    let gap = gap_before_retry(Method::GET, 503, "retry-after", || {
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5))
    })
    .await;
    // An HTTP-date has one-second resolution: 4 to 5 s, plus up to 10%.
    assert!(
        gap > Duration::from_secs(4) && gap <= Duration::from_millis(5500),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_is_honoured() {
    // A POST: 429 means the server did not act, so it is retried too.
    let gap = gap_before_retry(Method::POST, 429, "retry-after-ms", || "1500".into()).await;
    assert!(
        gap >= Duration::from_millis(1500) && gap <= Duration::from_millis(1651),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_returns_at_once() {
    let server =
        TestServer::start(|_, _| async { Reply::with_header(503, "retry-after", "3600") }).await;
    let (layer, gave_up) = give_up_log(RetryLayer::new());
    let started = Instant::now();
    let response = send(&layer, Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "3600");
    assert_eq!(attempts(&response), 1);
    assert_eq!(server.count(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        *gave_up.lock().unwrap(),
        vec![(1, GiveUpReason::RetryAfterTooLong)]
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_retry_after_falls_back_to_the_backoff() {
    let server =
        TestServer::fails_first(1, || Reply::with_header(503, "retry-after", "in a while")).await;
    let layer = RetryLayer::new().backoff(Backoff::fixed(Duration::from_millis(250)));
    let response = send(&layer, Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.seen();
    let gap = seen[1].at - seen[0].at;
    // The fixed backoff, give or take the timer's millisecond tick.
    assert!(
        gap >= Duration::from_millis(250) && gap <= Duration::from_millis(251),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pushback_header_overrides_the_status() {
    let server =
        TestServer::start(|_, _| async { Reply::with_header(503, "x-should-retry", "false") })
            .await;
    let response = send(&RetryLayer::new(), Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(attempts(&response), 1);

    let server =
        TestServer::fails_first(1, || Reply::with_header(400, "stripe-should-retry", "true")).await;
    let response = send(&RetryLayer::new(), Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
}

#[tokio::test(start_paused = true)]
async fn no_sleep_crosses_the_deadline() {
    let server = TestServer::always(503).await;
    // Time moves only when the test says so, so the deadline cannot fire
    // while a loopback answer is in flight.
    let _clock = ManualClock::hold().await;
    // The test waits for the retry to be scheduled before it moves time.
    let (scheduled_tx, mut scheduled) = tokio::sync::watch::channel(0u32);
    let (layer, gave_up) = give_up_log(
        RetryLayer::new()
            .max_attempts(10)
            .backoff(Backoff::fixed(Duration::from_millis(1500)))
            .deadline(Duration::from_secs(2))
            .on_retry(move |event| {
                scheduled_tx.send_replace(event.attempt);
            }),
    );
    let url = server.url("/");
    let started = Instant::now();
    let call = tokio::spawn(async move {
        send(&layer, Method::GET, &url, "")
            .await
            .map(|r| (r.status(), attempts(&r)))
    });

    scheduled.wait_for(|attempt| *attempt == 1).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    // The retry is due at 1.5 s; nothing happens before. (Timers fire on
    // the next millisecond tick, hence the extra millisecond.)
    tokio::time::advance(Duration::from_millis(1499)).await;
    assert_eq!(server.count(), 1);
    tokio::time::advance(Duration::from_millis(2)).await;
    until_seen(&server, 2).await;
    // A third attempt would start at 3 s, past the deadline: the second
    // answer is handed back at once.
    let (status, made) = call.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(made, 2);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*gave_up.lock().unwrap(), vec![(2, GiveUpReason::Deadline)]);

    // A backoff longer than the whole deadline: the first answer comes back.
    let (layer, gave_up) = give_up_log(
        RetryLayer::new()
            .backoff(Backoff::fixed(Duration::from_secs(3)))
            .deadline(Duration::from_secs(2)),
    );
    let started = Instant::now();
    let response = send(&layer, Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(attempts(&response), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(*gave_up.lock().unwrap(), vec![(1, GiveUpReason::Deadline)]);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_fails_a_slow_attempt_and_retries() {
    // The first attempt hangs for a minute; the second answers at once.
    let server = TestServer::start(|n, _| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Reply::status(200)
    })
    .await;
    let _clock = ManualClock::hold().await;
    let layer = RetryLayer::new()
        .attempt_timeout(Duration::from_secs(1))
        .backoff(Backoff::none());
    let url = server.url("/");
    let call = tokio::spawn(async move {
        send(&layer, Method::GET, &url, "")
            .await
            .map(|r| attempts(&r))
    });
    until_seen(&server, 1).await;
    tokio::time::advance(Duration::from_millis(1001)).await;
    until_seen(&server, 2).await;
    assert_eq!(call.await.unwrap().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_an_attempt_in_flight() {
    let server = TestServer::start(|_, _| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Reply::status(200)
    })
    .await;
    let _clock = ManualClock::hold().await;
    let layer = RetryLayer::new().deadline(Duration::from_secs(2));
    let url = server.url("/");
    let call = tokio::spawn(async move {
        send(&layer, Method::GET, &url, "")
            .await
            .map(|r| r.status())
    });
    until_seen(&server, 1).await;
    tokio::time::advance(Duration::from_millis(2001)).await;
    let error = call.await.unwrap().unwrap_err();
    assert!(
        error.is::<tower_reissue::retry::DeadlineExceeded>(),
        "{error}"
    );
    assert_eq!(server.count(), 1);
}

/// A streamed body: its frames come one poll at a time, with no length known
/// in advance (so it goes out chunked).
struct Chunked(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A 10 KiB body in three chunks.
fn streamed_body(payload: &Bytes) -> Chunked {
    Chunked(
        [
            payload.slice(..3000),
            payload.slice(3000..7000),
            payload.slice(7000..),
        ]
        .into_iter()
        .collect(),
    )
}

#[tokio::test(start_paused = true)]
async fn streamed_body_is_replayed_byte_identical() {
    let payload: Bytes = (0..10 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let server = TestServer::fails_first(2, || Reply::status(503)).await;
    let client = common::client::<ReplayBody<Chunked>>();
    let request = Request::post(server.url("/upload"))
        .header("idempotency-key", "upload-1")
        .body(streamed_body(&payload))
        .unwrap();
    let response = RetryLayer::new()
        .layer(client)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 3);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for attempt in &seen {
        assert_eq!(attempt.body, payload);
        assert_eq!(attempt.headers["idempotency-key"], "upload-1");
    }
}

/// A body of known length in several frames, all ready at once: the retry
/// layer reads its first frame when it wraps it, and the first attempt must
/// still send every byte, framed by its length.
struct SizedChunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for SizedChunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

/// Bodies of known length, whole (`Full`) or in frames, reach the server
/// identical on every attempt, sent with their length rather than chunked.
#[tokio::test(start_paused = true)]
async fn bodies_of_known_length_are_replayed_byte_identical() {
    let payload: Bytes = (0..10 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let length = payload.len().to_string();

    let server = TestServer::fails_first(2, || Reply::status(503)).await;
    let request = Request::post(server.url("/upload"))
        .header("idempotency-key", "whole-1")
        .body(Full::new(payload.clone()))
        .unwrap();
    let response = RetryLayer::new()
        .layer(common::client::<ReplayBody<Full<Bytes>>>())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(attempts(&response), 3);

    let framed = TestServer::fails_first(2, || Reply::status(503)).await;
    let frames = [payload.slice(..3000), payload.slice(3000..)];
    let request = Request::post(framed.url("/upload"))
        .header("idempotency-key", "framed-1")
        .body(SizedChunks(frames.into_iter().collect()))
        .unwrap();
    let response = RetryLayer::new()
        .layer(common::client::<ReplayBody<SizedChunks>>())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(attempts(&response), 3);

    for server in [&server, &framed] {
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        for attempt in &seen {
            assert_eq!(attempt.body, payload);
            assert_eq!(attempt.headers["content-length"], length.as_str());
            assert!(!attempt.headers.contains_key("transfer-encoding"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn body_over_the_replay_limit_is_sent_once() {
    let payload: Bytes = vec![7u8; 10 * 1024].into();
    let server = TestServer::always(503).await;
    let client = common::client::<ReplayBody<Chunked>>();
    let (layer, gave_up) = give_up_log(RetryLayer::new().replay_limit(4096));
    let request = Request::put(server.url("/upload"))
        .body(streamed_body(&payload))
        .unwrap();
    let response = layer.layer(client).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts(&response), 1);
    assert_eq!(server.seen()[0].body, payload);
    assert_eq!(
        *gave_up.lock().unwrap(),
        vec![(
            1,
            GiveUpReason::NotReplayable(NotReplayable::TooLarge { limit: 4096 })
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn works_around_a_plain_service_fn() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |req: Request<ReplayBody<String>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            let status = if n < 3 { 502 } else { 200 };
            Ok::<_, BoxError>(Response::builder().status(status).body(body).unwrap())
        }
    });
    let response = RetryLayer::new()
        .layer(service)
        .oneshot(
            Request::put("http://x/items/1")
                .body(String::from("payload"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "payload");
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn proxies_an_incoming_body_with_replay() {
    // upstream fails the first attempt; the proxy forwards the client's
    // streaming body through the retry layer and replays it.
    let upstream = TestServer::fails_first(1, || Reply::status(503)).await;
    let upstream_url = upstream.url("/sink");
    let proxy = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let retry = RetryLayer::new().layer(common::client::<ReplayBody<Incoming>>());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (mut parts, body) = req.into_parts();
                parts.uri = upstream_url.parse().unwrap();
                parts
                    .extensions
                    .insert(tower_reissue::retry::Retryable::Yes);
                retry.clone().oneshot(Request::from_parts(parts, body))
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
                .unwrap();
        });
        addr
    };
    let payload = Bytes::from(vec![b'p'; 5000]);
    let response = common::client::<Full<Bytes>>()
        .request(
            Request::post(format!("http://{proxy}/"))
                .body(Full::new(payload.clone()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == payload));
}

#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_does_not_overflow_the_clock() {
    // The parser saturates a delay too long for u64 seconds; with the cap
    // lifted, the layer must wait "forever" rather than panic.
    let server = TestServer::fails_first(1, || {
        Reply::with_header(503, "retry-after", "99999999999999999999999")
    })
    .await;
    let layer = RetryLayer::new().max_retry_after(Duration::MAX);
    let response = send(&layer, Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);

    // With a deadline as absurd, the wait cannot fit before it: the answer
    // comes back at once.
    let server = TestServer::start(|_, _| async {
        Reply::with_header(503, "retry-after", "99999999999999999999999")
    })
    .await;
    let (layer, gave_up) = give_up_log(
        RetryLayer::new()
            .max_retry_after(Duration::MAX)
            .deadline(Duration::MAX),
    );
    let response = send(&layer, Method::GET, &server.url("/"), "")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts(&response), 1);
    assert_eq!(*gave_up.lock().unwrap(), vec![(1, GiveUpReason::Deadline)]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_hands_its_body_back_for_the_retry() {
    // The first attempt reads one chunk of the body and stalls; the
    // per-attempt timeout ends it, and the retry must still have the body.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |req: Request<ReplayBody<Chunked>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut body = req.into_body();
            if n == 1 {
                let _first_chunk = body.frame().await;
                std::future::pending::<()>().await;
            }
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::new(bytes))
        }
    });
    let payload: Bytes = (0..10 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let response = RetryLayer::new()
        .attempt_timeout(Duration::from_secs(1))
        .layer(service)
        .oneshot(
            Request::put("http://x/blob")
                .body(streamed_body(&payload))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(response.into_body(), payload);
}
