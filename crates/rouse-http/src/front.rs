//! The front door's fast path: each client connection starts here. Plain HTTP/1.1 requests
//! ([`FastRequest`]) that route to a hop of this process ([`LocalHop`]) or to one in another
//! ([`RemoteHop`]) are served straight from the socket's bytes; at the first request that is anything else
//! (HTTP/2, a protocol switch, a streamed body, a route to the activator, a malformed head)
//! the connection, with every byte read so far, goes to the general server for good.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::conn_cap::Slot;
use crate::conn_timer::ConnTimer;
use crate::fast::{FastConn, FastExchange, FastOutcome, LocalHop, RemoteHop, client_gone};
use crate::h1::{ClientAddr, FastRequest, Parsed, header_slots, text_response_bytes};
use crate::limits::ServerLimits;
use crate::server::BODY_TIMEOUT_BODY;

/// Decides, per request, whether the fast path serves it and through which hop.
pub trait FrontRouter: Send + Sync + 'static {
    /// The hops of this process requests may be handed to directly.
    type Local: LocalHop;
    /// What is held while the request is served (request counts, say); dropped at its end.
    type Hold: Send;
    /// A request's place in a line, while it waits for somewhere to go.
    type Wait: Send;

    /// Where a plain request goes (its head parsed; its body, if any, complete).
    fn route(&self, req: &FastRequest<'_>) -> Route<Self::Hold, Self::Wait, Self::Local>;

    /// Tells a wait that gave up at its deadline what to answer.
    type Expiry: Send;

    /// Waits for a [`Route::Wait`] to resolve (to anything but another wait).
    fn wait(
        &self,
        wait: Self::Wait,
    ) -> impl Future<Output = Route<Self::Hold, Self::Wait, Self::Local>> + Send;

    /// When a wait gives up, if ever: the caller drops the wait's future then and asks
    /// [`FrontRouter::expired`] for the answer. (The caller's timer, not one per wait.)
    fn deadline(&self, wait: &Self::Wait) -> Option<(Instant, Self::Expiry)>;

    /// The route of a request whose wait reached its deadline.
    fn expired(&self, expiry: Self::Expiry) -> Route<Self::Hold, Self::Wait, Self::Local>;

    /// The request was answered with `status` (before its body streamed).
    fn answered(&self, _hold: &Self::Hold, _status: u16) {}

    /// Whether a client at `ip` is a proxy whose forwarding headers are kept.
    fn trusts(&self, _ip: std::net::IpAddr) -> bool {
        false
    }

    /// Whether this is the platform's edge (the gateway), where clients are strangers: it
    /// adds the forwarding headers. A hop behind it (a sidecar queue-proxy) passes them on as
    /// they came and believes the activator's `K-Proxy-Request` mark.
    fn is_edge(&self) -> bool {
        true
    }
}

/// Where a fast-path request goes (through a local hop of type `L`).
pub enum Route<H, W, L> {
    /// To this hop, now.
    Go(FastRoute<H, L>),
    /// Into a line ([`FrontRouter::wait`]); the connection holds only its request bytes.
    Wait(W),
    /// Nowhere: answer with this status and text.
    Answer(StatusCode, String),
    /// The general server takes the connection.
    General,
}

/// A fast-path request's destination.
pub struct FastRoute<H, L> {
    /// Who serves it.
    pub dest: FastDest<L>,
    /// Held until the request is over.
    pub hold: H,
    /// It came through the activator (its load is reported apart, as for `K-Proxy-Request`).
    pub proxied: bool,
    /// Header lines (`name: value\r\n` each) to add to the request (for a hop in another
    /// process: the revision's name for an activator, the activator's mark for a sidecar).
    pub extra_request_headers: Bytes,
    /// Header lines (`name: value\r\n` each) to add to the response.
    pub extra_response_headers: Vec<u8>,
}

/// Who serves a fast-path request.
pub enum FastDest<L> {
    /// A hop of this process (a queue-proxy), handed the request directly.
    Local(L),
    /// A hop in another process (a sidecar queue-proxy, an activator), over a pooled raw
    /// connection.
    Remote(Arc<RemoteHop>),
}

/// A router that never takes the fast path.
pub(crate) struct NoFront;

impl FrontRouter for NoFront {
    type Local = std::convert::Infallible;
    type Hold = ();
    type Wait = ();
    type Expiry = ();

    fn route(&self, _req: &FastRequest<'_>) -> Route<(), (), Self::Local> {
        Route::General
    }

