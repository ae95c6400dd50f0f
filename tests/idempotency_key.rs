//! IdempotencyKeyLayer with RetryLayer over real HTTP, in both stacking
//! orders.

mod common;

use bytes::Bytes;
use common::{Reply, TestServer};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tower::{Layer, Service, ServiceExt};
use tower_reissue::{
    Attempts, BoxError, IdempotencyKey, IdempotencyKeyLayer, ReplayBody, RetryLayer,
};

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

#[derive(Clone, Copy, Debug)]
enum Order {
    /// IdempotencyKeyLayer -> RetryLayer -> client.
    KeyOutside,
    /// RetryLayer -> IdempotencyKeyLayer -> client.
    KeyInside,
}

const ORDERS: [Order; 2] = [Order::KeyOutside, Order::KeyInside];

/// A client stack in the given order, type-erased so both orders share the
/// test code.
fn stack(
    order: Order,
    keys: IdempotencyKeyLayer,
    retry: RetryLayer,
) -> tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Incoming>, BoxError> {
    let client: FullClient = common::client();
    match order {
        Order::KeyOutside => tower::util::BoxCloneService::new(keys.layer(retry.layer(client))),
        Order::KeyInside => tower::util::BoxCloneService::new(retry.layer(keys.layer(client))),
    }
}

/// A server that answers 500 to the first `failures` attempts carrying a
/// given key (or no key), then 201.
async fn flaky_per_key(header: &'static str, failures: usize) -> TestServer {
    let tries: Arc<Mutex<HashMap<Option<Bytes>, usize>>> = Arc::default();
    TestServer::start(move |_, seen| {
        let key = seen
            .headers
            .get(header)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let mut tries = tries.lock().unwrap();
        let n = tries.entry(key).or_default();
        *n += 1;
        let status = if *n <= failures { 500 } else { 201 };
        async move { Reply::status(status) }
    })
    .await
}

