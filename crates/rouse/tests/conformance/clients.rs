//! Protocol clients the e2e cases need beyond plain GETs: a WebSocket (RFC 6455, the
//! `wsserver` role's echo) and gRPC over HTTP/2 prior knowledge (the `grpc-ping` role: a unary
//! health Check and a bidirectional stream).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::platform::Target;

/// A WebSocket to the test app's `/ws`, with the handshake's response head.
pub struct WebSocket(TcpStream, pub String);

impl WebSocket {
    /// Opens one (`query` is appended to `/ws`); the handshake's status line on refusal.
    pub fn connect(t: &Target, query: &str) -> Result<WebSocket, String> {
        let mut s = TcpStream::connect(t.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /ws{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            t.host
        )
        .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => {
                    return Err(format!(
                        "handshake cut short: {}",
                        String::from_utf8_lossy(&head)
                    ));
                }
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head.lines().next().unwrap_or("").to_string());
        }
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        Ok(WebSocket(s, head))
    }

    /// Sends a text message (masked, as a client must; under 126 bytes).
    pub fn send(&mut self, text: &str) {
        assert!(text.len() < 126);
        let mask = [7u8, 1, 3, 9];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).unwrap();
    }

    /// Reads a frame: its opcode and payload (under 126 bytes).
    pub fn read(&mut self) -> (u8, Vec<u8>) {
        let mut hdr = [0u8; 2];
        self.0.read_exact(&mut hdr).unwrap();
        let len = (hdr[1] & 0x7f) as usize;
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).unwrap();
        (hdr[0] & 0x0f, payload)
    }

    /// Sends `text` and expects it back.
    pub fn echo(&mut self, text: &str) {
        self.send(text);
        let (op, payload) = self.read();
        assert_eq!(op, 1, "a text frame");
        assert_eq!(String::from_utf8(payload).unwrap(), text);
    }

    /// Sends a close frame (code 1000) and expects the close echoed.
    pub fn close(mut self) {
        let mask = [0u8; 4];
        self.0.write_all(&[0x88, 0x82]).unwrap();
        self.0.write_all(&mask).unwrap();
        self.0.write_all(&1000u16.to_be_bytes()).unwrap();
        let (op, payload) = self.read();
        assert_eq!(op, 8, "a close frame");
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    }
}

const CHECK: &str = "/grpc.health.v1.Health/Check";
const ECHO: &str = "/rouse.test.Echo/Stream";
/// A `HealthCheckResponse{status: SERVING}` in its gRPC frame.
const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

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

fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.into()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(t: &Target) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

fn request(t: &Target, method: &str, body: ReqBody) -> hyper::Request<ReqBody> {
    hyper::Request::post(format!("http://{}{method}", t.host))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// Reads whole gRPC messages and finally the `grpc-status` trailer.
struct Reader {
    body: hyper::body::Incoming,
    buf: BytesMut,
    status: Option<String>,
}

impl Reader {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    return Some(self.buf.split_to(5 + len).freeze());
                }
            }
            let f = self.body.frame().await?.expect("the response streams");
            match f.into_data() {
                Ok(d) => self.buf.extend_from_slice(&d),
                Err(f) => {
                    self.status = f.into_trailers().ok().and_then(|t| {
                        t.get("grpc-status")
                            .map(|v| v.to_str().unwrap().to_string())
                    });
                    return None;
                }
            }
        }
    }
}

/// A unary ping (health Check): whether it answered SERVING with grpc-status 0.
pub fn unary_ping(t: &Target, limit: Duration) -> bool {
    runtime().block_on(async {
        tokio::time::timeout(limit, async {
            let mut send = connect(t).await;
            let resp = send
                .send_request(request(t, CHECK, Full::new(frame(&[])).boxed_unsync()))
                .await
                .expect("answered");
            assert_eq!(resp.status(), 200);
            let mut r = Reader {
                body: resp.into_body(),
                buf: BytesMut::new(),
                status: None,
            };
            let msg = r.next().await;
            while r.next().await.is_some() {}
            msg.as_deref() == Some(&SERVING[..]) && r.status.as_deref() == Some("0")
        })
        .await
        .expect("the ping in time")
    })
}

/// A streaming ping: `n` messages, each echoed before the next is sent; whether all came back
/// and the call ended with grpc-status 0.
pub fn stream_ping(t: &Target, n: usize, limit: Duration) -> bool {
    runtime().block_on(async {
        tokio::time::timeout(limit, async {
            let mut send = connect(t).await;
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tx.send(frame(b"ping 0")).await.unwrap();
            let resp = send
                .send_request(request(t, ECHO, ChannelBody(rx).boxed_unsync()))
                .await
                .expect("answered");
            assert_eq!(resp.status(), 200);
            let mut r = Reader {
                body: resp.into_body(),
                buf: BytesMut::new(),
                status: None,
            };
            let mut ok = r.next().await == Some(frame(b"ping 0"));
            for i in 1..n {
                let msg = format!("ping {i}");
                tx.send(frame(msg.as_bytes())).await.unwrap();
                ok &= r.next().await == Some(frame(msg.as_bytes()));
            }
            drop(tx);
            while r.next().await.is_some() {}
            ok && r.status.as_deref() == Some("0")
        })
        .await
        .expect("the stream in time")
    })
}

/// Holds `streams` streaming pings open at once on separate connections for `hold`, each
/// echoing a message every 200 ms; how many of them worked throughout and ended with
/// grpc-status 0 (each open stream is one request in flight, so this is concurrency load).
pub fn hold_streams(t: &Target, streams: usize, hold: Duration) -> usize {
    runtime().block_on(async {
        let tasks: Vec<_> = (0..streams)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    let limit = hold + Duration::from_secs(60);
                    tokio::time::timeout(limit, async move {
                        let mut send = connect(&t).await;
                        let (tx, rx) = mpsc::channel::<Bytes>(4);
                        let resp = send
                            .send_request(request(&t, ECHO, ChannelBody(rx).boxed_unsync()))
                            .await
                            .ok()?;
                        let mut r = Reader {
                            body: resp.into_body(),
                            buf: BytesMut::new(),
                            status: None,
                        };
                        let started = tokio::time::Instant::now();
                        let mut i = 0;
                        while started.elapsed() < hold {
                            let msg = frame(format!("ping {i}").as_bytes());
                            tx.send(msg.clone()).await.ok()?;
                            if r.next().await != Some(msg) {
                                return None;
                            }
                            i += 1;
                            // Pacing the pings, not waiting for a condition.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        drop(tx);
                        while r.next().await.is_some() {}
                        (r.status.as_deref() == Some("0")).then_some(())
                    })
                    .await
                    .ok()
                    .flatten()
                })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            if let Ok(Some(())) = task.await {
                ok += 1;
            }
        }
        ok
    })
}
