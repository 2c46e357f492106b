//! The engine's own HTTP/2 server connection, on the `h2` crate directly: one task drives the
//! connection and every stream on it, so a request costs no task of its own, no cross-task
//! wake-ups and no channel between the connection and its streams (hyper spawns a task per
//! stream). Settings and protections are hyper's defaults (the `h2` crate's rapid-reset and
//! CONTINUATION limits among them); the server loop's limits apply as on the hyper path.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use super::conn::ConnWatch;
use super::h1::date_value;
use super::limits::ServerLimits;
use super::server::{FromIncoming, HopService};

/// The HTTP/2 connection preface a client opens with (prior knowledge).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Flow-control windows (hyper's: 64 KB is too small for a fast upload).
const CONN_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// The most a stream's response may have queued unsent.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Streams this server may reset for a client's protocol errors before it closes.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How long a keep-alive PING waits for its answer before the connection is deemed dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The `h2` crate's settings (`max_header_list` is the server's head limit).
fn builder(max_header_list: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(max_header_list)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER);
    b
}

/// Serves one HTTP/2 connection (its preface not yet read) until it closes; `shutdown` asks it
/// to finish (GOAWAY: streams in progress complete, no new ones start).
pub(super) async fn serve<T, S, B>(
    io: T,
    service: Arc<S>,
    watch: Arc<ConnWatch>,
    limits: &ServerLimits,
    max_header_list: u32,
    shutdown: &Notify,
) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: HopService<B>,
    B: FromIncoming,
{
    let mut conn: Connection<T, Bytes> = builder(max_header_list).handshake(io).await?;
    let mut keep_alive = limits
        .h2_keep_alive_interval
        .zip(conn.ping_pong())
        .map(|(interval, pings)| KeepAlive::new(pings, interval));
    let mut streams = FuturesUnordered::new();
    let mut asked_to_stop = pin!(shutdown.notified());
    let mut closing = false;
    poll_fn(|cx| {
        if !closing && asked_to_stop.as_mut().poll(cx).is_ready() {
            closing = true;
            conn.graceful_shutdown();
        }
        if let Some(ka) = &mut keep_alive
            && ka.poll_dead(cx)
        {
            tracing::debug!("HTTP/2 keep-alive ping unanswered, closing the connection");
            return Poll::Ready(Ok(()));
        }
        loop {
            // Streams first: what they send, the connection's poll below writes out.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match ready!(conn.poll_accept(cx)) {
                Some(Ok((req, respond))) => {
                    streams.push(serve_stream(service.clone(), &watch, req, respond));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // Closed, every stream done (the streams' handles keep it open till then).
                None => return Poll::Ready(Ok(())),
            }
        }
    })
    .await
}

/// Answers one stream: the hop's service, then its response body under flow control. Ends
/// early (dropping the service's future, and so all it holds) when the client resets the
/// stream.
async fn serve_stream<S, B>(
    service: Arc<S>,
    watch: &Arc<ConnWatch>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) where
    S: HopService<B>,
    B: FromIncoming,
{
    // In progress on the connection until this stream's response has been sent.
    let guard = watch.start(true);
    let (parts, recv) = req.into_parts();
    let body = H2Body::new(recv, content_length(&parts.headers));
    let Some(body) = B::from_h2(body) else {
        respond.send_reset(Reason::INTERNAL_ERROR);
        return;
    };
    // Boxed: a hop's future is several KB, and this stream's future, which the connection
    // moves into its set of streams, would otherwise carry room for it.
    let mut answer = Box::pin(service.call(Request::from_parts(parts, body)));
    let resp = poll_fn(|cx| {
        if let Poll::Ready(res) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(res));
        }
        // Waiting on the service: a reset from the client cancels the request.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(Ok(resp)) = resp else { return };
    let (mut head, body) = resp.into_parts();
    strip_connection_headers(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date_value());
    }
    let end = body.is_end_stream();
    if !end
        && let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    let send = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "sending an HTTP/2 response head failed");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end {
        send_body(body, send).await;
    }
    drop(guard);
}

/// Streams a response body out as DATA frames (and trailers), waiting for flow-control
/// capacity as it goes; a failing body resets the stream.
async fn send_body<Bd>(body: Bd, mut send: SendStream<Bytes>)
where
    Bd: HttpBody<Data = Bytes>,
    Bd::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            body.as_mut().poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            // The client reset the stream.
            None => return,
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e.into(), "response body failed; resetting the stream");
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if !data.is_empty() && !wait_for_capacity(&mut send).await {
                    return;
                }
                if send.send_data(data, end).is_err() || end {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            send.reserve_capacity(0);
            let _ = send.send_trailers(trailers);
            return;
        }
    }
}

/// Waits until the stream may send some data (a minimal claim on the connection window, so a
/// stream with data in hand never pins capacity others need); false when the stream is gone.
async fn wait_for_capacity(send: &mut SendStream<Bytes>) -> bool {
    send.reserve_capacity(1);
    poll_fn(|cx| {
        while send.capacity() == 0 {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(false);
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Poll::Ready(false),
            }
        }
        Poll::Ready(true)
    })
    .await
}

/// Headers that are about one HTTP/1 connection, which HTTP/2 forbids in a message.
fn strip_connection_headers(headers: &mut HeaderMap) {
    // Usually none (the hops strip them already): one look at each name is cheaper than a
    // removal of each kind.
    let any = headers.keys().any(|name| {
        matches!(
            name.as_str(),
            "connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "keep-alive"
                | "proxy-connection"
        )
    });
    if !any {
        return;
    }
    if let Some(named) = headers.remove(header::CONNECTION)
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// The request's declared body length, when it declares one valid length.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let len = first.to_str().ok()?.trim().parse().ok()?;
    values.all(|v| v == first).then_some(len)
}

/// A request body arriving on an HTTP/2 stream. Each chunk read gives its room in the
/// flow-control window back to the client.
pub struct H2Body {
    recv: RecvStream,
    /// What remains of the declared length.
    remaining: Option<u64>,
    data_done: bool,
}

impl H2Body {
    fn new(recv: RecvStream, declared: Option<u64>) -> Self {
        H2Body {
            recv,
            remaining: declared,
            data_done: false,
        }
    }
}

impl std::fmt::Debug for H2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Body")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // The client stopped sending without an error: the body ends here.
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// Pings an HTTP/2 client every interval; a ping left unanswered past its timeout means the
/// client (or the path to it) is dead.
struct KeepAlive {
    pings: PingPong,
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    /// A ping is out, waiting for its pong.
    waiting: bool,
}

impl KeepAlive {
    fn new(pings: PingPong, interval: Duration) -> Self {
        KeepAlive {
            pings,
            interval,
            timer: Box::pin(tokio::time::sleep(interval)),
            waiting: false,
        }
    }

    /// Whether the client failed to answer a ping in time (or the connection broke).
    fn poll_dead(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        let next = Instant::now() + self.interval;
                        self.timer.as_mut().reset(next);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return true,
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.waiting {
                return true;
            }
            if self.pings.send_ping(Ping::opaque()).is_err() {
                return true;
            }
            self.waiting = true;
            let deadline = Instant::now() + KEEP_ALIVE_TIMEOUT;
            self.timer.as_mut().reset(deadline);
        }
    }
}
