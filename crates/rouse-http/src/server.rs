//! An HTTP/1.1 + h2c server loop with graceful shutdown and client limits ([`ServerLimits`]),
//! shared by every listening hop.
//!
//! Bad clients are dealt with here, so no hop has to: a malformed request gets 400 and an
//! oversized head 431 (both from hyper's parser, followed by a lingering close so the answer
//! survives); a head that trickles in, a connection that says nothing and an idle keep-alive
//! connection are closed by per-connection timers; a request body that stalls fails and the
//! client gets 408; a client that goes away drops its request's future and response body, and
//! so everything they hold. Each connection runs in its own task, so none of it slows others.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::body::{Body, BoxError, boxed, text_response};
use super::conn::{ActiveGuard, ConnWatch, WatchedIo, client_gone, linger, peer_handle};
use super::conn_cap::{Admission, Ticket};
use super::front::{self, FrontRouter, Handoff, NoFront};
use super::h2_server::{self, H2Body, PREFACE};
use super::limits::{MIN_MAX_HEADER_SIZE, ServerLimits};
use super::read_timeout::{BodyReadTimeout, MinBodyRate, ReadTimeoutBody};

/// The body of the 408 a request gets when its body stalled before its response started.
pub const BODY_TIMEOUT_BODY: &str = "request body read timeout";

/// A request body type a server loop can hand its service: [`Body`] (the incoming body under
/// [`ServerLimits::body_read_timeout`]), [`ReadTimeoutBody<Incoming>`] (the same, unboxed),
/// or hyper's [`Incoming`] (no read timeout: it cannot carry one).
pub trait FromIncoming: Send + Sized + 'static {
    /// Whether this body type keeps the read timeout (and so can stall into a 408).
    const READ_TIMEOUT: bool = true;

    /// Makes the body from the incoming one wrapped in its read timeout.
    fn from_incoming(body: ReadTimeoutBody<Incoming>) -> Self;

    /// Whether the engine's own HTTP/2 server may serve this body type's HTTP/2 connections
    /// (else hyper's does): [`FromIncoming::from_h2`] makes it.
    const OWN_H2: bool = false;

    /// Makes the body of a request from the engine's own HTTP/2 server (`None` unless
    /// [`FromIncoming::OWN_H2`]).
    fn from_h2(_body: H2Body) -> Option<Self> {
        None
    }
}

impl FromIncoming for Body {
    fn from_incoming(body: ReadTimeoutBody<Incoming>) -> Self {
        boxed(body)
    }

    const OWN_H2: bool = true;

    fn from_h2(body: H2Body) -> Option<Self> {
        Some(boxed(body))
    }
}

impl FromIncoming for ReadTimeoutBody<Incoming> {
    fn from_incoming(body: ReadTimeoutBody<Incoming>) -> Self {
        body
    }
}

impl FromIncoming for Incoming {
    const READ_TIMEOUT: bool = false;

    fn from_incoming(body: ReadTimeoutBody<Incoming>) -> Self {
        body.into_inner()
    }
}

/// [`serve_with`] with the default [`ServerLimits`].
pub async fn serve<M, S, B>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
) where
    M: Fn(SocketAddr) -> S,
    S: HopService<B>,
    B: FromIncoming,
{
    serve_with(listener, make_service, shutdown, ServerLimits::default()).await;
}

/// Serves HTTP/1.1 (keep-alive) and h2c (prior knowledge) connections accepted on `listener`,
/// each handled by the service `make_service(client_addr)` returns, holding clients to
/// `limits`.
///
/// When `shutdown` resolves it stops accepting, asks every connection to finish (idle
/// keep-alive connections close at once, in-flight requests and streaming responses complete),
/// and returns once all connections have closed. Dropping the returned future instead aborts
/// every connection at once.
pub async fn serve_with<M, S, B>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServerLimits,
) where
    M: Fn(SocketAddr) -> S,
    S: HopService<B>,
    B: FromIncoming,
{
    serve_inner(
        listener,
        make_service,
        None::<Arc<NoFront>>,
        None,
        shutdown,
        limits,
    )
    .await;
}

/// Like [`serve_with`] over TLS: each connection's handshake (ALPN as `tls` configures it:
/// `h2` is served as HTTP/2, anything else as HTTP/1.1) must finish within the header read
/// timeout, and a failed one closes the connection. The same limits then apply as in clear.
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServerLimits,
) where
    M: Fn(SocketAddr) -> S,
    S: HopService<B>,
    B: FromIncoming,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_inner(
        listener,
        make_service,
        None::<Arc<NoFront>>,
        Some(acceptor),
        shutdown,
        limits,
    )
    .await;
}

