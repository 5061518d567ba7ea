//! A TCP proxy the browser tests put between a page and the server, to do to connections what
//! networks and deployments do: cut every live connection at once (a Wi-Fi drop, a NAT timeout),
//! move to another server behind the same address (a restart), and refuse WebSocket handshakes
//! (a proxy that breaks them) while passing every other request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Most bytes of a request head read to decide whether it is a WebSocket handshake.
const HEAD_MAX_BYTES: usize = 16 * 1024;

/// The proxy: listens on a loopback port until dropped.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: tokio::task::JoinHandle<()>,
}

/// What the accept loop and the test share.
struct Shared {
    /// Where connections go.
    upstream: Mutex<SocketAddr>,
    /// Whether WebSocket handshakes are refused (the connection is closed without an answer).
    block_websocket: AtomicBool,
    /// The live connections' tasks: aborting one drops both of its sockets.
    live: Mutex<JoinSet<()>>,
}

impl Proxy {
    /// Starts a proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            block_websocket: AtomicBool::new(false),
            live: Mutex::new(JoinSet::new()),
        });
        let accepting = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            accepting,
        }
    }

    /// Its base URL, `http://127.0.0.1:<port>` (no slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every live connection: both of its sockets are dropped at once, without a close
    /// handshake. New connections are passed on as before.
    pub fn cut(&self) {
        self.shared.live.lock().expect("live lock").abort_all();
    }

    /// Sends new connections to `upstream` from now on.
    pub fn redirect(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().expect("upstream lock") = upstream;
    }

    /// Refuses WebSocket handshakes from now on (`true`), or passes them again.
    pub fn block_websocket(&self, block: bool) {
        self.shared.block_websocket.store(block, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let upstream = *shared.upstream.lock().expect("upstream lock");
        let block = shared.block_websocket.load(Ordering::SeqCst);
        let mut live = shared.live.lock().expect("live lock");
        // Reap the finished ones, so the set holds live connections only.
        while live.try_join_next().is_some() {}
        live.spawn(relay(client, upstream, block));
    }
}

/// Passes one connection on to `upstream`, unless `block_websocket` and its first request is a
/// WebSocket handshake: that one is closed unanswered, as a proxy that breaks WebSockets does.
async fn relay(mut client: TcpStream, upstream: SocketAddr, block_websocket: bool) {
    let mut head = Vec::new();
    if block_websocket {
        let mut buffer = [0; 4096];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < HEAD_MAX_BYTES {
            match client.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
        if String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("upgrade: websocket")
        {
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
