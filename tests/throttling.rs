//! Throttling is not failure: 429s (and 503s that say when to come back)
//! retry on their own backoff and at a lower budget cost, over real HTTP on
//! loopback with tokio's paused clock; and a pushback header that is not
//! understood never shortens the delay nor changes the verdict.

mod common;

use bytes::Bytes;
use common::{Reply, TestServer};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_reissue::retry::GiveUpReason;
use tower_reissue::{Attempts, Backoff, ReplayBody, RetryBudget, RetryLayer, Verdict};

type EmptyClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Empty<Bytes>>,
>;

/// The delays of the tests: distinct, so that the wrong one shows.
const TRANSIENT: Duration = Duration::from_millis(300);
const THROTTLED: Duration = Duration::from_millis(700);

/// A layer whose delays are fixed: 300 ms after a failure, 700 ms after
/// throttling.
fn fixed_layer() -> RetryLayer {
    RetryLayer::new()
        .backoff(Backoff::fixed(TRANSIENT))
        .throttle_backoff(Backoff::fixed(THROTTLED))
}

async fn send(layer: &RetryLayer, method: Method, url: &str) -> Response<Incoming> {
    let client: EmptyClient = common::client();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .unwrap();
    layer.layer(client).oneshot(request).await.unwrap()
}

fn attempts(response: &Response<Incoming>) -> u32 {
    response.extensions().get::<Attempts>().unwrap().get()
}

/// The gaps between the attempts the server received.
fn gaps(server: &TestServer) -> Vec<Duration> {
    let seen = server.seen();
    seen.windows(2).map(|w| w[1].at - w[0].at).collect()
}

/// `gap` is `expected`, give or take the timer's millisecond tick.
fn assert_gap(gap: Duration, expected: Duration) {
    assert!(
        gap >= expected && gap <= expected + Duration::from_millis(1),
        "{gap:?}, expected {expected:?}"
    );
}

/// The verdicts of the retries the layer made, and why it gave up.
#[derive(Default)]
struct Log {
    retried: Mutex<Vec<Verdict>>,
    gave_up: Mutex<Vec<GiveUpReason>>,
}

fn logged(layer: RetryLayer) -> (RetryLayer, Arc<Log>) {
    let log = Arc::new(Log::default());
    let (retries, give_ups) = (log.clone(), log.clone());
    let layer = layer
        .on_retry(move |event| retries.retried.lock().unwrap().push(event.verdict))
        .on_give_up(move |event| give_ups.gave_up.lock().unwrap().push(event.reason));
    (layer, log)
}

/// A budget whose balance comes only from deposits, and whose window
/// outlives the test: every withdrawal shows exactly.
fn exact_budget() -> RetryBudget {
    RetryBudget::builder()
        .ratio(0.2)
        .min_per_sec(0)
        .window(Duration::from_secs(600))
        .build()
}

