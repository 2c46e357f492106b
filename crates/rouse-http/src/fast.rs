//! The fast path's upstream side: a plain HTTP/1.1 request, already parsed and rewritten by
//! the front door ([`crate::front`]), is exchanged with the next hop over a pooled raw
//! connection, bytes in and bytes out: no header maps, no client task, no copies beyond one
//! buffer per direction. The hop's own admission (a queue-proxy's concurrency limit, say)
//! happens before [`forward`]; a hop in another process is reached through [`RemoteHop`].
//!
//! Whatever the fast path cannot finish safely it hands back before anything reached the
//! upstream ([`FastOutcome::Refused`]), and the general path serves the request from the start.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conn_timer::ConnTimer;
use crate::h1::{self, ChunkedScanner, Framing, ParsedResponse, ResponseHead, text_response_bytes};
use crate::timeout::{Deadlines, TIMEOUT_BODY};
use crate::upstream::{HeadError, HeadStep, UPSTREAM_BUF, Upstream, UpstreamPool};

/// How a fast exchange ended, for the client connection.
#[derive(Debug, PartialEq, Eq)]
pub enum FastOutcome {
    /// Answered; the client connection may carry the next request.
    KeepAlive,
    /// Answered (or cut off, or the client left); close the client connection.
    Close,
    /// Nothing reached the app (no connection to it could be made): serve the request the
    /// general way, from its first byte.
    Refused,
}

/// A request the front door parsed and rewrote for the app.
#[derive(Debug)]
pub struct FastExchange<'a> {
    /// The request head for the app, followed by the whole body.
    pub request: &'a [u8],
    /// A HEAD request (its response has no body).
    pub head_request: bool,
    /// Safe to send again when a reused connection turns out dead.
    pub idempotent: bool,
    /// Becomes true when the server stops: the client connection then closes after this
    /// response (which says so, when its head is still to be written).
    pub stopping: &'a watch::Receiver<bool>,
    /// Sent by the activator: its load is reported apart (the activator reports it).
    pub proxied: bool,
    /// Header lines (`name: value\r\n` each) to add to the response.
    pub extra_response_headers: &'a [u8],
}

/// What a client connection keeps from one fast exchange to the next, so that a request
/// allocates nothing and arms no new timer of its own.
#[derive(Debug, Default)]
pub struct FastConn {
    /// The response head (and first body bytes) for the client.
    out: Vec<u8>,
    /// The request's wait for a concurrency slot and for the app's response head.
    timer: ConnTimer,
}

impl FastConn {
    /// The connection's one timer, for a hop's own waits before [`forward`] (a queue-proxy's
    /// wait for a concurrency slot).
    #[inline]
    pub fn timer(&mut self) -> &mut ConnTimer {
        &mut self.timer
    }
}

/// Resolves when the client has closed its connection (a read would see the end). Bytes it
/// sent ahead (a pipelined request) hide a close behind them; then this never resolves. A
/// plain poll function, so it adds next to nothing to the future of a waiting request.
#[inline]
pub fn client_gone(client: &TcpStream) -> impl Future<Output = ()> + '_ {
    let mut probe = [0u8; 1];
    std::future::poll_fn(move |cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        match client.poll_peek(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(()),
            // Unread bytes, or nothing yet: not gone (for all it can tell).
            Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        }
    })
}

/// Why an exchange with the app failed after the request may have reached it.
#[derive(Debug)]
enum Failure {
    /// The connection broke before any response byte.
    Unanswered(io::Error),
    /// Anything else before the response head was complete.
    Bad(String),
    /// The response head did not arrive in time.
    Timeout,
    /// The client went away.
    ClientGone,
    /// No connection could be made: nothing was sent.
    Refused,
}

/// A hop of this process that serves fast-path requests handed to it directly, with no
/// socket between (local mode's queue-proxy). The front is generic over it: the call is
/// static, as if the hop were named.
pub trait LocalHop: Send + Sync + 'static {
    /// Serves one fast-path request on the client connection `client` (admitting it as the
    /// hop's general path would), sends it upstream and streams the answer back. Also returns
    /// the status the client got, if it got one.
    fn serve_fast(
        &self,
        client: &mut TcpStream,
        ex: FastExchange<'_>,
        kept: &mut FastConn,
    ) -> impl Future<Output = (FastOutcome, Option<u16>)> + Send;
}

