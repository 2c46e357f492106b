//! An HTTP/1.1 + h2c server loop with graceful shutdown, shared by every listening hop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::Body;

/// How long a client may take to send a request head on HTTP/1.1.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1.1 (keep-alive) and h2c (prior knowledge) connections accepted on `listener`,
/// each handled by the service `make_service(client_addr)` returns.
///
/// When `shutdown` resolves it stops accepting, asks every connection to finish (idle
/// keep-alive connections close at once, in-flight requests and streaming responses complete),
/// and returns once all connections have closed. Dropping the returned future instead aborts
/// every connection at once.
pub async fn serve<M, S>(
    listener: TcpListener,
    make_service: M,
    shutdown: impl Future<Output = ()> + Send,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = make_service(remote);
                let builder = builder.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    tokio::pin!(conn);
                    tokio::select! {
                        res = conn.as_mut() => {
                            if let Err(e) = res {
                                tracing::debug!(error = %e, %remote, "connection ended with error");
                            }
                            return;
                        }
                        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
                    }
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %remote, "connection ended with error");
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}
