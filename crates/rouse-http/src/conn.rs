//! Per-connection bookkeeping for the server loop: when a connection has gone on too long
//! without a request in progress (idle keep-alive, or a request head that trickles in),
//! whether an HTTP/1 client hung up while its request body sits unread, and the socket
//! wrapper that reports reads and gives the socket back for a lingering close.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::conn_cap::Slot;

/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so the error response written before it reaches the client instead of being destroyed by a
/// reset.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most a lingering close reads before giving up.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// One connection's timers: the header read timeout and the idle timeout, both measured only
/// while no request is in progress on it.
pub(super) struct ConnWatch {
    state: Mutex<State>,
    changed: Notify,
    /// Bytes were read from the client.
    read: Notify,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// The connection's place under the server's connection cap.
    slot: Arc<Slot>,
}

struct State {
    /// Requests whose responses have not finished.
    active: usize,
    /// Since when no request has been in progress (the accept, at first).
    idle_since: Instant,
    /// When the first byte of the next request head arrived, on an idle HTTP/1 connection.
    head_since: Option<Instant>,
    /// Whether any request arrived yet.
    served: bool,
    /// Whether the connection speaks HTTP/2 (known from its first request).
    h2: bool,
}

impl ConnWatch {
    #[cfg(test)]
    pub(super) fn new(
        header_read_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self::with_slot(header_read_timeout, idle_timeout, Slot::detached())
    }

