//! RetryLayer and IdempotencyKeyLayer around `reqwest::Client`, against
//! loopback servers.
#![cfg(feature = "reqwest")]

mod common;

use bytes::Bytes;
use common::{Reply, TestServer, closed_port};
use http::StatusCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_reissue::retry::{GiveUpReason, NotReplayable};
use tower_reissue::{Attempts, Backoff, IdempotencyKey, IdempotencyKeyLayer, RetryLayer};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

type GiveUpLog = Arc<Mutex<Vec<(u32, GiveUpReason)>>>;

fn logged(layer: RetryLayer) -> (RetryLayer, GiveUpLog) {
    let log: GiveUpLog = Arc::default();
    let sink = log.clone();
    let layer = layer
        .backoff(Backoff::fixed(Duration::from_millis(50)))
        .on_give_up(move |e| sink.lock().unwrap().push((e.attempts, e.reason)));
    (layer, log)
}

fn post(url: &str) -> reqwest::Request {
    client()
        .post(url)
        .body("{\"to\":\"a@b.c\"}")
        .build()
        .unwrap()
}

fn attempts(response: &reqwest::Response) -> u32 {
    response.extensions().get::<Attempts>().unwrap().get()
}

#[tokio::test(start_paused = true)]
async fn email_case_keyless_post_is_not_retried_on_500() {
    let server = TestServer::always(500).await;
    let (layer, log) = logged(RetryLayer::new().max_attempts(10));
    let response = layer
        .layer(client())
        .oneshot(post(&server.url("/emails")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts(&response), 1);
    assert_eq!(server.count(), 1, "the email went out once");
    assert_eq!(*log.lock().unwrap(), vec![(1, GiveUpReason::NotSafe)]);
}

async fn unavailable_twice() -> TestServer {
    TestServer::start(|n, _| async move { Reply::status(if n <= 2 { 503 } else { 201 }) }).await
}

fn keys_seen(server: &TestServer) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|s| s.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect()
}

/// Sends one POST through `client` to a server answering 503 twice, and
/// checks that the three attempts carried the key the response reports.
async fn one_key_over_three_attempts<S>(client: S)
where
    S: tower::Service<
            reqwest::Request,
            Response = reqwest::Response,
            Error = tower_reissue::BoxError,
        >,
{
    let server = unavailable_twice().await;
    let response = client.oneshot(post(&server.url("/emails"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(attempts(&response), 3);
    let key = response
        .extensions()
        .get::<IdempotencyKey>()
        .unwrap()
        .as_str()
        .to_owned();
    assert_eq!(keys_seen(&server), vec![key; 3]);
}

#[tokio::test(start_paused = true)]
async fn keyed_post_is_retried_on_503_with_one_key_in_both_orders() {
    // IdempotencyKeyLayer -> RetryLayer -> reqwest::Client
    one_key_over_three_attempts(
        IdempotencyKeyLayer::new().layer(RetryLayer::new().layer(client())),
    )
    .await;
    // RetryLayer -> IdempotencyKeyLayer -> reqwest::Client
    one_key_over_three_attempts(
        RetryLayer::new().layer(IdempotencyKeyLayer::new().layer(client())),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn caller_keyed_post_is_retried_on_503() {
    let server = unavailable_twice().await;
    let request = client()
        .post(server.url("/charges"))
        .header("idempotency-key", "charge-7")
        .body("{}")
        .build()
        .unwrap();
    let response = RetryLayer::new()
        .layer(client())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(keys_seen(&server), vec!["charge-7"; 3]);
}

#[tokio::test(start_paused = true)]
async fn get_is_retried_on_connection_refused() {
    let (addr, _reserved) = closed_port();
    let (layer, log) = logged(RetryLayer::new().max_attempts(4));
    let retries = Arc::new(Mutex::new(Vec::new()));
    let sink = retries.clone();
    let layer = layer.on_retry(move |e| sink.lock().unwrap().push((e.attempt, e.verdict)));
    let request = client()
        .get(format!("http://{addr}/items"))
        .build()
        .unwrap();
    let error = layer.layer(client()).oneshot(request).await.unwrap_err();
    let error = error
        .downcast_ref::<reqwest::Error>()
        .expect("reqwest's own error");
    assert!(error.is_connect());
    let transparent = tower_reissue::Verdict::transient(tower_reissue::Processed::No);
    assert_eq!(
        *retries.lock().unwrap(),
        vec![(1, transparent), (2, transparent), (3, transparent)]
    );
    assert_eq!(*log.lock().unwrap(), vec![(4, GiveUpReason::MaxAttempts)]);
}

#[tokio::test(start_paused = true)]
async fn a_get_refused_then_served_succeeds() {
    // Nobody listens on the port at first; the server starts there once the
    // retry layer has seen the refusal and scheduled a retry.
    let (addr, reserved) = closed_port();
    let (refused_tx, mut refused) = tokio::sync::watch::channel(None);
    let (layer, log) = logged(RetryLayer::new());
    let layer = layer.on_retry(move |e| {
        refused_tx.send_replace(Some(e.verdict));
    });
    let request = client()
        .get(format!("http://{addr}/items"))
        .build()
        .unwrap();
    let call = tokio::spawn(layer.layer(client()).oneshot(request));

    refused.wait_for(Option::is_some).await.unwrap();
    let verdict = refused.borrow().unwrap();
    assert_eq!(
        verdict,
        tower_reissue::Verdict::transient(tower_reissue::Processed::No)
    );
    let listener = reserved.listen(16).unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"ok"),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts(&response), 2);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert!(log.lock().unwrap().is_empty());
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_once() {
    let server = TestServer::always(503).await;
    let (layer, log) = logged(RetryLayer::new());
    let chunks =
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"chunk"))]);
    let request = client()
        .put(server.url("/blobs/1"))
        .body(reqwest::Body::wrap_stream(chunks))
        .build()
        .unwrap();
    let response = layer.layer(client()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.count(), 1);
    assert_eq!(server.seen()[0].body, Bytes::from_static(b"chunk"));
    assert_eq!(
        *log.lock().unwrap(),
        vec![(1, GiveUpReason::NotReplayable(NotReplayable::Unclonable))]
    );
}
