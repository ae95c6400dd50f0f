//! A throwaway Redis Cluster for the cluster tests and bench: three masters
//! and three replicas (`redis-server --cluster-enabled yes` on six free
//! loopback ports, joined by `redis-cli --cluster create --cluster-replicas
//! 1`), without persistence, in a temp directory of its own.
//!
//! [`RedisCluster::shared`] starts one per test binary, on first use, shared
//! by its tests (which namespace their keys), or uses the nodes named in
//! `REDIS_CLUSTER_URLS` (comma-separated `redis://host:port` URLs) when set.
//! The processes are killed when the cluster is dropped and, for the shared
//! one (a static, never dropped), when the test binary exits (`atexit`).
//! Tests that fail nodes over start a [`RedisCluster::start`] of their own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long the cluster may take to form, or a failover to settle.
const SETTLE: Duration = Duration::from_secs(60);

/// The `cluster-node-timeout`: a few seconds, so that a loaded 2-core machine
/// does not fail a master over by itself.
const NODE_TIMEOUT_MS: &str = "5000";

const HOW_TO_GET_ONE: &str = "the Redis Cluster tests need redis-server and redis-cli \
    (`apt-get install redis-server redis-tools`), or REDIS_CLUSTER_URLS=redis://host:port,... \
    naming the nodes of a running cluster";