/// No hop of this process: for a front that only forwards to other processes.
impl LocalHop for std::convert::Infallible {
    async fn serve_fast(
        &self,
        _client: &mut TcpStream,
        _ex: FastExchange<'_>,
        _kept: &mut FastConn,
    ) -> (FastOutcome, Option<u16>) {
        match *self {}
    }
}

/// Raw keep-alive connections to a hop in another process (a sidecar queue-proxy, an
/// activator), for a front's fast path: the request goes on as bytes, and its admission
/// (queue, timeouts, load report) is the next hop's.
#[derive(Debug)]
pub struct RemoteHop(Arc<UpstreamPool>);

impl RemoteHop {
    /// Connections to the hop at `addr`, opened as needed.
    pub fn new(addr: SocketAddr) -> Self {
        RemoteHop(Arc::new(UpstreamPool::new(addr)))
    }

    /// Its connections, which the general path's bodiless requests share
    /// ([`crate::forward_to_hop`]).
    pub(crate) fn pool(&self) -> &Arc<UpstreamPool> {
        &self.0
    }

    /// Where the hop listens.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Serves one fast-path request on the client connection `client` through the hop; also
    /// returns the status the client got, if it got one. When no connection can be made
    /// nothing was sent ([`FastOutcome::Refused`]).
    pub async fn serve_fast(
        &self,
        client: &mut TcpStream,
        ex: FastExchange<'_>,
        kept: &mut FastConn,
    ) -> (FastOutcome, Option<u16>) {
        let deadlines = Deadlines::new(Instant::now(), None, None, None);
        forward(&self.0, client, &ex, &deadlines, kept, None).await
    }
}

/// Sends a fast-path request to the upstream of `pool` and streams its answer back to `client`
/// under `deadlines`; answers a timeout (504) or the upstream's failure (502, logged with the
/// revision `who` serves, when known) itself. Also returns the status the client got, if it
/// got one. When no connection can be made nothing was sent ([`FastOutcome::Refused`]).
#[inline]
pub async fn forward(
    pool: &UpstreamPool,
    client: &mut TcpStream,
    ex: &FastExchange<'_>,
    deadlines: &Deadlines,
    kept: &mut FastConn,
    who: Option<(&str, &str)>,
) -> (FastOutcome, Option<u16>) {
    match relay(pool, client, ex, deadlines, kept).await {
        Ok(done) => done,
        Err(Failure::Refused) => (FastOutcome::Refused, None),
        // Boxed, as every path off the common one: an exchange's future is moved into a
        // box of its own per request, and stays smaller without room for these.
        Err(f) => Box::pin(fail(client, f, ex, pool.addr, who)).await,
    }
}

/// [`exchange`] on a connection just made. The app closing it without a byte of answer may
/// have died under the request: a request safe to repeat then goes the general way
/// ([`Failure::Refused`]: the client has had nothing yet), which waits for the restarted app
/// and sends it once more.
async fn fresh_exchange(
    conn: Upstream,
    client: &TcpStream,
    ex: &FastExchange<'_>,
    deadlines: &Deadlines,
    out: &mut Vec<u8>,
    timer: &mut ConnTimer,
) -> Result<(Upstream, ResponseHead), Failure> {
    match exchange(conn, client, ex, deadlines, out, timer).await {
        Err(Failure::Unanswered(_)) if ex.idempotent => Err(Failure::Refused),
        other => other,
    }
}

/// [`fresh_exchange`] on a new connection to the upstream of `pool`.
async fn connect_and_exchange(
    pool: &UpstreamPool,
    client: &TcpStream,
    ex: &FastExchange<'_>,
    deadlines: &Deadlines,
    out: &mut Vec<u8>,
    timer: &mut ConnTimer,
) -> Result<(Upstream, ResponseHead), Failure> {
    let conn = pool.connect().await.map_err(|_| Failure::Refused)?;
    fresh_exchange(conn, client, ex, deadlines, out, timer).await
}