fn keys_seen(server: &TestServer, header: &str) -> Vec<String> {
    server
        .seen()
        .iter()
        .map(|s| {
            s.headers
                .get(header)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        })
        .collect()
}

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(b"{\"to\":\"a@b.c\"}")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_key_per_logical_post_in_both_orders() {
    for order in ORDERS {
        let server = flaky_per_key("idempotency-key", 2).await;
        let mut client = stack(order, IdempotencyKeyLayer::new(), RetryLayer::new());
        let mut returned = Vec::new();
        for _ in 0..3 {
            let response = client
                .ready()
                .await
                .unwrap()
                .call(post(&server.url("/emails")))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "{order:?}");
            assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
            returned.push(
                response
                    .extensions()
                    .get::<IdempotencyKey>()
                    .unwrap()
                    .clone(),
            );
        }
        let seen = keys_seen(&server, "idempotency-key");
        assert_eq!(seen.len(), 9, "{order:?}");
        for (logical, attempts) in seen.chunks(3).enumerate() {
            // Every attempt of one POST carries the key its response reports.
            assert_eq!(attempts[0].len(), 36, "{order:?}: a UUID");
            assert!(
                attempts.iter().all(|k| k == &attempts[0]),
                "{order:?}: {attempts:?}"
            );
            assert_eq!(returned[logical].as_str(), attempts[0]);
        }
        // ... and different POSTs have different keys.
        assert_ne!(seen[0], seen[3], "{order:?}");
        assert_ne!(seen[3], seen[6], "{order:?}");
        assert_ne!(seen[0], seen[6], "{order:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn post_answered_500_twice_then_201_succeeds_on_the_third_attempt() {
    for order in ORDERS {
        let server = flaky_per_key("idempotency-key", 2).await;
        let client = stack(order, IdempotencyKeyLayer::new(), RetryLayer::new());
        let response = client.oneshot(post(&server.url("/emails"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{order:?}");
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
        let key = response
            .extensions()
            .get::<IdempotencyKey>()
            .expect("key in the response");
        assert_eq!(keys_seen(&server, "idempotency-key"), vec![key.as_str(); 3]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_set_key_is_never_replaced() {
    for order in ORDERS {
        let server = flaky_per_key("idempotency-key", 2).await;
        let client = stack(order, IdempotencyKeyLayer::new(), RetryLayer::new());
        let mut request = post(&server.url("/emails"));
        request
            .headers_mut()
            .insert("idempotency-key", "order-42".parse().unwrap());
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{order:?}");
        assert_eq!(keys_seen(&server, "idempotency-key"), vec!["order-42"; 3]);
        assert_eq!(
            response
                .extensions()
                .get::<IdempotencyKey>()
                .unwrap()
                .as_str(),
            "order-42"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_set_key_extension_is_sent_as_the_header() {
    for order in ORDERS {
        let server = flaky_per_key("idempotency-key", 1).await;
        let client = stack(order, IdempotencyKeyLayer::new(), RetryLayer::new());
        let mut request = post(&server.url("/emails"));
        request
            .extensions_mut()
            .insert(IdempotencyKey::new("from-extension").unwrap());
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{order:?}");
        assert_eq!(
            keys_seen(&server, "idempotency-key"),
            vec!["from-extension"; 2]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_header_name_counts_as_keyed() {
    let header = HeaderName::from_static("x-request-key");
    for order in ORDERS {
        let server = flaky_per_key("x-request-key", 2).await;
        let keys = IdempotencyKeyLayer::new().header(header.clone()).uuid_v7();
        let client = stack(order, keys, RetryLayer::new());
        let response = client.oneshot(post(&server.url("/emails"))).await.unwrap();
        // Retried although the key is not in `Idempotency-Key`.
        assert_eq!(response.status(), StatusCode::CREATED, "{order:?}");
        let seen = keys_seen(&server, "x-request-key");
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|k| k == &seen[0]));
        let key = uuid::Uuid::parse_str(&seen[0]).unwrap();
        assert_eq!(key.get_version_num(), 7);
        assert!(
            server
                .seen()
                .iter()
                .all(|s| !s.headers.contains_key("idempotency-key"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn get_and_put_are_left_alone_unless_configured() {
    for order in ORDERS {
        let server = TestServer::always(200).await;
        let client = stack(order, IdempotencyKeyLayer::new(), RetryLayer::new());
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let request = Request::builder()
                .method(method)
                .uri(server.url("/items/1"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.clone().oneshot(request).await.unwrap();
            assert!(response.extensions().get::<IdempotencyKey>().is_none());
        }
        assert!(
            server
                .seen()
                .iter()
                .all(|s| !s.headers.contains_key("idempotency-key"))
        );

        let client = stack(
            order,
            IdempotencyKeyLayer::new().methods([Method::DELETE]),
            RetryLayer::new(),
        );
        let request = Request::delete(server.url("/items/1"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert!(response.extensions().get::<IdempotencyKey>().is_some());
        assert!(
            server
                .seen()
                .last()
                .unwrap()
                .headers
                .contains_key("idempotency-key")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_generator_is_called_once_per_logical_request() {
    for order in ORDERS {
        let server = flaky_per_key("idempotency-key", 1).await;
        let calls = Arc::new(Mutex::new(0u32));
        let counter = calls.clone();
        let keys = IdempotencyKeyLayer::new().generator(move || {
            let mut n = counter.lock().unwrap();
            *n += 1;
            IdempotencyKey::new(&format!("k-{n}")).unwrap()
        });
        let client = stack(order, keys, RetryLayer::new());
        for _ in 0..2 {
            let response = client
                .clone()
                .oneshot(post(&server.url("/x")))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        assert_eq!(*calls.lock().unwrap(), 2, "{order:?}");
        assert_eq!(
            keys_seen(&server, "idempotency-key"),
            ["k-1", "k-1", "k-2", "k-2"]
        );
    }
}
