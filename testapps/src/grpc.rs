//! A hand-written gRPC server (no code generation): the standard health service
//! (`grpc.health.v1.Health`, `Check` unary and `Watch` server streaming) and a bidirectional
//! echo (`rouse.test.Echo/Stream`). gRPC needs HTTP/2 (trailers, full duplex), so it is meant
//! for `--h2c`.
//!
//! Wire format: each message is a frame of a compressed flag (u8, always 0 here), a big-endian
//! u32 length and the protobuf bytes; the call ends with trailers carrying `grpc-status`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::Body;

/// Unary health check: `HealthCheckRequest{service}` → `HealthCheckResponse{status}`.
pub const CHECK: &str = "/grpc.health.v1.Health/Check";
/// Server-streaming health watch: the status every [`WATCH_INTERVAL`] for [`WATCH_FOR`].
pub const WATCH: &str = "/grpc.health.v1.Health/Watch";
/// Bidirectional echo: every request message comes back as soon as it arrives.
pub const ECHO: &str = "/rouse.test.Echo/Stream";

/// How often `Watch` sends the status.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// How long `Watch` streams before ending the call.
const WATCH_FOR: Duration = Duration::from_secs(1);
/// The largest message accepted (gRPC's default receive limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// `HealthCheckResponse.ServingStatus` values.
const SERVING: u64 = 1;
const SERVICE_UNKNOWN: u64 = 3;

/// gRPC status codes used here.
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
const UNIMPLEMENTED: u32 = 12;
const INTERNAL: u32 = 13;

/// Whether `path` names one of the methods served here.
pub fn is_method(path: &str) -> bool {
    matches!(path, CHECK | WATCH | ECHO)
}

/// Serves one call of a method [`is_method`] accepts.
pub async fn serve(req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "gRPC calls are POSTs\n");
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if !grpc {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/grpc\n",
        );
    }
    let path = req.uri().path().to_string();
    let (tx, resp) = streaming_response();
    let body = req.into_body();
    match path.as_str() {
        CHECK => {
            tokio::spawn(async move {
                let end = match health_request(body).await {
                    Err(status) => status,
                    Ok(service) if service.is_empty() => {
                        let _ = tx
                            .send(Frame::data(message(&status_message(SERVING))))
                            .await;
                        Status::ok()
                    }
                    Ok(service) => Status::new(NOT_FOUND, format!("unknown service {service}")),
                };
                let _ = tx.send(end.trailers()).await;
            });
        }
        WATCH => {
            tokio::spawn(async move {
                let service = match health_request(body).await {
                    Ok(s) => s,
                    Err(status) => {
                        let _ = tx.send(status.trailers()).await;
                        return;
                    }
                };
                let status = if service.is_empty() {
                    SERVING
                } else {
                    SERVICE_UNKNOWN
                };
                let msg = message(&status_message(status));
                let end = tokio::time::Instant::now() + WATCH_FOR;
                let mut tick = tokio::time::interval(WATCH_INTERVAL);
                loop {
                    tick.tick().await;
                    if tokio::time::Instant::now() >= end {
                        break;
                    }
                    if tx.send(Frame::data(msg.clone())).await.is_err() {
                        return; // the client went away
                    }
                }
                let _ = tx.send(Status::ok().trailers()).await;
            });
        }
        _ => {
            tokio::spawn(echo(body, tx));
        }
    }
    resp
}

/// Echoes each request message as it arrives, then ends with OK when the client does.
async fn echo(mut body: Incoming, tx: mpsc::Sender<Frame<Bytes>>) {
    let mut decoder = Decoder::default();
    let end = loop {
        match body.frame().await {
            None => break Status::ok(),
            Some(Err(e)) => break Status::new(INTERNAL, format!("reading the request: {e}")),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // request trailers: nothing to echo
                };
                decoder.push(&data);
                loop {
                    match decoder.next() {
                        Ok(Some(msg)) => {
                            if tx.send(Frame::data(message(&msg))).await.is_err() {
                                return; // the client went away
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let _ = tx.send(status.trailers()).await;
                            return;
                        }
                    }
                }
            }
        }
    };
    let end = if decoder.is_empty() {
        end
    } else {
        Status::new(INTERNAL, "the request ended inside a message")
    };
    let _ = tx.send(end.trailers()).await;
}

