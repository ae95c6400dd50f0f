//! The per-attempt client spans and the server spans, exported through
//! `tracing-opentelemetry` into the OpenTelemetry SDK's in-memory exporter.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::{Reply, TestServer, closed_port};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{Layer, ServiceExt};
use tower_reissue::{Backoff, IdempotencyLayer, MemoryStore, ReplayBody, RetryLayer};
use tracing::Instrument;
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt;

/// Routes this thread's spans into an in-memory OTel exporter.
struct Exported {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

impl Exported {
    fn install() -> Exported {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("tests");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        let guard = tracing::subscriber::set_default(subscriber);
        Exported {
            exporter,
            _provider: provider,
            _guard: guard,
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    /// The client spans, in the order they started.
    fn attempts(&self) -> Vec<SpanData> {
        let mut spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.span_kind == SpanKind::Client)
            .collect();
        spans.sort_by_key(|s| s.start_time);
        spans
    }

    fn named(&self, name: &str) -> SpanData {
        self.spans()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span named {name}"))
    }
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::new(key.to_owned()))
        .map(|kv| kv.value.clone())
}

/// The retry layer's decisions among a span's events (the client's own
/// events, such as hyper-util's connection log, are there too).
fn events(span: &SpanData) -> Vec<String> {
    span.events
        .iter()
        .map(|e| e.name.to_string())
        .filter(|name| name == "retrying" || name == "giving up")
        .collect()
}

type FullClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ReplayBody<Full<Bytes>>,
>;

async fn get(layer: RetryLayer, url: &str) -> Result<StatusCode, tower_reissue::BoxError> {
    let client: FullClient = common::client();
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = layer
        .layer(client)
        .oneshot(request)
        .instrument(tracing::info_span!("caller"))
        .await?;
    Ok(response.status())
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_a_client_span_with_its_resend_count() {
    let otel = Exported::install();
    let server = TestServer::fails_first(2, || Reply::status(503)).await;
    let url = server.url("/items/7?view=full");
    let status = get(RetryLayer::new().backoff(Backoff::none()), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let caller = otel.named("caller");
    let attempts = otel.attempts();
    assert_eq!(attempts.len(), 3);
    let resend: Vec<_> = attempts
        .iter()
        .map(|s| attr(s, "http.request.resend_count"))
        .collect();
    assert_eq!(resend, [None, Some(Value::I64(1)), Some(Value::I64(2))]);
    let statuses: Vec<_> = attempts
        .iter()
        .map(|s| attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(
        statuses,
        [
            Some(Value::I64(503)),
            Some(Value::I64(503)),
            Some(Value::I64(200))
        ]
    );
    let error_types: Vec<_> = attempts.iter().map(|s| attr(s, "error.type")).collect();
    assert_eq!(error_types, [Some("503".into()), Some("503".into()), None]);
    for (n, span) in attempts.iter().enumerate() {
        assert_eq!(span.name, "GET");
        assert_eq!(
            span.parent_span_id,
            caller.span_context.span_id(),
            "attempt {n}"
        );
        assert_eq!(span.span_context.trace_id(), caller.span_context.trace_id());
        assert_eq!(attr(span, "http.request.method"), Some("GET".into()));
        assert_eq!(attr(span, "url.full"), Some(url.clone().into()));
        assert_eq!(attr(span, "server.address"), Some("127.0.0.1".into()));
        assert_eq!(
            attr(span, "server.port"),
            Some(Value::I64(server.addr.port().into()))
        );
        // The client's own events happen inside the attempt's span.
        assert!(
            span.events.iter().any(|e| e.attributes.iter().any(
                |kv| kv.key.as_str() == "target" && kv.value.as_str().starts_with("hyper_util")
            )),
            "{:?}",
            span.events
        );
    }
    assert!(matches!(attempts[0].status, Status::Error { .. }));
    assert_eq!(attempts[2].status, Status::Unset);
    // Each retry decision is an event of the attempt it follows.
    assert_eq!(events(&attempts[0]), ["retrying"]);
    assert_eq!(events(&attempts[1]), ["retrying"]);
    assert!(events(&attempts[2]).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_connect_error_is_typed_by_the_classifier_and_has_no_status() {
    let otel = Exported::install();
    let (addr, _reserved) = closed_port();
    let error = get(
        RetryLayer::new().max_attempts(2).backoff(Backoff::none()),
        &format!("http://{addr}/"),
    )
    .await
    .unwrap_err();
    assert!(!error.to_string().is_empty());

    let attempts = otel.attempts();
    assert_eq!(attempts.len(), 2);
    for span in &attempts {
        assert_eq!(attr(span, "error.type"), Some("connect".into()));
        assert_eq!(attr(span, "http.response.status_code"), None);
        assert!(matches!(span.status, Status::Error { .. }));
    }
    assert_eq!(events(&attempts[0]), ["retrying"]);
    // The give-up is an event of the last attempt.
    assert_eq!(events(&attempts[1]), ["giving up"]);
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn each_keyed_request_is_a_server_span_with_its_outcome() {
    let otel = Exported::install();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let app = Router::new()
        .route(
            "/emails",
            post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::ACCEPTED, "queued") }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).required_for([Method::POST]));
    let addr = serve(app).await;
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> = common::client();
    let post = |key: Option<&str>, body: &'static str| {
        let mut request = Request::post(format!("http://{addr}/emails"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        client.request(
            request
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
    };
    assert_eq!(post(Some("k-1"), "a").await.unwrap().status(), 202);
    assert_eq!(post(Some("k-1"), "a").await.unwrap().status(), 202);
    assert_eq!(post(Some("k-1"), "b").await.unwrap().status(), 422);
    assert_eq!(post(None, "a").await.unwrap().status(), 400);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let mut spans: Vec<_> = otel
        .spans()
        .into_iter()
        .filter(|s| s.name == "idempotency")
        .collect();
    spans.sort_by_key(|s| s.start_time);
    let outcomes: Vec<_> = spans
        .iter()
        .map(|s| {
            (
                attr(s, "idempotency.outcome"),
                attr(s, "http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("executed".into()), Some(Value::I64(202))),
            (Some("replayed".into()), Some(Value::I64(202))),
            (Some("mismatch".into()), Some(Value::I64(422))),
            (Some("missing_key".into()), Some(Value::I64(400))),
        ]
    );
    assert!(
        spans
            .iter()
            .all(|s| attr(s, "http.request.method") == Some("POST".into()))
    );
}