    async fn wait(&self, _wait: ()) -> Route<(), (), Self::Local> {
        Route::General
    }

    fn deadline(&self, _wait: &()) -> Option<(Instant, ())> {
        None
    }

    fn expired(&self, _expiry: ()) -> Route<(), (), Self::Local> {
        Route::General
    }
}

/// What became of a connection on the fast path.
pub(crate) enum Handoff {
    /// It is over (closed, timed out, or the server is stopping).
    Done,
    /// The general server takes it from here, replaying `Bytes` first.
    General(TcpStream, Bytes),
}

/// The read buffer's first size: most request heads fit.
const INITIAL_BUF: usize = 2048;

/// What the bytes at the start of the buffer call for.
enum Next<H, W, L> {
    /// More bytes: of the head, or (`true`) of the body.
    Read(bool),
    /// The general server takes the connection.
    General,
    /// Wait in line, then route again.
    Wait(W),
    /// Answer this request with an error of the router's, then go on.
    Answer(StatusCode, String, usize),
    /// Serve this request (its head and body for the app are in the request buffer).
    Serve(Prepared<H, L>),
}

struct Prepared<H, L> {
    route: FastRoute<H, L>,
    total: usize,
    head_request: bool,
    idempotent: bool,
}

/// Looks at the buffer: parses, checks and routes the request at its start (or takes the
/// route already `decided` for it after a wait), and writes what the app is to get into
/// `request`. Synchronous, so the parser's scratch space never lives in a connection's
/// future.
fn next<R: FrontRouter>(
    router: &R,
    buf: &[u8],
    decided: Option<Route<R::Hold, R::Wait, R::Local>>,
    client: &ClientAddr,
    max_head: usize,
    request: &mut Vec<u8>,
) -> Next<R::Hold, R::Wait, R::Local> {
    if buf.is_empty() {
        return Next::Read(false);
    }
    let mut headers = header_slots();
    let req = match FastRequest::parse(buf, &mut headers) {
        Parsed::Other => return Next::General,
        Parsed::Partial if buf.len() >= max_head => return Next::General,
        Parsed::Partial => return Next::Read(false),
        Parsed::Fast(req) => req,
    };
    if req.head_len > max_head {
        // The general server answers 431.
        return Next::General;
    }
    let total = req.head_len + req.body_len;
    if buf.len() < total {
        return Next::Read(true);
    }
    let route = match decided {
        Some(route) => route,
        None => router.route(&req),
    };
    match route {
        Route::General => Next::General,
        Route::Wait(w) => Next::Wait(w),
        Route::Answer(status, text) => Next::Answer(status, text, total),
        Route::Go(mut route) => {
            request.clear();
            if router.is_edge() {
                req.write_upstream_head(client, request);
            } else {
                req.write_inner_head(request);
                route.proxied |= req.from_activator;
            }
            if !route.extra_request_headers.is_empty() {
                // Before the head's blank line.
                request.truncate(request.len() - 2);
                request.extend_from_slice(&route.extra_request_headers);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(&buf[req.head_len..total]);
            Next::Serve(Prepared {
                route,
                total,
                head_request: req.method == "HEAD",
                idempotent: req.is_idempotent(),
            })
        }
    }
}

/// Serves a connection's requests on the fast path for as long as they qualify.
///
/// The first request is read, and waits when it must (for a revision to wake, say), in a
/// small future of its own: then a connection holds little more than its request's bytes. The
/// rest of the connection's life runs in a boxed one.
pub(crate) async fn serve<R: FrontRouter>(
    router: &R,
    mut stream: TcpStream,
    remote: SocketAddr,
    limits: &ServerLimits,
    stop: &mut watch::Receiver<bool>,
    slot: &Arc<Slot>,
) -> Handoff {
    let accepted = Instant::now();
    let mut buf = BytesMut::with_capacity(INITIAL_BUF);
    let mut last_read = accepted;
    let decided = loop {
        let waiting = match first_route(router, &buf, limits.max_header_size) {
            First::Read(body) => {
                let deadline = if body {
                    limits.body_read_timeout.map(|d| last_read + d)
                } else {
                    limits.header_read_timeout.map(|d| accepted + d)
                };
                // Boxed: a waiting connection keeps no room for the read's timers.
                let read = read_more(
                    &mut stream,
                    &mut buf,
                    sleep_until_some(deadline),
                    stopped(stop),
                    slot,
                    accepted,
                );
                match Box::pin(read).await {
                    ReadOutcome::More => last_read = Instant::now(),
                    ReadOutcome::TimedOut if body => return body_timed_out(stream).await,
                    ReadOutcome::Over | ReadOutcome::TimedOut => return Handoff::Done,
                }
                continue;
            }
            First::General => return Handoff::General(stream, buf.freeze()),
            First::Route(Route::Wait(wait)) => wait_for_route(router, wait, &stream),
            First::Route(route) => break route,
        };
        let pending = Bytes::copy_from_slice(&buf);
        drop(std::mem::take(&mut buf));
        let Some(route) = waiting.await else {
            return Handoff::Done;
        };
        buf = BytesMut::from(&pending[..]);
        break route;
    };
    let conn = Conn {
        stream,
        buf,
        accepted,
        last_read,
    };
    Box::pin(run(router, conn, Some(decided), remote, limits, stop, slot)).await
}

/// Waits for a request's route (`None`: the client left first), under the router's
/// deadline. Built by a plain function so the future holds only what the wait needs.
fn wait_for_route<'a, R: FrontRouter>(
    router: &'a R,
    wait: R::Wait,
    stream: &'a TcpStream,
) -> impl Future<Output = Option<Route<R::Hold, R::Wait, R::Local>>> + 'a {
    let (deadline, expiry) = router.deadline(&wait).unzip();
    let waiting = Box::pin(router.wait(wait));
    async move {
        tokio::select! {
            biased;
            route = waiting => Some(route),
            () = client_gone(stream) => None,
            () = sleep_until_some(deadline) => {
                Some(expiry.map_or(Route::General, |e| router.expired(e)))
            }
        }
    }
}