/// Like [`serve_with`], but each connection starts on the fast path: plain HTTP/1.1 requests
/// that `router` sends to a hop (of this process or another) are served from the socket's
/// bytes (see [`FrontRouter`]); a connection moves to `make_service`'s service at its first request that
/// is anything else, and stays there.
pub async fn serve_front<M, S, B, R>(
    listener: TcpListener,
    make_service: M,
    router: Arc<R>,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServerLimits,
) where
    M: Fn(SocketAddr) -> S,
    S: HopService<B>,
    B: FromIncoming,
    R: FrontRouter,
{
    serve_inner(listener, make_service, Some(router), None, shutdown, limits).await;
}

async fn serve_inner<M, S, B, R>(
    listener: TcpListener,
    make_service: M,
    front: Option<Arc<R>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
    limits: ServerLimits,
) where
    M: Fn(SocketAddr) -> S,
    S: HopService<B>,
    B: FromIncoming,
    R: FrontRouter,
{
    let builder = Arc::new(builder(&limits));
    // Shared, so a connection's task does not carry a copy.
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let admission = Admission::new(limits.connections);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning (and,
                        // out of descriptors, refuse the waiting client rather than leave it).
                        let refused = admission.out_of_descriptors(&e, &listener);
                        tracing::warn!(error = %e, refused, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // At the connection cap (with none idle to close) or short of descriptors.
                let Some(ticket) = admission.admit(&stream, &stop_rx) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = make_service(remote);
                let builder = builder.clone();
                let front = front.clone();
                let tls = tls.clone();
                let limits = limits.clone();
                let fut = async move {
                    let (stream, prefix) = match front {
                        None => (stream, Bytes::new()),
                        Some(router) => {
                            let mut stop = ticket.stop.clone();
                            let busy = ticket.slot.busy();
                            let fast = front::serve(
                                &*router,
                                stream,
                                remote,
                                &limits,
                                &mut stop,
                                &ticket.slot,
                            );
                            let handoff = fast.await;
                            drop(busy);
                            match handoff {
                                Handoff::Done => return,
                                Handoff::General(stream, prefix) => (stream, prefix),
                            }
                        }
                    };
                    // Boxed: connections served on the fast path keep no room for hyper's.
                    let conn = Connection { remote, builder, limits: *limits, ticket };
                    Box::pin(conn.run(stream, prefix, tls, service)).await;
                };
                conns.spawn(fut);
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    admission.stop_all();
    while conns.join_next().await.is_some() {}
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let head = limits.max_header_size.max(MIN_MAX_HEADER_SIZE);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut h1 = builder.http1();
    h1.timer(TokioTimer::new())
        // The connection's own timers (see `ConnWatch`) replace hyper's, which would also
        // close idle keep-alive connections after the header timeout.
        .header_read_timeout(None)
        // hyper-util exposes no separate head limit; a head that fills the read buffer is
        // answered 431.
        .max_buf_size(head);
    if limits.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(limits.max_headers);
    }
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.h2_keep_alive_interval);
    builder
}

/// hyper's default header count: left alone, hyper keeps headers on its faster stack path.
const HYPER_MAX_HEADERS: usize = 100;