#[tokio::test(start_paused = true)]
async fn throttling_and_failure_retry_on_their_own_delay_and_cost() {
    // At ratio 0.2 a logical request deposits a fifth of a retry after a
    // failure, and 14/25 of one after throttling (a fifth of 14/5). Fifteen
    // requests' worth (14 deposited here, one by the request itself) pays
    // for 3 retries after failures (15/5), or 8 after throttling (15 * 14/25
    // = 8.4).
    for (status, method, backoff, retries) in [
        (500, Method::GET, TRANSIENT, 3),
        (429, Method::POST, THROTTLED, 8),
    ] {
        let budget = exact_budget();
        for _ in 0..14 {
            budget.deposit();
        }
        assert_eq!((budget.available(), budget.available_throttled()), (2, 7));
        let server = TestServer::always(status).await;
        let (layer, log) = logged(fixed_layer().max_attempts(100).budget(budget.clone()));
        let started = Instant::now();
        let response = send(&layer, method.clone(), &server.url("/")).await;

        assert_eq!(response.status().as_u16(), status);
        assert_eq!(attempts(&response), 1 + retries, "{method} {status}");
        assert_eq!(server.count() as u32, 1 + retries);
        for gap in gaps(&server) {
            assert_gap(gap, backoff);
        }
        assert!(started.elapsed() >= backoff * retries);
        let throttled = status == 429;
        assert!(
            log.retried
                .lock()
                .unwrap()
                .iter()
                .all(|v| v.is_throttled() == throttled)
        );
        assert_eq!(
            *log.gave_up.lock().unwrap(),
            vec![GiveUpReason::BudgetExhausted]
        );
        // What is left is less than one more retry of either kind.
        assert_eq!((budget.available(), budget.available_throttled()), (0, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_503_that_says_when_to_come_back_is_throttling() {
    // On a POST: throttling means the server did no work, so it is repeated,
    // after the server's delay (plus at most a tenth of it).
    let server = TestServer::fails_first(1, || Reply::with_header(503, "retry-after", "2")).await;
    let (layer, log) = logged(fixed_layer());
    let response = send(&layer, Method::POST, &server.url("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    let gap = gaps(&server)[0];
    assert!(
        gap >= Duration::from_secs(2) && gap <= Duration::from_millis(2201),
        "{gap:?}"
    );
    assert_eq!(
        *log.retried.lock().unwrap(),
        vec![Verdict::throttled(Some(Duration::from_secs(2)))]
    );

    // A 429 with a delay is throttled with that delay, shorter than the
    // throttling backoff or not: the server knows when its limit lifts.
    let server =
        TestServer::fails_first(1, || Reply::with_header(429, "retry-after-ms", "40")).await;
    let response = send(&fixed_layer(), Method::POST, &server.url("/")).await;
    assert_eq!(attempts(&response), 2);
    let gap = gaps(&server)[0];
    assert!(
        gap >= Duration::from_millis(40) && gap <= Duration::from_millis(45),
        "{gap:?}"
    );

    // A bare 503 may come from a server that failed mid-request: a POST is
    // not repeated, a GET is, on the transient backoff.
    let server = TestServer::fails_first(1, || Reply::status(503)).await;
    let (layer, log) = logged(fixed_layer());
    let response = send(&layer, Method::POST, &server.url("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(*log.gave_up.lock().unwrap(), vec![GiveUpReason::NotSafe]);
    let server = TestServer::fails_first(1, || Reply::status(503)).await;
    let response = send(&fixed_layer(), Method::GET, &server.url("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_gap(gaps(&server)[0], TRANSIENT);
}

#[tokio::test(start_paused = true)]
async fn pushback_not_understood_counts_as_absent() {
    for (status, header, value) in [
        (503, "retry-after", "soon"),
        (503, "retry-after-ms", "-5"),
        (503, "x-should-retry", "garbage"),
        (429, "retry-after", "-1"),
        (429, "retry-after-ms", "-5"),
        (429, "retry-after-ms", "1e3"),
        (429, "x-should-retry", "maybe"),
    ] {
        let (layer, log) = logged(fixed_layer());
        let answer = move |n: usize, _: common::Seen| async move {
            if n == 1 {
                Reply::with_header(status, header, value)
            } else {
                Reply::status(200)
            }
        };
        // A 503 stays a failure: a POST is not repeated ...
        let server = TestServer::start(answer).await;
        let response = send(&layer, Method::POST, &server.url("/")).await;
        if status == 503 {
            assert_eq!(response.status().as_u16(), 503, "{header}: {value}");
            assert_eq!(*log.gave_up.lock().unwrap(), vec![GiveUpReason::NotSafe]);
            // ... and a GET waits the transient backoff.
            let server = TestServer::start(answer).await;
            let response = send(&layer, Method::GET, &server.url("/")).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_gap(gaps(&server)[0], TRANSIENT);
        } else {
            // A 429 is throttling, and waits the throttling backoff.
            assert_eq!(response.status(), StatusCode::OK, "{header}: {value}");
            assert_gap(gaps(&server)[0], THROTTLED);
            assert_eq!(*log.retried.lock().unwrap(), vec![Verdict::throttled(None)]);
        }
    }
}

#[test]
fn the_default_classifier_tells_throttling_from_failure() {
    use http::{HeaderMap, HeaderValue};
    use tower_reissue::classify::{Outcome, RequestView};
    use tower_reissue::{Classifier, DefaultClassifier, Processed};

    fn verdict(classifier: &DefaultClassifier, status: u16, headers: &[(&str, &str)]) -> Verdict {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (method, uri, request_headers) =
            (Method::POST, Uri::from_static("/"), HeaderMap::new());
        let request = RequestView::new(&method, &uri, &request_headers);
        let status = StatusCode::from_u16(status).unwrap();
        classifier.classify(
            &request,
            &Outcome::Response {
                status,
                headers: &map,
            },
        )
    }
    let secs = |n| Some(Duration::from_secs(n));
    let c = DefaultClassifier::new();
    let maybe = Verdict::transient(Processed::Maybe);

    assert_eq!(verdict(&c, 429, &[]), Verdict::throttled(None));
    assert_eq!(
        verdict(&c, 429, &[("retry-after", "3")]),
        Verdict::throttled(secs(3))
    );
    assert_eq!(
        verdict(&c, 429, &[("x-should-retry", "true")]),
        Verdict::throttled(None)
    );
    assert_eq!(
        verdict(&c, 429, &[("x-should-retry", "false")]),
        Verdict::Permanent
    );
    assert_eq!(verdict(&c, 503, &[]), maybe);
    assert_eq!(
        verdict(&c, 503, &[("retry-after", "3")]),
        Verdict::throttled(secs(3))
    );
    assert_eq!(
        verdict(&c, 503, &[("retry-after-ms", "1500")]),
        Verdict::throttled(Some(Duration::from_millis(1500)))
    );
    // Only a 503 that says when: other failures keep their verdict.
    assert_eq!(
        verdict(&c, 500, &[("retry-after", "3")]),
        maybe.with_retry_after(secs(3))
    );
    assert_eq!(
        verdict(&c, 502, &[("retry-after", "3")]),
        maybe.with_retry_after(secs(3))
    );
    // A delay not understood does not make a 503 throttling.
    for (name, value) in [
        ("retry-after", "soon"),
        ("retry-after-ms", "-5"),
        ("retry-after", "-5"),
    ] {
        assert_eq!(verdict(&c, 503, &[(name, value)]), maybe, "{name}: {value}");
    }
    // A rule of the user's for 503 is left as it is.
    let failure = DefaultClassifier::new().retry_status(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        verdict(&failure, 503, &[("retry-after", "3")]),
        maybe.with_retry_after(secs(3))
    );
    // A vendor's rate-limit status, with its delay.
    let vendor = DefaultClassifier::new().throttle_status(StatusCode::from_u16(420).unwrap());
    assert_eq!(verdict(&vendor, 420, &[]), Verdict::throttled(None));
    assert_eq!(
        verdict(&vendor, 420, &[("retry-after", "3")]),
        Verdict::throttled(secs(3))
    );
    assert_eq!(
        verdict(&c, 420, &[("retry-after", "3")]),
        Verdict::Permanent
    );
}

/// Sends `requests` logical requests, evenly over `over` of paused-clock
/// time, to a server answering `status` to everything; returns the attempts
/// it received, how many requests the budget stopped, and how long it all
/// took.
async fn outage(
    layer: RetryLayer,
    status: u16,
    method: Method,
    requests: u64,
    over: Duration,
) -> (u64, u64, Duration) {
    let server = TestServer::always(status).await;
    let refusals = Arc::new(AtomicU64::new(0));
    let counter = refusals.clone();
    let layer = layer.on_give_up(move |event| {
        if event.reason == GiveUpReason::BudgetExhausted {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let client: EmptyClient = common::client();
    let service = layer.layer(client);
    let url: Uri = server.url("/items").parse().unwrap();
    let gap = over / requests as u32;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let (service, url, method) = (service.clone(), url.clone(), method.clone());
        tasks.spawn(async move {
            let request = Request::builder()
                .method(method)
                .uri(url)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.status().as_u16(), status);
        });
        tokio::time::sleep(gap).await;
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    (
        server.count() as u64,
        refusals.load(Ordering::Relaxed),
        started.elapsed(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_total_outage_stays_within_the_budget_cap() {
    const REQUESTS: u64 = 2_000;
    const RATIO: f64 = 0.2;
    const COST: f64 = 5.0 / 14.0;
    let over = Duration::from_secs(60);
    // Short delays keep every retry of a request inside the 10 s window of
    // the deposit that pays for it, and 10 attempts leave the budget to
    // decide.
    let short = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(100));
    let layer = || {
        RetryLayer::new()
            .max_attempts(10)
            .backoff(short)
            .throttle_backoff(short)
    };
    // The floor's share of retries after failures: 10 retries/s for as long
    // as the outage lasted, plus the window's worth held in reserve when it
    // started.
    let floor_share = |took: Duration| 10.0 * (took.as_secs_f64() + 10.0) / REQUESTS as f64;

    for (status, method, cost) in [(500, Method::GET, 1.0), (429, Method::POST, COST)] {
        let no_floor = RetryBudget::builder().min_per_sec(0).build();
        let (attempts, refused, _) = outage(
            layer().budget(no_floor),
            status,
            method.clone(),
            REQUESTS,
            over,
        )
        .await;
        let per_request = attempts as f64 / REQUESTS as f64;
        let bound = 1.0 + RATIO / cost;
        println!(
            "total outage of {status}s, ratio 0.2, no floor: {attempts} attempts for {REQUESTS} \
             requests = {per_request:.3}x (bound 1 + 0.2 / {cost:.4} = {bound:.3}x); \
             {refused} requests stopped by the budget"
        );
        assert!(per_request <= bound, "{status}: {per_request} > {bound}");
        // And the budget is what stops it, at its cost: a 429 charged like a
        // failure would stop near 1.2x.
        assert!(
            per_request > bound - 0.05,
            "{status}: {per_request} well under {bound}"
        );
        assert!(refused > 0, "{status}: the budget never refused a retry");

        let (attempts, refused, took) = outage(
            layer().budget(RetryBudget::default()),
            status,
            method.clone(),
            REQUESTS,
            over,
        )
        .await;
        let per_request = attempts as f64 / REQUESTS as f64;
        let bound = 1.0 + (RATIO + floor_share(took)) / cost;
        println!(
            "total outage of {status}s, default budget (ratio 0.2, floor 10/s): {attempts} \
             attempts for {REQUESTS} requests = {per_request:.3}x (bound {bound:.3}x); \
             {refused} requests stopped by the budget"
        );
        assert!(per_request <= bound, "{status}: {per_request} > {bound}");
        assert!(refused > 0, "{status}: the budget never refused a retry");
    }

    // With the defaults throughout (throttling backoff 1 s base, 10 s cap)
    // retries spill past the deposits' window; the budget holds all the same.
    let (attempts, _, took) = outage(
        RetryLayer::new().max_attempts(10),
        429,
        Method::POST,
        REQUESTS,
        over,
    )
    .await;
    let per_request = attempts as f64 / REQUESTS as f64;
    let bound = 1.0 + (RATIO + floor_share(took)) / COST;
    println!(
        "total outage of 429s, every default but max_attempts 10: {attempts} attempts for \
         {REQUESTS} requests over {took:?} = {per_request:.3}x (bound {bound:.3}x)"
    );
    assert!(per_request <= bound, "{per_request} > {bound}");
    // And a throttled retry is priced as such: charged like a failure, the
    // retries would stop at the failure-priced share.
    let failure_priced = 1.0 + RATIO + floor_share(took);
    assert!(
        per_request > failure_priced,
        "{per_request} <= {failure_priced}: 429s retried as failures, or not at all"
    );
}

/// Values a pushback header may carry that this crate does not understand:
/// negative numbers, fractions where whole seconds are due, words.
fn not_understood(header: &'static str) -> BoxedStrategy<String> {
    let negative = prop_oneof![
        (1u64..1_000_000).prop_map(|n| format!("-{n}")),
        (0u64..10_000, 0u64..1_000).prop_map(|(n, f)| format!("-{n}.{f}")),
        Just("-0".to_string()),
    ];
    // Printable ASCII with at least one character no number has.
    let words = "[ -~]{0,12}[a-zA-Z!#$%&*+,/:;<=>?@_|~-][ -~]{0,12}";
    match header {
        "x-should-retry" | "stripe-should-retry" => prop_oneof![negative, words]
            .prop_filter("true and false are understood", |v| {
                let v = v.trim();
                !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false")
            })
            .boxed(),
        "retry-after" => prop_oneof![
            negative,
            (0u64..10_000, 1u64..1_000).prop_map(|(n, f)| format!("{n}.{f}")),
            words,
        ]
        .prop_filter("an HTTP-date is understood", |v| {
            httpdate::parse_http_date(v.trim()).is_err()
        })
        .boxed(),
        _ => prop_oneof![
            negative,
            words,
            Just("1.2.3".to_string()),
            Just(".".to_string()),
        ]
        .boxed(),
    }
}

fn pushback() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        Just("x-should-retry"),
        Just("stripe-should-retry"),
        Just("retry-after-ms"),
        Just("retry-after"),
    ]
    .prop_flat_map(|header| (Just(header), not_understood(header)))
}

/// One request answered first with `status` (and the header, if any), then
/// 200: the attempts it took and the gap before the retry, if one was made.
fn first_gap(
    status: u16,
    method: Method,
    header: Option<(&'static str, String)>,
) -> (u32, Option<Duration>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = TestServer::start(move |n, _| {
            let header = header.clone();
            async move {
                match (n, header) {
                    (1, Some((name, value))) => Reply::with_header(status, name, &value),
                    (1, None) => Reply::status(status),
                    _ => Reply::status(200),
                }
            }
        })
        .await;
        let response = send(&fixed_layer(), method, &server.url("/")).await;
        (attempts(&response), gaps(&server).first().copied())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn pushback_not_understood_never_shortens_the_delay(
        status in prop_oneof![Just(429u16), Just(503), Just(500), Just(400)],
        post: bool,
        (header, value) in pushback(),
    ) {
        let method = if post { Method::POST } else { Method::GET };
        let (attempts, gap) = first_gap(status, method.clone(), Some((header, value.clone())));
        let (attempts_without, gap_without) = first_gap(status, method.clone(), None);
        // The same verdict as without the header: retried or not alike ...
        prop_assert_eq!(attempts, attempts_without, "{} {} {}: {:?}", method, status, header, value);
        if let (Some(gap), Some(gap_without)) = (gap, gap_without) {
            // ... after the same fixed backoff, never sooner.
            let backoff = if status == 429 { THROTTLED } else { TRANSIENT };
            prop_assert!(gap >= backoff, "{} {} {}: {:?}: {:?}", method, status, header, value, gap);
            prop_assert!(gap <= gap_without + Duration::from_millis(1), "{:?} vs {:?}", gap, gap_without);
        }
    }
}