/// Process ids of every node started by this binary, killed at exit.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The clusters' directories, removed at exit.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn kill_started() {
    if let Ok(pids) = STARTED.lock() {
        for pid in pids.iter() {
            // SAFETY: kill(2) on a pid this process started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    if let Ok(dirs) = DIRS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    urls: Vec<String>,
    nodes: Vec<Node>,
    dir: Option<PathBuf>,
}

/// A master, its slot ranges and its replicas, as `CLUSTER NODES` tells.
#[derive(Clone, Debug)]
pub struct Master {
    pub id: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
    pub replicas: Vec<u16>,
}

impl Master {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

static SHARED: LazyLock<RedisCluster> =
    LazyLock::new(|| match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => RedisCluster {
            urls: urls.split(',').map(|url| url.trim().to_owned()).collect(),
            nodes: Vec::new(),
            dir: None,
        },
        _ => RedisCluster::start(),
    });

impl RedisCluster {
    /// The binary's cluster: `REDIS_CLUSTER_URLS`'s, or one started now.
    pub fn shared() -> &'static RedisCluster {
        &SHARED
    }

    /// Starts six nodes and makes them a cluster of three masters with a
    /// replica each; panics (saying how to get one) if it cannot.
    pub fn start() -> RedisCluster {
        static ATEXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a plain function with no captured state.
        ATEXIT.call_once(|| unsafe {
            libc::atexit(kill_started);
        });
        let dir = std::env::temp_dir().join(format!(
            "tower-reissue-cluster-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        DIRS.lock().unwrap().push(dir.clone());
        let mut cluster = RedisCluster {
            urls: Vec::new(),
            nodes: Vec::new(),
            dir: Some(dir),
        };
        for _ in 0..6 {
            let port = super::free_port();
            let child = cluster.spawn(port).unwrap_or_else(|err| {
                panic!("could not start a cluster node: {err}\n{HOW_TO_GET_ONE}")
            });
            cluster.nodes.push(Node {
                port,
                child: Some(child),
            });
            cluster.urls.push(format!("redis://127.0.0.1:{port}"));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("could not run redis-cli ({err})\n{HOW_TO_GET_ONE}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_settled();
        cluster
    }

    fn spawn(&self, port: u16) -> Result<Child, String> {
        let dir = self
            .dir
            .as_ref()
            .expect("a started cluster has a directory");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("`redis-server` could not be run ({err})"))?;
        STARTED.lock().unwrap().push(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !super::ping(SocketAddr::from(([127, 0, 0, 1], port))) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("no answer to PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    /// The nodes' URLs, for `connect_cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    fn ports(&self) -> Vec<u16> {
        self.urls
            .iter()
            .filter_map(|url| url.rsplit(':').next())
            .filter_map(|port| port.trim_end_matches('/').parse().ok())
            .collect()
    }

    /// Whether this harness started the nodes (and may stop them).
    pub fn is_local(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Polls (bounded, 50 ms apart) until every running node reports
    /// `cluster_state:ok` and sees every slot served, and every replica's
    /// link to its master is up.
    pub fn wait_until_settled(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.settled() {
                Ok(()) => return,
                Err(why) if Instant::now() > deadline => {
                    panic!("the cluster did not settle within {SETTLE:?}: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn running_ports(&self) -> Vec<u16> {
        if self.nodes.is_empty() {
            return self.ports();
        }
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn settled(&self) -> Result<(), String> {
        let ports = self.running_ports();
        for &port in &ports {
            let info = command(port, &["CLUSTER", "INFO"])?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Err(format!("{port}: {info}"));
            }
        }
        let masters = self.masters()?;
        if masters.len() != 3 {
            return Err(format!("masters: {masters:?}"));
        }
        for &port in &ports {
            let replication = command(port, &["INFO", "replication"])?;
            if replication.contains("role:slave") && !replication.contains("master_link_status:up")
            {
                return Err(format!("{port}: {replication}"));
            }
        }
        // Every node agrees on who serves the slots.
        for &port in &ports {
            let seen = masters_from(&command(port, &["CLUSTER", "NODES"])?);
            let mut theirs: Vec<_> = seen.iter().map(|m| (m.port, m.slots.clone())).collect();
            let mut ours: Vec<_> = masters.iter().map(|m| (m.port, m.slots.clone())).collect();
            theirs.sort();
            ours.sort();
            if theirs != ours {
                return Err(format!("{port} sees {theirs:?}, not {ours:?}"));
            }
        }
        Ok(())
    }

    /// The masters serving slots, with their replicas, as the first running
    /// node that answers sees them.
    pub fn masters(&self) -> Result<Vec<Master>, String> {
        let mut last = String::from("no running node");
        for port in self.running_ports() {
            match command(port, &["CLUSTER", "NODES"]) {
                Ok(nodes) => return Ok(masters_from(&nodes)),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node of this harness on port {port}"))
    }

    fn signal(&mut self, port: u16, signal: libc::c_int) {
        let node = self.node(port);
        let child = node.child.as_ref().expect("the node is running");
        // SAFETY: kill(2) on a child this harness started.
        let done = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(done, 0, "kill({port}, {signal})");
    }

    /// SIGSTOP: the node stops answering, as a stalled machine would.
    pub fn pause(&mut self, port: u16) {
        self.signal(port, libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self, port: u16) {
        self.signal(port, libc::SIGCONT);
    }

    /// SIGKILL: a crash; the node keeps its `nodes.conf` for a restart.
    pub fn kill(&mut self, port: u16) {
        let node = self.node(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on its port with its `nodes.conf` (and no
    /// data): it rejoins, as a replica if its slots moved meanwhile.
    pub fn restart(&mut self, port: u16) {
        let child = self.spawn(port).expect("restart the node");
        self.node(port).child = Some(child);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn masters_from(nodes: &str) -> Vec<Master> {
    let mut masters: Vec<Master> = Vec::new();
    let mut replicas: Vec<(String, u16)> = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || fields[2].contains("fail") || fields[7] != "connected" {
            continue;
        }
        let port = fields[1]
            .split('@')
            .next()
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or(0);
        if fields[2].contains("master") {
            let slots: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            if !slots.is_empty() {
                masters.push(Master {
                    id: fields[0].to_owned(),
                    port,
                    slots,
                    replicas: Vec::new(),
                });
            }
        } else if fields[2].contains("slave") {
            replicas.push((fields[3].to_owned(), port));
        }
    }
    for (master, port) in replicas {
        if let Some(master) = masters.iter_mut().find(|m| m.id == master) {
            master.replicas.push(port);
        }
    }
    masters.sort_by_key(|master| master.slots[0]);
    masters
}

/// Redis Cluster's slot of `key`: CRC16 (XMODEM) of its hash tag (the first
/// non-empty `{...}`) or of the whole key, mod 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// One command to the node on `port`, over a fresh connection: its reply as
/// text (a status, an integer or a bulk string), or the error.
pub fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|err| format!("{port}: {err}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("{port}: {err}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|err| format!("{port}: {err}"))?;
    let line = line.trim_end();
    match line.split_at(1) {
        ("+", rest) | (":", rest) => Ok(rest.to_owned()),
        ("-", rest) => Err(format!("{port}: {rest}")),
        ("$", len) => {
            let len: usize = len.parse().map_err(|_| format!("{port}: {line}"))?;
            let mut body = vec![0; len + 2];
            reader
                .read_exact(&mut body)
                .map_err(|err| format!("{port}: {err}"))?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(format!("{port}: unexpected reply {line}")),
    }
}
