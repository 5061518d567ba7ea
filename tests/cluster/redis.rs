//! Redis for the cluster tests.
//!
//! [`shared`] is the Redis every test of this binary shares, each test under its own key prefix
//! ([`unique_prefix`], cleaned up by [`delete_prefix`]). It is, in order of preference:
//! `TEST_REDIS_URL`; a Redis already answering on 127.0.0.1:6379; a throwaway `redis-server`
//! started for this binary (installed with `apt-get` first when it is missing and we are root).
//! When none of them is possible the tests print `SKIPPED: …` and pass, except under CI (`CI` set
//! to `true` or `1`), where they fail.
//!
//! [`RedisServer::start`] is a dedicated throwaway `redis-server` that a test may kill
//! (SIGKILL) and restart, empty, on the same port.
//!
//! A `redis-server` started here runs under a small `sh` watchdog that SIGKILLs it when the pipe
//! to its standard input closes: when the server is dropped, or when this test process exits in
//! any way (statics are never dropped; a crashed or killed test binary leaves nothing behind).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

/// How long a freshly started `redis-server` may take to answer `PING`.
const STARTUP: Duration = Duration::from_secs(5);

/// How long `apt-get` may take to install `redis-server`.
const INSTALL: Duration = Duration::from_secs(240);

/// The Redis shared by the tests of this binary, or why there is none.
static SHARED: OnceCell<Result<Shared, String>> = OnceCell::const_new();

/// The `redis-server` binary, once looked for (and perhaps installed).
static BINARY: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();

struct Shared {
    url: String,
    /// A throwaway server started for this binary, kept for the life of the process.
    _server: Option<RedisServer>,
}

/// What a test does when it cannot get Redis: fail under CI, else say so loudly and skip.
pub fn unavailable(test: &str, why: &str) {
    assert!(
        !crate::ci::is_ci(),
        "CI requires Redis for the cluster tests, but none is available: {why}. Set \
         TEST_REDIS_URL, run Redis on 127.0.0.1:6379, or install redis-server."
    );
    eprintln!(
        "\n*** SKIPPED: {test}: no Redis available ({why}); set TEST_REDIS_URL, run Redis on \
         127.0.0.1:6379 or install redis-server to run it ***\n"
    );
}

/// The URL of the Redis shared by this binary's tests; `None` (after printing `SKIPPED`) when
/// there is none and this is not CI: the test should return at once.
pub async fn shared(test: &str) -> Option<String> {
    match SHARED.get_or_init(provision_shared).await {
        Ok(shared) => Some(shared.url.clone()),
        Err(why) => {
            unavailable(test, why);
            None
        }
    }
}

async fn provision_shared() -> Result<Shared, String> {
    if let Some(url) = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        // Explicitly configured: if it does not answer, that is an error, not a reason to skip.
        if let Err(error) = ping_url(&url).await {
            panic!("TEST_REDIS_URL={url} does not answer PING: {error}");
        }
        return Ok(Shared { url, _server: None });
    }
    let local: SocketAddr = ([127, 0, 0, 1], 6379).into();
    if raw_ping(local).await {
        return Ok(Shared {
            url: format!("redis://{local}"),
            _server: None,
        });
    }
    let server = RedisServer::launch(Vec::new()).await?;
    Ok(Shared {
        url: server.url(),
        _server: Some(server),
    })
}

/// `PING` through the `redis` crate (any URL the server accepts: TLS, password…).
pub async fn ping_url(url: &str) -> Result<(), String> {
    let client = ::redis::Client::open(url).map_err(|e| e.to_string())?;
    let pong: String = tokio::time::timeout(Duration::from_secs(5), async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async(&mut connection).await
    })
    .await
    .map_err(|_| "no answer within 5 s".to_owned())?
    .map_err(|e| e.to_string())?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {pong:?}"))
    }
}

/// Whether a Redis at `addr` answers an inline `PING` with `+PONG` (within a second).
pub async fn raw_ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut answer = [0_u8; 7];
        stream.read_exact(&mut answer).await.ok()?;
        Some(&answer == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// A key prefix no other test (or run) uses: `test:<name>:<ulid>:` (the name cut to 24
/// characters: a prefix may have at most 64).
pub fn unique_prefix(test: &str) -> String {
    let name: String = test.chars().take(24).collect();
    format!("test:{name}:{}:", ulid::Ulid::new())
}

/// Deletes every key under `prefix` (best effort: errors are ignored; bounded in time).
pub async fn delete_prefix(url: &str, prefix: &str) {
    let cleanup = async {
        let client = ::redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let pattern = format!("{prefix}*");
        let mut cursor = 0_u64;
        for _ in 0..10_000 {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .cursor_arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .ok()?;
            if !keys.is_empty() {
                let _: i64 = ::redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .ok()?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Some(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), cleanup).await;
}

/// [`delete_prefix`] from synchronous code (a `Drop`): on a thread of its own with its own
/// runtime, waited for.
pub fn delete_prefix_blocking(url: &str, prefix: &str) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(delete_prefix(&url, &prefix));
    });
    let _ = cleanup.join();
}