/// A connection past its first request head.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    accepted: Instant,
    last_read: Instant,
}

/// What the first request calls for.
enum First<H, W, L> {
    /// More bytes: of the head, or (`true`) of the body.
    Read(bool),
    /// The general server takes the connection.
    General,
    /// Its route.
    Route(Route<H, W, L>),
}

fn first_route<R: FrontRouter>(
    router: &R,
    buf: &[u8],
    max_head: usize,
) -> First<R::Hold, R::Wait, R::Local> {
    if buf.is_empty() {
        return First::Read(false);
    }
    let mut headers = header_slots();
    match FastRequest::parse(buf, &mut headers) {
        Parsed::Other => First::General,
        Parsed::Partial if buf.len() >= max_head => First::General,
        Parsed::Partial => First::Read(false),
        Parsed::Fast(req) if req.head_len > max_head => First::General,
        Parsed::Fast(req) if buf.len() < req.head_len + req.body_len => First::Read(true),
        Parsed::Fast(req) => First::Route(router.route(&req)),
    }
}

enum ReadOutcome {
    /// Bytes arrived.
    More,
    /// The client closed, the read failed, or the server is stopping (between requests).
    Over,
    /// The deadline passed.
    TimedOut,
}

/// Resolves once the server is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads more of the client's bytes into `buf`, until `deadline`, or until `stopped` (the
/// server's stop) while no request is under way (the connection idle since `idle_since`).
/// Small on purpose: an idle or slow connection's future holds this.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: impl Future<Output = ()>,
    stopped: impl Future<Output = ()>,
    slot: &Arc<Slot>,
    idle_since: Instant,
) -> ReadOutcome {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(INITIAL_BUF);
    }
    // Between requests the server's stop ends the wait; within a head it does not.
    let idle = buf.is_empty();
    // Waiting for a request: the connection cap may close it for a new one.
    let _idle = idle.then(|| slot.idle(idle_since));
    let stopped = async {
        if idle {
            stopped.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        n = stream.read_buf(buf) => match n {
            Ok(n) if n > 0 => ReadOutcome::More,
            _ => ReadOutcome::Over,
        },
        () = stopped => ReadOutcome::Over,
        () = deadline => ReadOutcome::TimedOut,
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Answers a request whose body stalled past the body read timeout, and closes.
async fn body_timed_out(mut stream: TcpStream) -> Handoff {
    let bytes = text_response_bytes(StatusCode::REQUEST_TIMEOUT, BODY_TIMEOUT_BODY, true);
    let _ = stream.write_all(&bytes).await;
    Handoff::Done
}

/// Serves the connection from its first request (already routed: `decided`) on.
async fn run<R: FrontRouter>(
    router: &R,
    conn: Conn,
    mut decided: Option<Route<R::Hold, R::Wait, R::Local>>,
    remote: SocketAddr,
    limits: &ServerLimits,
    stop: &mut watch::Receiver<bool>,
    slot: &Arc<Slot>,
) -> Handoff {
    let Conn {
        mut stream,
        mut buf,
        accepted,
        mut last_read,
    } = conn;
    let mut request = Vec::new();
    let mut kept = FastConn::default();
    // The client's read deadlines, one timer for the connection's life.
    let mut reads = ConnTimer::new();
    let client = ClientAddr::new(remote.ip()).trusted(router.trusts(remote.ip()));
    let mut idle_since = accepted;
    // The server's stop, watched from here for the connection's life: registering anew for
    // every read between requests would cost more than the read.
    let mut watch = stop.clone();
    let mut stop_seen = pin!(stopped(&mut watch));
    let mut served = false;
    // When the first byte of the head being waited for arrived (after the first request).
    let mut started: Option<Instant> = None;
    loop {
        let mut step = next(
            router,
            &buf,
            decided.take(),
            &client,
            limits.max_header_size,
            &mut request,
        );
        if let Next::Wait(wait) = step {
            // While it waits (for a revision to wake, say) a request holds only its own
            // bytes, not the read buffer.
            let pending = Bytes::copy_from_slice(&buf);
            drop(std::mem::take(&mut buf));
            let Some(route) = wait_for_route(router, wait, &stream).await else {
                return Handoff::Done;
            };
            buf = BytesMut::from(&pending[..]);
            drop(pending);
            step = next(
                router,
                &buf,
                Some(route),
                &client,
                limits.max_header_size,
                &mut request,
            );
        }
        let need_body = match step {
            Next::Read(body) => body,
            Next::General => return Handoff::General(stream, buf.freeze()),
            // A second wait: route it the general way.
            Next::Wait(_) => return Handoff::General(stream, buf.freeze()),
            Next::Answer(status, text, total) => {
                let close = *stop.borrow();
                let bytes = text_response_bytes(status, &text, close);
                if close || stream.write_all(&bytes).await.is_err() {
                    return Handoff::Done;
                }
                buf.advance(total);
                served = true;
                idle_since = Instant::now();
                last_read = idle_since;
                started = (!buf.is_empty()).then_some(idle_since);
                continue;
            }
            Next::Serve(prep) => {
                let route = prep.route;
                let ex = FastExchange {
                    request: &request,
                    head_request: prep.head_request,
                    idempotent: prep.idempotent,
                    stopping: stop,
                    proxied: route.proxied,
                    extra_response_headers: &route.extra_response_headers,
                };
                // Boxed: a connection between requests keeps no room for an exchange.
                let (outcome, status) = match &route.dest {
                    FastDest::Local(queue) => {
                        Box::pin(queue.serve_fast(&mut stream, ex, &mut kept)).await
                    }
                    FastDest::Remote(hop) => {
                        Box::pin(hop.serve_fast(&mut stream, ex, &mut kept)).await
                    }
                };
                if let Some(status) = status {
                    router.answered(&route.hold, status);
                }
                drop(route);
                match outcome {
                    FastOutcome::Refused => return Handoff::General(stream, buf.freeze()),
                    FastOutcome::Close => return Handoff::Done,
                    FastOutcome::KeepAlive => {}
                }
                buf.advance(prep.total);
                served = true;
                idle_since = Instant::now();
                last_read = idle_since;
                started = (!buf.is_empty()).then_some(idle_since);
                continue;
            }
        };
        if buf.is_empty() && *stop.borrow() {
            return Handoff::Done;
        }
        // Wait for more: the idle timeout between requests, the header read timeout while a
        // head arrives (from the accept, for the first), the body read timeout for a body.
        let deadline = if need_body {
            limits.body_read_timeout.map(|d| last_read + d)
        } else if buf.is_empty() && served {
            limits.idle_timeout.map(|d| idle_since + d)
        } else {
            let since = if served {
                started.unwrap_or(idle_since)
            } else {
                accepted
            };
            limits.header_read_timeout.map(|d| since + d)
        };
        let read = read_more(
            &mut stream,
            &mut buf,
            reads.until(deadline),
            stop_seen.as_mut(),
            slot,
            idle_since,
        );
        match read.await {
            ReadOutcome::More => {
                last_read = Instant::now();
                if started.is_none() {
                    started = Some(last_read);
                }
            }
            ReadOutcome::TimedOut if need_body => return body_timed_out(stream).await,
            ReadOutcome::Over | ReadOutcome::TimedOut => return Handoff::Done,
        }
    }
}
