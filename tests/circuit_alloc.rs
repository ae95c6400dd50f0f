//! The closed path of the circuit breaker allocates nothing: counted by a
//! global allocator over many calls through a healthy breaker (the service
//! below answers at once, so every allocation counted is the breaker's).

use http::{Request, Response, Uri};
use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};
use tower_reissue::circuit::{BreakerState, CircuitBreakerLayer};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Answers(u16);

impl Service<Request<()>> for Answers {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(self.0).unwrap();
        ready(Ok(response))
    }
}

/// Allocations made by `calls` calls, requests built beforehand.
async fn allocations<S>(service: &mut S, uri: &Uri, calls: usize) -> usize
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let requests: Vec<_> = (0..calls)
        .map(|_| {
            let mut request = Request::new(());
            *request.uri_mut() = uri.clone();
            request
        })
        .collect();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for request in requests {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        drop(response);
    }
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[tokio::test(flavor = "current_thread")]
async fn the_closed_path_does_not_allocate() {
    let uri: Uri = "http://api.example:8080/v1/emails".parse().unwrap();
    // Successes, and failures below the minimum throughput: both stay
    // closed. The first call of a per-host breaker adds its host.
    for per_host in [false, true] {
        for status in [200, 503] {
            let builder = CircuitBreakerLayer::builder();
            let layer = if per_host {
                builder.per_host()
            } else {
                builder
            }
            .build();
            let mut service = layer.layer(Answers(status));
            allocations(&mut service, &uri, 1).await;
            assert_eq!(
                allocations(&mut service, &uri, 50).await,
                0,
                "status {status}"
            );
            assert_eq!(layer.state_for(&uri), BreakerState::Closed);
        }
    }
}