/// One client connection: where it comes from, how it is served and its place under the cap.
struct Connection {
    remote: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ServerLimits,
    ticket: Ticket,
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

impl Connection {
    /// Runs the connection to its end: over TLS first when `tls` is given.
    async fn run<S, B>(
        self,
        stream: TcpStream,
        prefix: Bytes,
        tls: Option<tokio_rustls::TlsAcceptor>,
        service: S,
    ) where
        S: HopService<B>,
        B: FromIncoming,
    {
        // The ticket (the connection's place under the cap) is held to the end.
        let mut stop = self.ticket.stop.clone();
        let watch = Arc::new(ConnWatch::with_slot(
            self.limits.header_read_timeout,
            self.limits.idle_timeout,
            self.ticket.slot.clone(),
        ));
        let peer = peer_handle(&stream);
        let (io, mut back) = WatchedIo::new(stream, prefix, watch.clone());
        let service = Limited {
            inner: Arc::new(service),
            watch: watch.clone(),
            body_read_timeout: self.limits.body_read_timeout,
            min_body_rate: self.limits.min_body_rate,
            body: PhantomData,
        };
        let remote = self.remote;
        let ended = match tls {
            None => {
                let io = if B::OWN_H2 {
                    // The first bytes tell HTTP/2 (its preface) from HTTP/1, under the same
                    // watch as a request head: a client that says nothing, hangs up or meets a
                    // shutdown is let go.
                    let gone = async {
                        match &peer {
                            Some(peer) => client_gone(peer, &watch).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::pin!(gone);
                    let sniffed = tokio::select! {
                        biased;
                        sniffed = sniff_h2(io) => sniffed,
                        _ = stop.wait_for(|s| *s) => return,
                        _ = watch.overstayed() => return,
                        () = &mut gone => return,
                    };
                    match sniffed {
                        Some((io, false)) => io,
                        Some((io, true)) => {
                            let inner = service.inner;
                            serve_own_h2(io, inner, &watch, &self.limits, &mut stop, gone).await;
                            return;
                        }
                        None => return,
                    }
                } else {
                    io
                };
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service);
                drive(conn, &mut stop, &watch, peer.as_ref(), remote).await
            }
            Some(acceptor) => {
                // A client that never finishes its handshake is held to the head's deadline.
                let deadline = self
                    .limits
                    .header_read_timeout
                    .unwrap_or(super::limits::DEFAULT_HEADER_READ_TIMEOUT);
                let handshake = tokio::time::timeout(deadline, acceptor.accept(io));
                let tls = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service);
                drive(conn, &mut stop, &watch, peer.as_ref(), remote).await
            }
        };
        let answered_error = match &ended {
            Some(Err(e)) => {
                tracing::debug!(error = %e, %remote, "connection ended with error");
                e.downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_parse())
            }
            _ => false,
        };
        // hyper answered a malformed or oversized request (400, 431) and closed; the client may
        // still be sending the rest of it.
        if answered_error && let Ok(stream) = back.try_recv() {
            linger(stream).await;
        }
    }
}

/// Serves `conn` until it ends (`Some`), or is cut off (`None`: it overstayed, or the client
/// hung up); a server shutdown asks it to finish first. The connection (and its socket) is
/// dropped before this returns.
async fn drive<I, S>(
    conn: auto::UpgradeableConnection<'_, TokioIo<I>, S, TokioExecutor>,
    stop: &mut watch::Receiver<bool>,
    watch: &ConnWatch,
    peer: Option<&TcpStream>,
    remote: SocketAddr,
) -> Option<Result<(), ConnError>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Served, Error = Infallible>,
    S::Future: Send + 'static,
{
    let gone = async {
        match peer {
            Some(peer) => client_gone(peer, watch).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(gone);
    // Boxed so it can be dropped (and the socket with it) before the caller's linger.
    let mut conn = Box::pin(conn);
    let mut stopping = false;
    let mut going_away = false;
    loop {
        tokio::select! {
            // hyper first: whatever it can finish (an answer to write, say) it does.
            biased;
            res = conn.as_mut() => break Some(res),
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = watch.overstayed(), if !going_away => {
                if !watch.is_h2() {
                    // Idle, or a head that never completed: nothing to lose, hang up.
                    tracing::debug!(%remote, "closing an idle or slow connection");
                    break None;
                }
                // Streams that raced the GOAWAY still finish.
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut gone => {
                // Drops the request in progress, and with it all it holds.
                tracing::debug!(%remote, "client hung up");
                break None;
            }
        }
    }
}

/// Reads a connection's first bytes, up to the length of the HTTP/2 preface (fewer when they
/// stop matching it), and puts them back: whether it speaks HTTP/2 with prior knowledge.
/// `None` when reading fails.
async fn sniff_h2(mut io: WatchedIo) -> Option<(WatchedIo, bool)> {
    let mut seen = [0u8; PREFACE.len()];
    let mut n = 0;
    while n < seen.len() && seen[..n] == PREFACE[..n] {
        match io.read(&mut seen[n..]).await {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(_) => return None,
        }
    }
    io.unread(Bytes::copy_from_slice(&seen[..n]));
    Some((io, seen[..] == PREFACE[..]))
}

/// Runs an HTTP/2 connection on the engine's own server to its end, with the hyper path's
/// rules: a shutdown sends GOAWAY and lets the streams in progress finish, an idle connection
/// past its timeout is asked to go the same way (one that never made a request is closed).
async fn serve_own_h2<S, B>(
    io: WatchedIo,
    service: Arc<S>,
    watch: &Arc<ConnWatch>,
    limits: &ServerLimits,
    stop: &mut watch::Receiver<bool>,
    gone: Pin<&mut impl Future<Output = ()>>,
) where
    S: HopService<B>,
    B: FromIncoming,
{
    let head = limits.max_header_size.max(MIN_MAX_HEADER_SIZE);
    let max_header_list = u32::try_from(head).unwrap_or(u32::MAX);
    let shutdown = Notify::new();
    let conn = h2_server::serve(
        io,
        service,
        watch.clone(),
        limits,
        max_header_list,
        &shutdown,
    );
    tokio::pin!(conn);
    let mut gone = gone;
    let mut stopping = false;
    let mut going_away = false;
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                shutdown.notify_one();
            }
            _ = watch.overstayed(), if !going_away => {
                if !watch.is_h2() {
                    tracing::debug!("closing an HTTP/2 connection that made no request");
                    return;
                }
                going_away = true;
                shutdown.notify_one();
            }
            () = gone.as_mut() => return,
        }
    }
}

