//! The gRPC health probe (`grpc.health.v1.Health/Check`), spoken by hand over HTTP/2
//! cleartext: a one-field protobuf request in a gRPC frame, and the response's `grpc-status`
//! and serving status read back.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{PROBE_USER_AGENT, ProbeFailure, chain};

/// The health service's Check method.
pub(crate) const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
pub(crate) const SERVING: u64 = 1;
/// The most of a response body read (a health answer is a few bytes).
const MAX_BODY: usize = 64 * 1024;

/// One Check call against the app; passes on OK with status SERVING.
pub(crate) async fn check(app: SocketAddr, service: &str) -> Result<(), ProbeFailure> {
    let tcp = TcpStream::connect(app)
        .await
        .map_err(|e| ProbeFailure::Connect(format!("{app}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| ProbeFailure::Protocol(format!("HTTP/2 handshake: {}", chain(&e))))?;
    // The connection task ends with the probe (on timeout too).
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::post(format!("http://{app}{CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, PROBE_USER_AGENT)
        .body(Full::new(encode_request(service)))
        .map_err(|e| ProbeFailure::Protocol(format!("cannot build the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ProbeFailure::Protocol(chain(&e)))?;
    if resp.status() != StatusCode::OK {
        return Err(ProbeFailure::Status(resp.status().as_u16()));
    }
    let in_headers = grpc_status(resp.headers());
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ProbeFailure::Protocol(format!("reading the answer: {e}")))?;
    drop(driver);
    let status = body
        .trailers()
        .and_then(grpc_status)
        .or(in_headers)
        .ok_or_else(|| ProbeFailure::Protocol("the answer has no grpc-status".into()))?;
    if status.0 != 0 {
        return Err(ProbeFailure::GrpcStatus {
            code: status.0,
            message: status.1,
        });
    }
    let bytes = body.to_bytes();
    let msg = decode_frame(&bytes).map_err(ProbeFailure::Protocol)?;
    match decode_serving_status(msg).map_err(ProbeFailure::Protocol)? {
        SERVING => Ok(()),
        other => Err(ProbeFailure::NotServing(serving_status_name(other))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `grpc-status` (and `grpc-message`) from headers or trailers.
fn grpc_status(h: &HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = h
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some((code, message))
}

/// A gRPC frame holding `HealthCheckRequest { service }` (the field is left out when empty,
/// as protobuf does for a default value).
pub(crate) fn encode_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0); // not compressed
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// The message of the first gRPC frame in `body`.
pub(crate) fn decode_frame(body: &[u8]) -> Result<&[u8], String> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err("the answer has no message".into());
    };
    if flag != 0 {
        return Err("the answer is compressed, which the probe did not ask for".into());
    }
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("the answer's frame header is cut short")?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    rest.get(4..4 + len)
        .ok_or_else(|| format!("the answer's message is cut short (want {len} bytes)"))
}

/// `HealthCheckResponse.status` (field 1, a varint); absent means 0 (`UNKNOWN`). Other fields
/// are skipped; a repeated field's last value wins, as protobuf says.
pub(crate) fn decode_serving_status(mut msg: &[u8]) -> Result<u64, String> {
    let mut status = 0;
    while !msg.is_empty() {
        let key = read_varint(&mut msg)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = read_varint(&mut msg)?;
                if field == 1 {
                    status = v;
                }
            }
            1 => msg = skip(msg, 8)?,
            2 => {
                let len = read_varint(&mut msg)?;
                msg = skip(msg, usize::try_from(len).map_err(|_| "field too long")?)?;
            }
            5 => msg = skip(msg, 4)?,
            w => return Err(format!("unsupported protobuf wire type {w}")),
        }
    }
    Ok(status)
}

fn skip(msg: &[u8], n: usize) -> Result<&[u8], String> {
    msg.get(n..)
        .ok_or_else(|| "the answer's message is malformed (a field runs past its end)".into())
}

fn read_varint(msg: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = msg.split_first() else {
            return Err("the answer's message is malformed (a varint is cut short)".into());
        };
        *msg = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("the answer's message is malformed (a varint is too long)".into())
}

/// The `ServingStatus` name of a value.
fn serving_status_name(v: u64) -> String {
    match v {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// The name of a gRPC status code.
pub(crate) fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("unknown code")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_the_service_name() {
        assert_eq!(&encode_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &encode_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        // A name of 200 bytes takes a two-byte varint length.
        let long = "x".repeat(200);
        let f = encode_request(&long);
        assert_eq!(&f[..8], &[0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
        assert_eq!(f.len(), 5 + 203);
    }

    #[test]
    fn response_status_is_read_from_the_first_frame() {
        let serving = [0, 0, 0, 0, 2, 0x08, 1];
        let msg = decode_frame(&serving).unwrap();
        assert_eq!(decode_serving_status(msg), Ok(SERVING));
        assert_eq!(decode_serving_status(&[0x08, 2]), Ok(2));
        // Empty message: the default, UNKNOWN.
        assert_eq!(decode_frame(&[0, 0, 0, 0, 0]).unwrap(), &[] as &[u8]);
        assert_eq!(decode_serving_status(&[]), Ok(0));
        // Unknown fields of every wire type are skipped; the last status wins.
        let msg = [
            0x10, 0x96, 0x01, // field 2 varint 150
            0x1a, 2, b'h', b'i', // field 3 bytes
            0x21, 1, 2, 3, 4, 5, 6, 7, 8, // field 4 fixed64
            0x2d, 1, 2, 3, 4, // field 5 fixed32
            0x08, 2, 0x08, 1,
        ];
        assert_eq!(decode_serving_status(&msg), Ok(SERVING));
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[0, 0, 0]).is_err());
        assert!(decode_frame(&[0, 0, 0, 0, 3, 0x08]).is_err());
        assert!(
            decode_frame(&[1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("compressed")
        );
        assert!(decode_serving_status(&[0x08]).is_err());
        assert!(decode_serving_status(&[0x08, 0x80]).is_err());
        assert!(decode_serving_status(&[0x1a, 5, b'x']).is_err());
        assert!(decode_serving_status(&[0x0b]).is_err()); // group start
        assert!(
            decode_serving_status(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
    }

    #[test]
    fn names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(12), "UNIMPLEMENTED");
        assert_eq!(code_name(99), "unknown code");
        assert_eq!(serving_status_name(2), "NOT_SERVING");
        assert_eq!(serving_status_name(7), "7");
    }
}
