//! A throwaway PostgreSQL for the `postgres` tests.
//!
//! [`database_url`] is `DATABASE_URL` when set; otherwise this test binary's
//! own server, started on first use (`initdb` into a fresh temp directory,
//! then `postgres` on a free loopback port, with durability off) and shared
//! by the binary's tests. [`fresh_database`] gives each test a database of
//! its own on that server. A server this harness started can be stopped and
//! started again ([`own_server`], or a [`PgServer::private`] one for tests
//! that must not take the shared one down under the others).
//!
//! Servers are shut down when dropped and, for the shared one (a static,
//! never dropped), when the binary exits (`atexit`). Should the binary die
//! without running `atexit` (SIGKILL, abort), the postmaster gets SIGQUIT
//! from the kernel (`PR_SET_PDEATHSIG`), so no server outlives it.
//!
//! As root, `initdb` and `postgres` (which refuse to run as root) run as the
//! `postgres` OS user. A missing PostgreSQL fails the tests with a message
//! saying how to get one, rather than skipping them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HOW_TO_GET_ONE: &str = "the PostgreSQL tests need PostgreSQL's server binaries \
    (`initdb` and `postgres` on PATH or in /usr/lib/postgresql/*/bin: \
    `apt-get install postgresql`), or DATABASE_URL=postgres://user@host:port/db naming a \
    running server where that user may CREATE DATABASE";

/// How long a fresh or restarted server may take to accept connections.
const STARTUP: Duration = Duration::from_secs(30);

/// Process ids of the running postmasters this binary started, shut down at exit.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The servers' directories, removed at exit.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn stop_started() {
    let pids = STARTED.lock().map(|pids| pids.clone()).unwrap_or_default();
    for &pid in &pids {
        // SAFETY: kill(2) on a postmaster this process started; SIGQUIT is
        // an immediate shutdown that also ends its backends.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGQUIT) };
    }
    // The directories can only go once the servers stopped writing to them.
    for &pid in &pids {
        wait_for_exit(pid, Duration::from_secs(5));
    }
    if let Ok(dirs) = DIRS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls until `pid` is gone (its keeper thread reaps it), SIGKILLs it after `limit`.
fn wait_for_exit(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 {
        if Instant::now() > deadline {
            // SAFETY: as above, on a postmaster this process started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

enum Shared {
    External(String),
    Own(PgServer),
}

static SHARED: LazyLock<Result<Shared, String>> =
    LazyLock::new(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(Shared::External(url.trim().to_owned())),
        _ => PgServer::launch().map(Shared::Own),
    });

fn shared() -> &'static Shared {
    match &*SHARED {
        Ok(shared) => shared,
        Err(err) => panic!("could not start PostgreSQL: {err}\n{HOW_TO_GET_ONE}"),
    }
}

/// `DATABASE_URL`, or the URL of the `postgres` database on this binary's own
/// server (started on the first call, which blocks for a second or so).
/// Tests sharing it must not collide: prefer [`fresh_database`].
pub fn database_url() -> String {
    match shared() {
        Shared::External(url) => url.clone(),
        Shared::Own(server) => server.url(),
    }
}

/// The server this binary started, if it did (`None` with `DATABASE_URL`).
/// Stopping it takes it away from every test of the binary.
pub fn own_server() -> Option<&'static PgServer> {
    match shared() {
        Shared::External(_) => None,
        Shared::Own(server) => Some(server),
    }
}

/// Creates a database no other test uses (named after `name_hint`) on the
/// server of [`database_url`], and returns its URL.
pub async fn fresh_database(name_hint: &str) -> String {
    create_database(&database_url(), name_hint).await
}

/// Creates a fresh database on the server of `url` and returns its URL.
pub async fn create_database(url: &str, name_hint: &str) -> String {
    use sqlx::Connection;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let hint: String = name_hint
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    // Databases of earlier runs may remain on a DATABASE_URL server, hence the pid.
    let name = format!(
        "{hint}_{}_{}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    );
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|err| panic!("could not connect to {url}: {err}"));
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("could not create database {name}: {err}"));
    let _ = admin.close().await;
    with_database(url, &name)
}

/// `url` naming database `name` instead, keeping user, host and parameters.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A PostgreSQL server this harness started: its data directory survives
/// [`stop`](Self::stop) and [`start`](Self::start), and is removed on drop.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// The OS user to run as, when this process is root.
    user: Option<(u32, u32)>,
    running: Mutex<Option<Postmaster>>,
}

struct Postmaster {
    pid: u32,
    /// The thread that spawned the postmaster and waits for it: the
    /// parent-death signal fires when the spawning *thread* ends, so it must
    /// live exactly as long as the server.
    keeper: JoinHandle<std::io::Result<ExitStatus>>,
}

impl PgServer {
    /// Starts a server of the caller's own, for a test that takes it down
    /// while other tests of its binary use the shared one.
    pub fn private() -> PgServer {
        PgServer::launch()
            .unwrap_or_else(|err| panic!("could not start PostgreSQL: {err}\n{HOW_TO_GET_ONE}"))
    }

    fn launch() -> Result<PgServer, String> {
        static ATEXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a plain function with no captured state.
        ATEXIT.call_once(|| unsafe {
            libc::atexit(stop_started);
        });
        let bin = bin_dir().ok_or("no `initdb` and `postgres` found")?;
        // SAFETY: geteuid(2) has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user()?)
        } else {
            None
        };
        remove_abandoned_dirs();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("sock"))
            .map_err(|err| format!("create {}: {err}", dir.display()))?;
        DIRS.lock().unwrap().push(dir.clone());
        if let Some((uid, gid)) = user {
            for path in [dir.clone(), dir.join("sock")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|err| format!("chown {}: {err}", path.display()))?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            // C locale: messages in English, and no dependence on which
            // locales the machine has.
            .args(["-E", "UTF8", "--locale=C"])
            .current_dir(&dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let output = initdb.output().map_err(|err| {
            format!(
                "`{}` could not be run ({err})",
                bin.join("initdb").display()
            )
        })?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let mut server = PgServer {
            port: 0,
            bin,
            dir,
            user,
            running: Mutex::new(None),
        };
        let mut last_error = String::new();
        // The port is free when probed but could be taken before the server
        // binds it; try a few.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is up (it was started and not stopped).
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Shuts the server down (`pg_ctl stop -m fast`: SIGINT; clients are cut
    /// off, open transactions roll back) and waits until it is gone. Does
    /// nothing if it is not running. Not an immediate shutdown: with
    /// `synchronous_commit=off` that would lose the last commits.
    pub fn stop(&self) {
        let Some(postmaster) = self.running.lock().unwrap().take() else {
            return;
        };
        // SAFETY: kill(2) on the postmaster this harness started.
        unsafe { libc::kill(postmaster.pid as libc::pid_t, libc::SIGINT) };
        wait_for_exit(postmaster.pid, Duration::from_secs(10));
        let _ = postmaster.keeper.join();
        STARTED.lock().unwrap().retain(|&pid| pid != postmaster.pid);
    }

    /// Starts a stopped server again on the same port and data directory,
    /// with the data it had, and waits until it accepts connections. Does
    /// nothing if it is running.
    pub fn start(&self) {
        if let Err(err) = self.spawn() {
            panic!("could not restart PostgreSQL on port {}: {err}", self.port);
        }
    }

    fn spawn(&self) -> Result<(), String> {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return Ok(());
        }
        let log_path = self.dir.join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|err| format!("open {}: {err}", log_path.display()))?;
        let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|err| err.to_string())?)
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        // SAFETY: prctl(2) is async-signal-safe. std runs this after the
        // uid change, which would otherwise clear the setting.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (spawned, pid) = mpsc::channel();
        let keeper = std::thread::spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(err) => {
                    let _ = spawned.send(Err(err.to_string()));
                    return Err(err);
                }
            };
            let _ = spawned.send(Ok(child.id()));
            child.wait()
        });
        let pid = pid
            .recv()
            .map_err(|err| err.to_string())?
            .map_err(|err| format!("`postgres` could not be run ({err})"))?;
        STARTED.lock().unwrap().push(pid);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + STARTUP;
        loop {
            if accepts_connections(addr) {
                *running = Some(Postmaster { pid, keeper });
                return Ok(());
            }
            let exited = keeper.is_finished();
            if exited || Instant::now() > deadline {
                if !exited {
                    // SAFETY: kill(2) on the postmaster just started.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGQUIT) };
                    wait_for_exit(pid, Duration::from_secs(5));
                }
                let _ = keeper.join();
                STARTED.lock().unwrap().retain(|&started| started != pid);
                let why = if exited {
                    "postgres exited".to_owned()
                } else {
                    format!("no connection accepted within {STARTUP:?}")
                };
                return Err(format!(
                    "{why}; the end of {}:\n{}",
                    log_path.display(),
                    log_tail(&log_path, log_start)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        DIRS.lock().unwrap().retain(|dir| dir != &self.dir);
    }
}

/// The servers' directories are `<temp dir>/<DIR_PREFIX><pid>-<uuid>`.
const DIR_PREFIX: &str = "tower-reissue-pg-";

/// Removes the directories of test binaries that died without running
/// `atexit` (their servers went with them): some 40 MB each.
fn remove_abandoned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The directory with `initdb` and `postgres`: on PATH, else the newest
/// version under /usr/lib/postgresql (Debian keeps them off PATH).
fn bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|dir| has_both(dir)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// The uid and gid of the `postgres` OS user.
fn postgres_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|err| format!("`id` could not be run ({err})"))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "running as root, and there is no `postgres` user to run PostgreSQL as".to_owned()
            })
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

/// Whether the server lets `postgres` in: a startup message answered by an
/// authentication request ('R'; with trust, AuthenticationOk), rather than
/// an error ('E', such as "the database system is starting up").
fn accepts_connections(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let params: &[u8] = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = Vec::with_capacity(8 + params.len());
    startup.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
    // Protocol version 3.0.
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    let mut tag = [0u8];
    stream.write_all(&startup).is_ok() && stream.read_exact(&mut tag).is_ok() && tag[0] == b'R'
}

/// The last lines written to the log since byte `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