/// A hop's request handler as the server loops take it: a `Service` answering with a
/// [`Body`] that never fails, shareable across the connection's requests.
pub trait HopService<B>:
    Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HopService<B> for S where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + Send
        + Sync
        + 'static
{
}

/// Wraps a hop's service: counts each request as in progress on its connection (until its
/// response body ends or is dropped), puts the request body under the read timeout and
/// answers 408 when it fires before the response started.
struct Limited<S, B> {
    /// Shared with each request's future, which calls it: the service's future is then made
    /// in place, inside that boxed future, instead of being moved into it (an HTTP/2 stream's
    /// future is several KB).
    inner: Arc<S>,
    watch: Arc<ConnWatch>,
    body_read_timeout: Option<Duration>,
    min_body_rate: Option<MinBodyRate>,
    body: PhantomData<fn(B)>,
}

type Served = Response<ServedBody>;

impl<S, B> Service<Request<Incoming>> for Limited<S, B>
where
    S: HopService<B>,
    B: FromIncoming,
{
    type Response = Served;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Served, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let version = req.version();
        let guard = self.watch.start(version == Version::HTTP_2);
        let (parts, incoming) = req.into_parts();
        // A body already complete (a GET, say) cannot stall. HTTP/2 streams are exempt: they
        // are flow-controlled and multiplexed, and a quiet client stream is how streaming RPCs
        // look; the revision timeouts still bound them.
        let timeout = self
            .body_read_timeout
            .filter(|_| B::READ_TIMEOUT && !incoming.is_end_stream() && version != Version::HTTP_2);
        let body = ReadTimeoutBody::with_min_rate(incoming, timeout, self.min_body_rate);
        let timed_out = timeout.map(|_| body.timed_out());
        let req = Request::from_parts(parts, B::from_incoming(body));
        let inner = self.inner.clone();
        let (Some(timeout), Some(timed_out)) = (timeout, timed_out) else {
            return Box::pin(async move {
                let Ok(resp) = inner.call(req).await;
                Ok(resp.map(|b| ServedBody::new(b, guard, None)))
            });
        };
        Box::pin(async move {
            let fut = inner.call(req);
            let stall = fired(timed_out.clone());
            tokio::select! {
                biased;
                () = stall => Ok(body_timeout_response(version, guard)),
                resp = fut => {
                    let Ok(resp) = resp;
                    // The answer came from a request whose body had already failed: it is
                    // about the stall, whatever the handler made of it.
                    if *timed_out.borrow() {
                        return Ok(body_timeout_response(version, guard));
                    }
                    let stall: Stall = (Box::pin(fired(timed_out)), timeout);
                    Ok(resp.map(|b| ServedBody::new(b, guard, Some(stall))))
                }
            }
        })
    }
}

/// Resolves when the request body timed out; never if it was dropped without.
async fn fired(mut timed_out: watch::Receiver<bool>) {
    let fired = timed_out.wait_for(|t| *t).await.is_ok();
    if !fired {
        std::future::pending::<()>().await;
    }
}

/// The 408 for a request whose body stalled; HTTP/1 connections close after it (the rest of
/// the body is still owed).
fn body_timeout_response(version: Version, guard: ActiveGuard) -> Served {
    let mut resp = text_response(StatusCode::REQUEST_TIMEOUT, BODY_TIMEOUT_BODY);
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|b| ServedBody::new(b, guard, None))
}

/// Resolves when the request body stalls past its read timeout (the second part).
type Stall = (Pin<Box<dyn Future<Output = ()> + Send>>, Duration);

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted on the connection until it ends or is
    /// dropped, and fails (so the server breaks the response off) if the request body stalls
    /// while it streams.
    struct ServedBody {
        #[pin]
        inner: Body,
        guard: ActiveGuard,
        stall: Option<Stall>,
    }
}

impl ServedBody {
    fn new(inner: Body, guard: ActiveGuard, stall: Option<Stall>) -> Self {
        ServedBody {
            inner,
            guard,
            stall,
        }
    }
}

impl HttpBody for ServedBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some((stalled, timeout)) = this.stall.as_mut()
            && stalled.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(BodyReadTimeout(*timeout).into())));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