/// Exchanges the request over a pooled connection from `pool` (a new one if the kept-alive
/// one turns out dead and the request is safe to repeat) and streams the answer back.
async fn relay(
    pool: &UpstreamPool,
    client: &mut TcpStream,
    ex: &FastExchange<'_>,
    deadlines: &Deadlines,
    kept: &mut FastConn,
) -> Result<(FastOutcome, Option<u16>), Failure> {
    let FastConn { out, timer } = kept;
    out.clear();
    let (mut conn, head) = match pool.checkout() {
        Some(conn) => match exchange(conn, client, ex, deadlines, out, timer).await {
            Ok(done) => done,
            // A kept-alive connection the other end had closed: a request that is safe to
            // send again goes once more on a new connection.
            Err(Failure::Unanswered(_)) if ex.idempotent => {
                out.clear();
                Box::pin(connect_and_exchange(
                    pool, client, ex, deadlines, out, timer,
                ))
                .await?
            }
            Err(f) => return Err(f),
        },
        None => {
            Box::pin(connect_and_exchange(
                pool, client, ex, deadlines, out, timer,
            ))
            .await?
        }
    };
    // The head and whatever body came with it go to the client in one write.
    let start = head.head_len;
    let already = conn.buf.len() - start;
    let mut left = match head.framing {
        Framing::Empty => Left::Done,
        Framing::Length(n) => Left::Bytes(n),
        Framing::Chunked => Left::Chunked(ChunkedScanner::default()),
        Framing::UntilClose => Left::UntilClose,
    };
    let (take, complete) = left.advance(&conn.buf[start..]);
    let status = Some(head.status);
    let Some(take) = take else {
        return Ok((FastOutcome::Close, None));
    };
    out.extend_from_slice(&conn.buf[start..start + take]);
    let extra = already > take;
    if client.write_all(out).await.is_err() {
        return Ok((FastOutcome::Close, status));
    }
    let mut reusable = head.reusable && !extra;
    if !complete {
        match stream_body(&mut conn, client, &mut left, deadlines).await {
            Ok(()) => {}
            Err(_) => return Ok((FastOutcome::Close, status)),
        }
        reusable &= matches!(left, Left::Done);
    }
    if reusable {
        pool.checkin(conn);
    }
    let close = head.closes || head.framing == Framing::UntilClose;
    if close {
        Ok((FastOutcome::Close, status))
    } else {
        Ok((FastOutcome::KeepAlive, status))
    }
}

/// How much of the response body is still to come.
enum Left {
    Done,
    Bytes(u64),
    Chunked(ChunkedScanner),
    UntilClose,
}

impl Left {
    /// Takes what of `data` belongs to the body: `(Some(bytes taken), body complete)`, or
    /// `(None, _)` for a malformed body.
    fn advance(&mut self, data: &[u8]) -> (Option<usize>, bool) {
        match self {
            Left::Done => (Some(0), true),
            Left::Bytes(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                let done = *n == 0;
                if done {
                    *self = Left::Done;
                }
                (Some(take as usize), done)
            }
            Left::Chunked(scanner) => match scanner.feed(data) {
                Ok(Some(end)) => {
                    *self = Left::Done;
                    (Some(end), true)
                }
                Ok(None) => (Some(data.len()), false),
                Err(_) => (None, false),
            },
            Left::UntilClose => (Some(data.len()), false),
        }
    }
}

