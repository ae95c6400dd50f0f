//! A throwaway `redis-server` for the Redis tests and bench.
//!
//! [`RedisServer::start`] runs one on a free loopback port without
//! persistence (`--save "" --appendonly no`) and kills it on drop;
//! [`RedisServer::start_with`] takes other settings (persistence, a
//! `--replicaof`), kept across restarts, and a directory of its own.
//! [`RedisServer::shared`] uses the server at `REDIS_URL` instead when that
//! variable is set. If neither works, it panics with a message saying how to
//! get one, so a missing server fails the tests rather than skipping them.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW_TO_GET_ONE: &str = "the Redis tests and bench need a redis-server: install one \
    (`apt-get install redis-server`, `brew install redis`) so they can start their own, \
    or set REDIS_URL=redis://host:port/ to use a running server";

/// How long a fresh server may take to answer PING.
const STARTUP: Duration = Duration::from_secs(10);

pub struct RedisServer {
    url: String,
    /// The process this harness started, if any (none with `REDIS_URL`).
    child: Option<Child>,
    port: u16,
    /// Settings after the port and bind address (replacing the default
    /// no-persistence ones when set).
    settings: Vec<String>,
    /// The working directory (`--dir`) of a server started with settings,
    /// removed on drop: a restart finds its files there.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// The server at `REDIS_URL` if set, else a new one (see [`start`](Self::start)).
    /// Tests sharing a server must namespace their keys.
    pub fn shared() -> RedisServer {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => RedisServer {
                url,
                child: None,
                port: 0,
                settings: Vec::new(),
                dir: None,
            },
            _ => RedisServer::start(),
        }
    }

    /// Starts a private `redis-server` on a free port, for tests that stop it
    /// or count every command it runs.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a private `redis-server` with `settings` (for example
    /// `["--appendonly", "yes", "--appendfsync", "always"]`) in a fresh
    /// directory of its own.
    pub fn start_with(settings: &[&str]) -> RedisServer {
        let mut last_error = String::new();
        // The port is free when probed but could be taken before the server
        // binds it; try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = (!settings.is_empty()).then(|| {
                let dir = std::env::temp_dir()
                    .join(format!("tower-reissue-redis-{}-{port}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("create the redis directory");
                dir
            });
            let mut server = RedisServer {
                url: format!("redis://127.0.0.1:{port}/"),
                child: None,
                port,
                settings: settings.iter().map(|s| s.to_string()).collect(),
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("could not start redis-server: {last_error}\n{HOW_TO_GET_ONE}");
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback port of a server this harness started.
    pub fn port(&self) -> u16 {
        assert!(self.port != 0, "the server at REDIS_URL has no local port");
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients, like a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port: empty, or with what its
    /// persistence settings kept in its directory.
    pub fn restart(&mut self) {
        assert!(self.port != 0, "cannot restart the server at REDIS_URL");
        self.stop();
        if let Err(err) = self.spawn() {
            panic!(
                "could not restart redis-server on port {}: {err}",
                self.port
            );
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"]);
        match &self.dir {
            Some(dir) => command
                .arg("--dir")
                .arg(dir)
                .args(["--save", ""])
                .args(&self.settings),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("`redis-server` could not be run ({err})"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + STARTUP;
        loop {
            if ping(addr) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer to PING within {STARTUP:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}
