//! A TCP proxy on loopback that can cut open connections, refuse new ones and hang up on new
//! ones cleanly, for fault tests, and delay every byte both ways, for a remote link.

mod delay;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP proxy on `127.0.0.1:0` in front of one upstream address.
///
/// Point a client at [`FaultProxy::addr`] instead of the server. Closed connections are reset
/// (RST), so peers see an error rather than a clean end of stream. Dropping the proxy closes the
/// listener and every connection. Must be started inside a Tokio runtime, which runs its tasks.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    accepted: AtomicU64,
    /// How many of the next connections are hung up on, and when.
    hang_ups: AtomicU64,
    hang_up_after_read: AtomicBool,
    /// One-way delay of new connections, in nanoseconds (0 = none).
    delay_ns: AtomicU64,
    /// Cancelled by `cut_all`; every connection holds the token current when it was accepted.
    cut: Mutex<CancellationToken>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("fault proxy cannot bind 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("fault proxy has no address")?;
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            hang_ups: AtomicU64::new(0),
            hang_up_after_read: AtomicBool::new(false),
            delay_ns: AtomicU64::new(0),
            cut: Mutex::new(CancellationToken::new()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            shutdown,
        })
    }

    /// The proxy's address (127.0.0.1 and [`FaultProxy::port`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Closes every connection currently open through the proxy, on both sides.
    ///
    /// Takes effect before any further byte is forwarded on those connections; the sockets are
    /// closed as soon as the proxy's tasks run. New connections are not affected.
    pub fn cut_all(&self) {
        let old = std::mem::take(&mut *self.shared.cut.lock().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
    }

    /// While `true`, new connections are accepted and immediately closed (reset).
    pub fn set_refusing(&self, refuse: bool) {
        self.shared.refusing.store(refuse, Ordering::SeqCst);
    }

    /// The next `count` connections are closed cleanly (FIN, not RST) without ever reaching
    /// the upstream: at once with [`HangUp::AtAccept`], or after the client's first bytes
    /// arrived with [`HangUp::AfterFirstRead`] (a PostgreSQL server going away while a client's
    /// SSL request waits for its answer). Later connections are forwarded as usual.
    pub fn hang_up(&self, count: u64, when: HangUp) {
        self.shared
            .hang_up_after_read
            .store(when == HangUp::AfterFirstRead, Ordering::SeqCst);
        self.shared.hang_ups.store(count, Ordering::SeqCst);
    }

    /// Connections accepted from now on deliver every chunk `one_way` late in each direction
    /// (so `10ms` gives a 20 ms round trip), in order and intact; zero forwards at once.
    pub fn set_delay(&self, one_way: Duration) {
        let ns = u64::try_from(one_way.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_ns.store(ns, Ordering::SeqCst);
    }

    /// How many connections the listener accepted, including those closed in refusing mode.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

/// When [`FaultProxy::hang_up`] closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangUp {
    /// As soon as it is accepted, before reading anything.
    AtAccept,
    /// After the client's first bytes arrived (or it closed), with no answer.
    AfterFirstRead,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Transient (e.g. out of file descriptors): keep serving.
                tracing::warn!("fault proxy accept failed: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let hang_up = shared
            .hang_ups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hang_up {
            let after_read = shared.hang_up_after_read.load(Ordering::SeqCst);
            tokio::spawn(hang_up_on(client, after_read, shutdown.clone()));
            continue;
        }
        let cut = shared.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let delay = Duration::from_nanos(shared.delay_ns.load(Ordering::SeqCst));
        tokio::spawn(forward(
            client,
            shared.upstream,
            delay,
            cut,
            shutdown.clone(),
        ));
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    cut: CancellationToken,
    shutdown: CancellationToken,
) {
    let connect = tokio::select! {
        biased;
        () = cut.cancelled() => None,
        () = shutdown.cancelled() => None,
        connect = TcpStream::connect(upstream) => connect.ok(),
    };
    let Some(mut server) = connect else {
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if !delay.is_zero() {
        let finished = tokio::select! {
            biased;
            () = cut.cancelled() => false,
            () = shutdown.cancelled() => false,
            done = delay::copy_delayed(&mut client, &mut server, delay) => done.is_ok(),
        };
        // Both ends of stream were forwarded: close cleanly (FIN), after the data in flight.
        if finished {
            return;
        }
        reset(client);
        reset(server);
        return;
    }
    tokio::select! {
        biased;
        () = cut.cancelled() => {}
        () = shutdown.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
    reset(client);
    reset(server);
}

/// Closes `client` cleanly (FIN), after its first bytes when `after_read`.
async fn hang_up_on(mut client: TcpStream, after_read: bool, shutdown: CancellationToken) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if after_read {
        let mut buf = [0u8; 1024];
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            _ = client.read(&mut buf) => {}
        }
    }
    let _ = client.shutdown().await;
    drop(client);
}

/// Closes with RST rather than FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
