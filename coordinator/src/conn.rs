//! Accepting connections so that no peer can take the coordinator's file
//! descriptors: a cap on connections served at once (further ones wait in the
//! listen queue), a cap per IP address (further ones are closed at once), a
//! deadline for the first bytes of a connection (the TLS handshake has its
//! own, set in [`crate::security`]), and a pause instead of a busy loop when
//! the process runs out of descriptors anyway.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, Sleep};

/// Bytes a client must send within the deadline: the HTTP/2 connection
/// preface (a TLS ClientHello is longer; the handshake's own timeout covers the rest).
const PREFACE_BYTES: usize = 24;

/// Descriptors kept for everything but client connections (the database,
/// checkpoint files, log readers).
const RESERVED_FDS: u64 = 256;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max: usize,
    pub per_ip: usize,
    pub first_bytes: Duration,
}

impl Limits {
    /// The configured limits, with `max` lowered to what the open-file limit allows.
    pub fn new(max: u32, per_ip: u32, first_bytes: Duration, nofile: Option<u64>) -> Limits {
        let fit = nofile
            .map(|n| n.saturating_sub(RESERVED_FDS).max(16) as usize)
            .unwrap_or(usize::MAX);
        let max = (max as usize).min(fit);
        if max < 1024 {
            tracing::warn!(
                max,
                "the open-file limit leaves room for few connections; raise it (LimitNOFILE= in the unit, ulimit -n)"
            );
        }
        Limits {
            max,
            per_ip: per_ip as usize,
            first_bytes,
        }
    }
}

#[derive(Default)]
struct Counts {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    freed: Notify,
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One counted connection; dropping it frees its place.
struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut open = self.counts.lock();
            open.0 = open.0.saturating_sub(1);
            if let Some(n) = open.1.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&self.ip);
                }
            }
        }
        self.counts.freed.notify_waiters();
    }
}

/// An accepted connection: the stream, its place in the counts, and the
/// deadline for its first bytes.
pub struct Conn {
    io: TcpStream,
    _slot: Slot,
    first: Option<(usize, Pin<Box<Sleep>>)>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((got, deadline)) = &mut this.first {
            if let Poll::Ready(Ok(())) = r {
                *got += buf.filled().len() - before;
                if *got >= PREFACE_BYTES {
                    this.first = None;
                    return r;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent no handshake in time",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections `listener` accepts, within `limits`. Accepting stops (and
/// the listening socket closes) when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, limits, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What accept(2) reports when the process or the system has no descriptor
/// or buffer to give: retrying at once would spin.
fn out_of_descriptors(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].contains(&Errno::from_raw(n))
    })
}

async fn accept_loop(listener: TcpListener, limits: Limits, tx: mpsc::Sender<io::Result<Conn>>) {
    let counts = Arc::new(Counts::default());
    // Each warning at most every 10 s: a flood must not flood the log too.
    let mut quiet: HashMap<&'static str, Instant> = HashMap::new();
    let mut warn = |what: &'static str, detail: String| {
        let now = Instant::now();
        if quiet.get(what).is_none_or(|until| now >= *until) {
            quiet.insert(what, now + Duration::from_secs(10));
            tracing::warn!(detail = %detail, "{what}");
        }
    };
    loop {
        // A place for one more connection, else wait until one closes.
        loop {
            let freed = counts.freed.notified();
            if counts.lock().0 < limits.max {
                break;
            }
            warn(
                "connection limit reached; new connections wait",
                format!("{} open (max_connections)", limits.max),
            );
            tokio::select! {
                _ = freed => {}
                _ = tx.closed() => return,
            }
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        let (io, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_descriptors(&e) => {
                warn(
                    "out of file descriptors; pausing accepts (raise LimitNOFILE= or lower max_connections)",
                    e.to_string(),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let ip = peer.ip();
        {
            let mut open = counts.lock();
            let n = open.1.get(&ip).copied().unwrap_or(0);
            if n >= limits.per_ip {
                drop(open);
                drop(io);
                warn(
                    "too many connections from one address; closing new ones",
                    format!("{ip}: {n} open (max_connections_per_ip)"),
                );
                continue;
            }
            open.0 += 1;
            open.1.insert(ip, n + 1);
        }
        let slot = Slot {
            counts: counts.clone(),
            ip,
        };
        let _ = io.set_nodelay(true);
        let conn = Conn {
            io,
            _slot: slot,
            first: Some((0, Box::pin(tokio::time::sleep(limits.first_bytes)))),
        };
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}
