//! gRPC over h2c end to end with the real binary: a Service whose port is named `h2c` runs
//! `rouse-testapp --h2c` (a hand-written gRPC health service and bidirectional echo), and a
//! gRPC client built on hyper's HTTP/2 client (prior knowledge) calls it through the gateway,
//! from zero (through the activator) and warm.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

/// The bound on a call that may wait for a cold start.
const COLD: Duration = Duration::from_secs(60);
/// The bound on every other wait.
const BOUND: Duration = Duration::from_secs(20);
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const ECHO: &str = "/rouse.test.Echo/Stream";
/// A `HealthCheckResponse{status: SERVING}` in its gRPC frame.
const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

/// A Service running the test app over h2c (port named `h2c`), starting at zero.
fn h2c_service(name: &str, marker: &str) -> String {
    let (mk, mv) = marker.split_once('=').unwrap();
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: "0"
    spec:
      containers:
        - command: ["{app}"]
          args: ["--h2c"]
          ports:
            - name: h2c
              containerPort: 8080
          env:
            - {{name: {mk}, value: "{mv}"}}
"#,
        app = testapp_bin().display(),
    )
}

/// A request body fed by a channel, one data frame per message; it ends when the sender drops.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// An HTTP/2 prior-knowledge connection to the gateway, as a gRPC client opens.
async fn connect(gateway: SocketAddr) -> SendRequest<ReqBody> {
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake with the gateway");
    tokio::spawn(conn);
    send
}

fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.into()
}

/// Sends a call to `method` on `host`; the response head, bounded by `limit`.
async fn call(
    send: &mut SendRequest<ReqBody>,
    host: &str,
    method: &str,
    body: ReqBody,
    limit: Duration,
) -> Response<Incoming> {
    let req = Request::post(format!("http://{host}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(limit, send.send_request(req))
        .await
        .expect("a response head in time")
        .expect("the call is answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    resp
}

/// Reads a gRPC response: whole messages as they come, then the trailers.
struct Messages {
    body: Incoming,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
}

impl Messages {
    fn new(resp: Response<Incoming>) -> Messages {
        Messages {
            body: resp.into_body(),
            buf: BytesMut::new(),
            trailers: None,
        }
    }

    /// The next message (framed), or `None` at the end of the call.
    async fn next(&mut self) -> Option<Bytes> {
        tokio::time::timeout(BOUND, async {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                    if self.buf.len() >= 5 + len {
                        return Some(self.buf.split_to(5 + len).freeze());
                    }
                }
                let f = self.body.frame().await?;
                match f.expect("the response streams without error").into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        self.trailers = f.into_trailers().ok();
                        return None;
                    }
                }
            }
        })
        .await
        .expect("a message or the end of the call in time")
    }

    /// The remaining messages and the `grpc-status` trailer.
    async fn finish(mut self) -> (Vec<Bytes>, String) {
        let mut rest = Vec::new();
        while let Some(m) = self.next().await {
            rest.push(m);
        }
        assert!(self.buf.is_empty(), "the call ended inside a message");
        let status = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .expect("trailers with grpc-status reach the client")
            .to_str()
            .unwrap()
            .to_string();
        (rest, status)
    }
}

/// A unary health Check: its messages, `grpc-status` and whether it was a cold start.
async fn check(
    send: &mut SendRequest<ReqBody>,
    host: &str,
    limit: Duration,
) -> (Vec<Bytes>, String, bool) {
    let body = Full::new(frame(&[])).boxed_unsync();
    let resp = call(send, host, CHECK, body, limit).await;
    let cold = resp.headers().contains_key("k-cold-start");
    let (msgs, status) = Messages::new(resp).finish().await;
    (msgs, status, cold)
}

/// The bidirectional echo: each message comes back before the next is sent (full duplex).
async fn bidi_echo(send: &mut SendRequest<ReqBody>, host: &str, limit: Duration) -> bool {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.send(frame(b"hello")).await.unwrap();
    let resp = call(send, host, ECHO, ChannelBody(rx).boxed_unsync(), limit).await;
    let cold = resp.headers().contains_key("k-cold-start");
    let mut msgs = Messages::new(resp);
    assert_eq!(msgs.next().await, Some(frame(b"hello")));
    for i in 0..3 {
        let msg = format!("message {i}: {}", "y".repeat(i * 5000));
        tx.send(frame(msg.as_bytes())).await.unwrap();
        assert_eq!(msgs.next().await, Some(frame(msg.as_bytes())));
    }
    drop(tx);
    let (rest, status) = msgs.finish().await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(status, "0");
    cold
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn grpc_unary_streaming_and_bidi_over_h2c_from_zero_and_warm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("grpc");
    p.apply_wait(&h2c_service("grpc", &marker));
    assert!(
        pids_with_env(&marker).is_empty(),
        "initial-scale 0 starts nothing"
    );
    let host = "grpc.default.localhost";
    let rt = runtime();
    rt.block_on(async {
        let mut send = connect(p.gateway).await;
        // From zero: the activator holds the call, the app starts, the answer comes over h2c
        // with its trailers.
        let (msgs, status, cold) = check(&mut send, host, COLD).await;
        assert_eq!(msgs, vec![Bytes::from_static(&SERVING)]);
        assert_eq!(status, "0");
        assert!(cold, "the first call waited for a cold start");
        // Warm.
        let (msgs, status, cold) = check(&mut send, host, BOUND).await;
        assert_eq!(msgs, vec![Bytes::from_static(&SERVING)]);
        assert_eq!(status, "0");
        assert!(!cold);

        // Server streaming: several SERVING messages, then OK.
        let resp = call(
            &mut send,
            host,
            WATCH,
            Full::new(frame(&[])).boxed_unsync(),
            BOUND,
        )
        .await;
        let (msgs, status) = Messages::new(resp).finish().await;
        assert!(msgs.len() >= 2, "{msgs:?}");
        assert!(msgs.iter().all(|m| m[..] == SERVING), "{msgs:?}");
        assert_eq!(status, "0");

        // Bidirectional streaming, warm.
        assert!(!bidi_echo(&mut send, host, BOUND).await);
    });
    assert_eq!(
        pids_with_env(&marker).len(),
        1,
        "one instance served it all"
    );

    // An HTTP/1.1 client reaches the h2c revision too.
    let r = p.http_get(host, "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Hello World"), "{r:?}");
}

#[test]
fn grpc_bidi_stream_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("grpc-bidi");
    p.apply_wait(&h2c_service("echo", &marker));
    assert!(pids_with_env(&marker).is_empty());
    let rt = runtime();
    rt.block_on(async {
        let mut send = connect(p.gateway).await;
        assert!(
            bidi_echo(&mut send, "echo.default.localhost", COLD).await,
            "the stream waited for a cold start"
        );
    });
    assert_eq!(pids_with_env(&marker).len(), 1);
}