/// Reads a unary request's one `HealthCheckRequest` and returns its `service`.
async fn health_request(mut body: Incoming) -> Result<String, Status> {
    let mut decoder = Decoder::default();
    let mut messages = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Status::new(INTERNAL, format!("reading the request: {e}")))?;
        if let Ok(data) = frame.into_data() {
            decoder.push(&data);
            while let Some(msg) = decoder.next()? {
                messages.push(msg);
            }
        }
    }
    if !decoder.is_empty() {
        return Err(Status::new(INTERNAL, "the request ended inside a message"));
    }
    match messages.as_slice() {
        [msg] => parse_service(msg),
        _ => Err(Status::new(
            UNIMPLEMENTED,
            format!("a unary call takes one message, got {}", messages.len()),
        )),
    }
}

/// The `service` field (1, a string) of a `HealthCheckRequest`; unknown fields are skipped.
fn parse_service(mut msg: &[u8]) -> Result<String, Status> {
    let bad = |why: &str| Status::new(INTERNAL, format!("bad HealthCheckRequest: {why}"));
    let mut service = String::new();
    while !msg.is_empty() {
        let key = varint(&mut msg).ok_or_else(|| bad("truncated tag"))?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut msg).ok_or_else(|| bad("truncated varint"))?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if msg.len() < n {
                    return Err(bad("truncated fixed field"));
                }
                msg.advance(n);
            }
            2 => {
                let len = varint(&mut msg).ok_or_else(|| bad("truncated length"))? as usize;
                if msg.len() < len {
                    return Err(bad("truncated field"));
                }
                if field == 1 {
                    service = String::from_utf8(msg[..len].to_vec())
                        .map_err(|_| bad("service is not UTF-8"))?;
                }
                msg.advance(len);
            }
            w => return Err(bad(&format!("unknown wire type {w}"))),
        }
    }
    Ok(service)
}

/// Reads a protobuf varint.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A `HealthCheckResponse` with this status (field 1, varint).
fn status_message(status: u64) -> Vec<u8> {
    debug_assert!(status < 0x80, "one-byte enum values only");
    vec![0x08, status as u8]
}

/// Frames a message: no compression, big-endian length, the bytes.
fn message(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// Splits a byte stream into gRPC messages, whatever the chunking.
#[derive(Default)]
struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one is buffered.
    fn next(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::new(UNIMPLEMENTED, "compressed messages"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(Status::new(
                INVALID_ARGUMENT,
                format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// How a call ends: `grpc-status` and, unless OK, `grpc-message`.
#[derive(Debug)]
struct Status {
    code: u32,
    message: String,
}

impl Status {
    fn ok() -> Status {
        Status::new(OK, "")
    }

    fn new(code: u32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    fn trailers(&self) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from(self.code));
        if !self.message.is_empty() {
            // grpc-message is percent-encoded; keep printable ASCII, encode the rest.
            let encoded: String = self
                .message
                .bytes()
                .map(|b| match b {
                    b' '..=b'~' if b != b'%' => (b as char).to_string(),
                    b => format!("%{b:02X}"),
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                t.insert("grpc-message", v);
            }
        }
        Frame::trailers(t)
    }
}

/// A 200 `application/grpc` response whose frames (messages, then trailers) come from the
/// returned sender as they are sent.
fn streaming_response() -> (mpsc::Sender<Frame<Bytes>>, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(16);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, hyper::Error>(f), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    (tx, resp)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_splits_messages_across_chunks() {
        let mut d = Decoder::default();
        let a = message(b"hello");
        let b = message(b"");
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        d.push(&all[..3]);
        assert!(d.next().unwrap().is_none());
        d.push(&all[3..]);
        assert_eq!(d.next().unwrap().unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(d.next().unwrap().unwrap(), Bytes::new());
        assert!(d.next().unwrap().is_none());
        assert!(d.is_empty());
        d.push(&[1, 0, 0, 0, 0]);
        assert_eq!(d.next().err().map(|s| s.code), Some(UNIMPLEMENTED));
    }

    #[test]
    fn health_request_service_is_parsed_and_unknown_fields_skipped() {
        assert_eq!(parse_service(&[]).ok().as_deref(), Some(""));
        // field 2 varint 150, then service = "db"
        let msg = [0x10, 0x96, 0x01, 0x0a, 0x02, b'd', b'b'];
        assert_eq!(parse_service(&msg).ok().as_deref(), Some("db"));
        assert!(parse_service(&[0x0a, 0x05, b'x']).is_err());
    }

    #[test]
    fn serving_response_is_field_one_varint_one() {
        assert_eq!(
            message(&status_message(SERVING)).to_vec(),
            vec![0, 0, 0, 0, 2, 0x08, 0x01]
        );
    }
}
