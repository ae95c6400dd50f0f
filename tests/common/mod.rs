//! A scriptable HTTP server on 127.0.0.1:0 for the client tests: it records
//! every request it receives (with the paused-clock instant it arrived at)
//! and answers as the test's script says, including by dropping the
//! connection.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// What the script answers.
pub enum Reply {
    Respond(Response<Full<Bytes>>),
    /// Close the connection without answering.
    Hangup,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Respond(
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Reply {
        Reply::Respond(
            Response::builder()
                .status(status)
                .header(name, value)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    }
}

#[derive(Debug)]
struct HungUp;
impl std::fmt::Display for HungUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hung up on purpose")
    }
}
impl std::error::Error for HungUp {}

pub struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrivals: tokio::sync::watch::Receiver<usize>,
}

impl TestServer {
    /// Starts a server; `script(n, &request)` answers the n-th request
    /// (1-based, counted over all connections).
    pub async fn start<F, Fut>(script: F) -> TestServer
    where
        F: Fn(usize, Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (arrived, arrivals) = tokio::sync::watch::channel(0usize);
        let arrived = Arc::new(arrived);
        let script = Arc::new(script);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                let log = log.clone();
                let arrived = arrived.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let script = script.clone();
                    let log = log.clone();
                    let arrived = arrived.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = match body.collect().await {
                            Ok(body) => body.to_bytes(),
                            Err(e) => return Err(std::io::Error::other(e)),
                        };
                        let entry = Seen {
                            method: parts.method,
                            path: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers,
                            body,
                            at: Instant::now(),
                        };
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(entry.clone());
                            log.len()
                        };
                        arrived.send_replace(n);
                        match script(n, entry).await {
                            Reply::Respond(response) => Ok(response),
                            Reply::Hangup => Err(std::io::Error::other(HungUp)),
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            seen,
            arrivals,
        }
    }

    /// A server whose first `times` answers are `failure()`, then 200s.
    pub async fn fails_first(times: usize, failure: fn() -> Reply) -> TestServer {
        TestServer::start(move |n, _| async move {
            if n <= times {
                failure()
            } else {
                Reply::status(200)
            }
        })
        .await
    }

    /// A server answering every request with `status`.
    pub async fn always(status: u16) -> TestServer {
        TestServer::start(move |_, _| async move { Reply::status(status) }).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A hyper-util client for bodies of type `B`.
pub fn client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// An address that refuses connections: a socket bound to a free port but
/// not listening. The port stays reserved (no other test's server can take
/// it) for as long as the returned socket lives.
pub fn closed_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// Stops tokio's paused clock from jumping to the next timer while the
/// runtime waits on socket I/O (it would otherwise fire timeouts while a
/// loopback answer is in flight). Time then moves only by
/// `tokio::time::advance`. Dropping the guard restores auto-advance.
pub struct ManualClock {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl ManualClock {
    pub async fn hold() -> ManualClock {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        // A running blocking task inhibits auto-advance for as long as it runs.
        tokio::task::spawn_blocking(move || {
            let _ = started_tx.send(());
            let _ = rx.recv();
        });
        started_rx.await.unwrap();
        ManualClock { stop: Some(tx) }
    }
}

impl Drop for ManualClock {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits (on real I/O, without moving the paused clock when a
/// `ManualClock` is held) until `server` has seen `n` requests.
pub async fn until_seen(server: &TestServer, n: usize) {
    let mut arrivals = server.arrivals.clone();
    arrivals.wait_for(|seen| *seen >= n).await.unwrap();
}