/// Sends the request on `conn` and reads the response head (skipping interim responses),
/// which is written for the client into `out`. The connection comes back with the head (and
/// any body bytes that came with it) in its buffer.
async fn exchange(
    mut conn: Upstream,
    client: &TcpStream,
    ex: &FastExchange<'_>,
    deadlines: &Deadlines,
    out: &mut Vec<u8>,
    timer: &mut ConnTimer,
) -> Result<(Upstream, ResponseHead), Failure> {
    let work = async {
        let parse = |bytes: &[u8]| {
            let step = h1::parse_response(
                bytes,
                ex.head_request,
                *ex.stopping.borrow(),
                ex.extra_response_headers,
                out,
            );
            match step.map_err(|e| e.to_string())? {
                ParsedResponse::Head(head) => Ok(HeadStep::Final(head)),
                ParsedResponse::Interim(n) => Ok(HeadStep::Interim(n)),
                ParsedResponse::Partial => Ok(HeadStep::Partial),
            }
        };
        match conn.exchange(ex.request, parse).await {
            Ok((mut head, skipped)) => {
                head.head_len += skipped;
                Ok(head)
            }
            Err(HeadError::Unanswered(e)) => Err(Failure::Unanswered(e)),
            Err(HeadError::Bad(e)) => Err(Failure::Bad(e)),
        }
    };
    // Polled where it stands (not moved into a timer's future): it is most of this one.
    let head = tokio::select! {
        biased;
        res = work => res?,
        () = timer.until(deadlines.head()) => return Err(Failure::Timeout),
        () = client_gone(client) => return Err(Failure::ClientGone),
    };
    Ok((conn, head))
}

/// Copies the rest of the response body from the app to the client, under the revision's
/// total and idle timeouts.
async fn stream_body(
    conn: &mut Upstream,
    client: &mut TcpStream,
    left: &mut Left,
    deadlines: &Deadlines,
) -> io::Result<()> {
    let idle = deadlines.idle();
    let total = deadlines.total();
    loop {
        conn.buf.clear();
        conn.buf.reserve(UPSTREAM_BUF);
        let read = conn.stream.read_buf(&mut conn.buf);
        let wait = match (idle, total) {
            (Some(i), Some(t)) => Some((Instant::now() + i).min(t)),
            (Some(i), None) => Some(Instant::now() + i),
            (None, t) => t,
        };
        let n = tokio::select! {
            biased;
            res = crate::timeout::until(wait, read) => match res {
                Some(res) => res?,
                None => return Err(io::ErrorKind::TimedOut.into()),
            },
            // Nobody to stream to any more.
            () = client_gone(client) => return Err(io::ErrorKind::ConnectionAborted.into()),
        };
        if n == 0 {
            return match left {
                Left::UntilClose => {
                    *left = Left::Done;
                    Ok(())
                }
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
        let (take, complete) = left.advance(&conn.buf);
        let Some(take) = take else {
            return Err(io::ErrorKind::InvalidData.into());
        };
        client.write_all(&conn.buf[..take]).await?;
        if take < n {
            // The app sent more than the response: the connection cannot be trusted.
            return Err(io::ErrorKind::InvalidData.into());
        }
        if complete {
            return Ok(());
        }
    }
}

/// Writes an error answer of the fast path's own (or a hop's: a queue-proxy's full queue).
pub async fn answer(
    client: &mut TcpStream,
    status: StatusCode,
    text: &str,
    ex: &FastExchange<'_>,
) -> FastOutcome {
    let close = *ex.stopping.borrow();
    let bytes = text_response_bytes(status, text, close);
    match client.write_all(&bytes).await {
        Ok(()) if !close => FastOutcome::KeepAlive,
        _ => FastOutcome::Close,
    }
}

/// Answers a failed exchange: 504 for a timeout, 502 for the upstream's failure (logged with
/// the revision `who` serves, when known).
async fn fail(
    client: &mut TcpStream,
    failure: Failure,
    ex: &FastExchange<'_>,
    upstream: SocketAddr,
    who: Option<(&str, &str)>,
) -> (FastOutcome, Option<u16>) {
    let text = match failure {
        Failure::ClientGone | Failure::Refused => return (FastOutcome::Close, None),
        Failure::Timeout => {
            let status = StatusCode::GATEWAY_TIMEOUT;
            return (answer(client, status, TIMEOUT_BODY, ex).await, Some(504));
        }
        Failure::Unanswered(e) => format!("upstream {upstream} failed: {e}"),
        Failure::Bad(e) => format!("upstream {upstream} failed: {e}"),
    };
    match who {
        Some((namespace, revision)) => {
            tracing::warn!(%revision, %namespace, error = %text, "proxying to the app failed");
        }
        None => tracing::warn!(error = %text, "proxying to the next hop failed"),
    }
    (
        answer(client, StatusCode::BAD_GATEWAY, &text, ex).await,
        Some(502),
    )
}