/// A free loopback TCP port below the ephemeral range (free when this returns; a race with other
/// processes is possible, and [`RedisServer`] retries on another port if it loses it). Below the
/// ephemeral range so that, while the server is down, no client socket (a node reconnecting)
/// can be given that port, or connect to itself on it, and keep the server from coming back.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000_u16, ephemeral_low.max(10_001));
    for _ in 0..100 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        let port = low + (hasher.finish() % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Finds `redis-server`, installing it with `apt-get` (once per binary) when it is missing and
/// this process is root.
async fn binary() -> Result<PathBuf, String> {
    BINARY.get_or_init(find_or_install).await.clone()
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

async fn find_or_install() -> Result<PathBuf, String> {
    if let Some(found) = find_binary() {
        return Ok(found);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    let apt = Path::new("/usr/bin/apt-get").is_file();
    if !(root && apt) {
        return Err("redis-server is not installed (and cannot apt-get install it)".to_owned());
    }
    eprintln!("cluster tests: redis-server is missing; installing it with apt-get");
    let install = "apt-get install -y -q redis-server >/dev/null 2>&1 || \
                   { apt-get update -q >/dev/null 2>&1 && \
                     apt-get install -y -q redis-server >/dev/null 2>&1; }";
    let status = tokio::time::timeout(
        INSTALL,
        tokio::process::Command::new("sh")
            .args(["-c", install])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await;
    match status {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => return Err(format!("apt-get install redis-server failed: {status}")),
        Ok(Err(error)) => return Err(format!("apt-get install redis-server: {error}")),
        Err(_) => {
            return Err(format!(
                "apt-get install redis-server took over {INSTALL:?}"
            ));
        }
    }
    find_binary().ok_or_else(|| "redis-server still missing after apt-get install".to_owned())
}

/// The watchdog: runs `redis-server` (`$0`, with the arguments after it) in the background,
/// prints its pid, SIGKILLs it as soon as standard input closes, and exits when it exits.
/// (Asynchronous lists get /dev/null as standard input, hence the explicit `<&3`.)
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null >>"$REDIS_TEST_LOG" 2>&1 &
server=$!
echo "$server"
( read -r _ <&3; kill -9 "$server" 2>/dev/null ) &
watchdog=$!
wait "$server"
kill "$watchdog" 2>/dev/null
"#;

/// A throwaway `redis-server` on a loopback port: no persistence, killed on drop. It works in a
/// directory of its own (a replica's full sync writes a snapshot there), unless `extra` names
/// one.
pub struct RedisServer {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    binary: PathBuf,
    log: PathBuf,
    /// Arguments beyond the defaults (e.g. a TLS port).
    extra: Vec<String>,
    /// Its working directory, removed with it.
    dir: tempfile::TempDir,
    running: Option<Running>,
}

struct Running {
    watchdog: Child,
    /// Closing it makes the watchdog SIGKILL the server.
    stdin: Option<ChildStdin>,
    /// The server's pid.
    pid: u32,
}

impl RedisServer {
    /// A dedicated server for one test; `None` (after printing `SKIPPED`) when `redis-server`
    /// is not available and this is not CI.
    pub async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, Vec::new()).await
    }

    /// Like [`RedisServer::start`], with `extra` arguments for `redis-server`.
    pub async fn start_with(test: &str, extra: Vec<String>) -> Option<Self> {
        match Self::launch(extra).await {
            Ok(server) => Some(server),
            Err(why) => {
                unavailable(test, &why);
                None
            }
        }
    }

    async fn launch(extra: Vec<String>) -> Result<Self, String> {
        let binary = binary().await?;
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let mut server = Self {
                port,
                binary: binary.clone(),
                log: std::env::temp_dir().join(format!("cluster-test-redis-{port}.log")),
                extra: extra.clone(),
                dir: tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?,
                running: None,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(&self.log);
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .args(&self.extra)
            // Nothing from the developer's environment, only what the watchdog needs.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REDIS_TEST_LOG", &self.log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh for {}: {e}", self.binary.display()))?;
        let stdin = watchdog.stdin.take();
        let mut line = String::new();
        let stdout = watchdog.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let pid = line.trim().parse().unwrap_or(0);
        self.running = Some(Running {
            watchdog,
            stdin,
            pid,
        });
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            // Another test's server may hold the port (ours then fails to bind and exits): only
            // an answer from our own process counts.
            if raw_ping(self.addr()).await && self.answers_as(pid).await {
                return Ok(());
            }
            if self.exited() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = self.log_tail();
        self.kill();
        Err(format!(
            "redis-server on port {} did not answer PING: {log}",
            self.port
        ))
    }

    /// Whether the server answering on the port is the process `pid`.
    async fn answers_as(&self, pid: u32) -> bool {
        let info = async {
            let client = ::redis::Client::open(self.url()).ok()?;
            let mut connection = client.get_multiplexed_async_connection().await.ok()?;
            ::redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut connection)
                .await
                .ok()
        };
        let info = tokio::time::timeout(Duration::from_secs(1), info).await;
        matches!(info, Ok(Some(info)) if info.lines().any(|line| line.trim() == format!("process_id:{pid}")))
    }

    fn exited(&mut self) -> bool {
        self.running
            .as_mut()
            .is_none_or(|running| !matches!(running.watchdog.try_wait(), Ok(None)))
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    }

    /// SIGKILLs the server (it loses everything) and waits until it is gone. Idempotent.
    pub fn kill(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        // Closing the watchdog's stdin makes it `kill -9` the server; the watchdog exits once
        // the server has been reaped.
        drop(running.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match running.watchdog.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    if running.pid != 0 {
                        let _ = Command::new("kill")
                            .args(["-9", &running.pid.to_string()])
                            .status();
                    }
                    let _ = running.watchdog.kill();
                    let _ = running.watchdog.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Stops the server (SIGSTOP) without closing anything: connections stay open, nothing is
    /// answered, as when Redis stalls.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT): it answers what waited meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.running.as_ref().map_or(0, |running| running.pid);
        assert!(pid != 0, "redis-server is not running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the server again, empty, on the same port (killing it first if it runs); waits
    /// until it answers `PING`. Retries for a few seconds if the port is not free yet.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn().await {
                Ok(()) => return,
                Err(error) if Instant::now() >= deadline => {
                    panic!(
                        "redis-server did not restart on port {}: {error}",
                        self.port
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