    /// A connection's timers, its requests also counted in `slot` (the connection cap's).
    pub(super) fn with_slot(
        header_read_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        slot: Arc<Slot>,
    ) -> Self {
        ConnWatch {
            state: Mutex::new(State {
                active: 0,
                idle_since: Instant::now(),
                head_since: None,
                served: false,
                h2: false,
            }),
            changed: Notify::new(),
            read: Notify::new(),
            header_read_timeout,
            idle_timeout,
            slot,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere: each update is one assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request arrived; it is in progress until the guard drops (with its response body).
    pub(super) fn start(self: &Arc<Self>, h2: bool) -> ActiveGuard {
        self.slot.begin();
        let mut s = self.lock();
        s.active += 1;
        let first = s.active == 1;
        s.served = true;
        s.h2 |= h2;
        s.head_since = None;
        drop(s);
        // Only the first request in progress takes the deadline away: with others already in
        // progress (HTTP/2 streams), there is none, and nothing to tell the watcher.
        if first {
            self.changed.notify_one();
        }
        ActiveGuard(self.clone())
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        self.read.notify_one();
        let mut s = self.lock();
        if s.active == 0 && s.served && !s.h2 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Whether the connection speaks HTTP/2.
    pub(super) fn is_h2(&self) -> bool {
        self.lock().h2
    }

    /// When the connection has overstayed, if no request starts before then.
    fn deadline(&self) -> Option<Instant> {
        let s = self.lock();
        if s.active > 0 {
            return None;
        }
        let head = match (s.served, s.head_since) {
            (false, _) => Some(s.idle_since),
            (true, since) => since,
        };
        let by_head = head.zip(self.header_read_timeout).map(|(t, d)| t + d);
        let by_idle = self.idle_timeout.map(|d| s.idle_since + d);
        by_head.into_iter().chain(by_idle).min()
    }

    /// Resolves once the connection has had no request in progress for too long: the idle
    /// timeout, or the header read timeout while a request head is (or, on a new connection,
    /// should be) arriving. Cancel-safe.
    pub(super) async fn overstayed(&self) {
        loop {
            let changed = self.changed.notified();
            match self.deadline() {
                None => changed.await,
                Some(deadline) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.deadline().is_some_and(|d| d <= Instant::now()) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A second handle on a client's socket, to see it close while the server is not reading
/// (see [`client_gone`]). `None` when the descriptor cannot be duplicated.
pub(super) fn peer_handle(stream: &TcpStream) -> Option<TcpStream> {
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    TcpStream::from_std(std::net::TcpStream::from(fd)).ok()
}

/// Resolves when an HTTP/1 client has closed its end and nothing it sent is left unread in the
/// socket. hyper only notices a hang-up when it reads, and it does not read while a request
/// body waits unread (say, queued behind a concurrency limit); this sees it anyway, so the
/// request can be dropped at once. Bytes still unread in the socket hide a close behind them
/// until the server reads them. HTTP/2 connections are read all the time: hyper sees those.
pub(super) async fn client_gone(peer: &TcpStream, watch: &ConnWatch) {
    let mut buf = [0u8; 1];
    loop {
        let read = watch.read.notified();
        if watch.is_h2() {
            return std::future::pending().await;
        }
        match peer.peek(&mut buf).await {
            Ok(0) | Err(_) => return,
            // Unread bytes: look again once the server has read some.
            Ok(_) => read.await,
        }
    }
}

/// Counts a request as in progress on its connection until dropped.
pub(super) struct ActiveGuard(Arc<ConnWatch>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.slot.end();
        let mut s = self.0.lock();
        s.active -= 1;
        let last = s.active == 0;
        if last {
            s.idle_since = Instant::now();
            s.head_since = None;
        }
        drop(s);
        // Only the last request ending sets a deadline again.
        if last {
            self.0.changed.notify_one();
        }
    }
}

/// A client socket that tells its [`ConnWatch`] about reads and, when dropped, hands itself
/// back (see [`linger`]).
pub(super) struct WatchedIo {
    stream: Option<TcpStream>,
    /// Bytes read from the socket before (by the fast path), served first.
    prefix: bytes::Bytes,
    watch: Arc<ConnWatch>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl WatchedIo {
    /// Wraps `stream`; it arrives on the returned receiver when the wrapper is dropped.
    pub(super) fn new(
        stream: TcpStream,
        prefix: bytes::Bytes,
        watch: Arc<ConnWatch>,
    ) -> (WatchedIo, oneshot::Receiver<TcpStream>) {
        let (tx, rx) = oneshot::channel();
        let io = WatchedIo {
            stream: Some(stream),
            prefix,
            watch,
            back: Some(tx),
        };
        (io, rx)
    }

    /// Puts bytes already read back in front of what is still to be read.
    pub(super) fn unread(&mut self, bytes: bytes::Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("stream present until drop"))
    }
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            if self.prefix.is_empty() {
                // Let the fast path's buffer go.
                self.prefix = bytes::Bytes::new();
            }
            self.watch.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = self.stream().poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read();
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

/// Closes a connection after an error answer: stops sending, then reads and discards what the
/// client still sends until it closes too (or for a bounded time and amount). Closing with
/// unread data would reset the connection, and a reset can destroy the answer before the
/// client reads it.
pub(super) async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async {
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_gets_the_header_timeout_then_idle_applies_between_requests() {
        let w = Arc::new(ConnWatch::new(Some(secs(10)), Some(secs(120))));
        let t0 = Instant::now();
        assert_eq!(w.deadline(), Some(t0 + secs(10)));
        let g = w.start(false);
        assert_eq!(w.deadline(), None);
        tokio::time::sleep(secs(50)).await;
        drop(g);
        let idle = Instant::now();
        assert_eq!(w.deadline(), Some(idle + secs(120)));
        tokio::time::sleep(secs(30)).await;
        // The next head starts arriving: it has 10 s.
        w.on_read();
        assert_eq!(w.deadline(), Some(Instant::now() + secs(10)));
        w.on_read();
        assert_eq!(w.deadline(), Some(idle + secs(40)));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_do_not_start_the_header_timer() {
        let w = Arc::new(ConnWatch::new(Some(secs(10)), Some(secs(120))));
        drop(w.start(true));
        let idle = Instant::now();
        w.on_read();
        assert_eq!(w.deadline(), Some(idle + secs(120)));
        assert!(w.is_h2());
    }

    #[tokio::test(start_paused = true)]
    async fn overstayed_waits_out_requests_in_progress() {
        let w = Arc::new(ConnWatch::new(Some(secs(10)), Some(secs(60))));
        let t0 = Instant::now();
        let g = w.start(false);
        let w2 = w.clone();
        let ended = tokio::spawn(async move {
            w2.overstayed().await;
            Instant::now()
        });
        tokio::time::sleep(secs(100)).await;
        assert!(!ended.is_finished());
        drop(g);
        assert_eq!(ended.await.unwrap(), t0 + secs(160));
    }

    #[tokio::test(start_paused = true)]
    async fn without_timeouts_nothing_expires() {
        let w = Arc::new(ConnWatch::new(None, None));
        assert_eq!(w.deadline(), None);
        let waited = tokio::time::timeout(secs(3600), w.overstayed()).await;
        assert!(waited.is_err());
    }
}
