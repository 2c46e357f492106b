//! The general path's bodiless requests (an HTTP/2 GET, a request the fast path passed over)
//! sent to an HTTP/1.1 upstream (the app, or a hop in another process) over the fast path's
//! raw keep-alive connections: the head written in one go, the response head parsed in place,
//! the body read by the handler's own task. No client task, channel or pool checkout future
//! per request, which is most of what the pooled hyper client costs.
//!
//! A request that could not reach the upstream (no connection could be made) is handed back
//! untouched, for the pooled client (the queue-proxy's wait for a restarting app) or another
//! endpoint (the gateway's, the activator's).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncReadExt;

use crate::h1::{Framing, HeadFacts, head_facts};
use crate::upstream::{HeadError, HeadStep, Upstream, UpstreamPool};
use crate::{Body, BoxError, boxed, empty, is_upgrade, strip_hop_by_hop};

/// The most a chunk-size or trailer line may take, and all trailers together.
const MAX_LINE: usize = 8 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;
/// How much is read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a raw exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// No connection to the upstream could be made: nothing was sent.
    #[error("cannot connect: {0}")]
    Refused(io::Error),
    /// The connection broke before any response byte.
    #[error("the connection closed without an answer: {0}")]
    Unanswered(io::Error),
    /// Anything else before the response head was complete.
    #[error("{0}")]
    Bad(String),
}

/// Whether `req` may go the raw way: no body, no protocol switch.
pub fn eligible(req: &Request<Body>) -> bool {
    req.body().is_end_stream()
        && !is_upgrade(req)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Sends the bodiless request `parts` to the upstream of `pool` (at `app`, the Host when the
/// request names none) and returns its response, whose body streams from the connection
/// (which goes back to `pool` once the body is read through).
pub async fn send(
    pool: &Arc<UpstreamPool>,
    parts: &mut Parts,
    app: SocketAddr,
) -> Result<Response<Body>, RawError> {
    strip_hop_by_hop(&mut parts.headers);
    let mut head = Vec::with_capacity(512);
    write_head(parts, app, &mut head);
    let head_request = parts.method == Method::HEAD;
    let pooled = pool.checkout();
    let reused = pooled.is_some();
    let conn = match pooled {
        Some(conn) => conn,
        None => pool.connect().await.map_err(RawError::Refused)?,
    };
    match exchange(conn, &head, head_request).await {
        Err(RawError::Unanswered(_)) if reused && is_idempotent(&parts.method) => {
            // A kept-alive connection the upstream had closed: safe to send once more.
            let conn = pool.connect().await.map_err(RawError::Refused)?;
            exchange(conn, &head, head_request).await
        }
        other => other,
    }
    .map(|(conn, resp)| finish(pool, conn, resp))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request head for the upstream: request line, `Host` (from the URI for an HTTP/2 request),
/// the headers as they are (hop-by-hop ones already gone).
fn write_head(parts: &Parts, app: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        match parts.uri.authority() {
            Some(a) => out.extend_from_slice(a.as_str().as_bytes()),
            None => out.extend_from_slice(app.to_string().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed final response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    facts: HeadFacts,
    /// Where the body starts in the connection's buffer.
    body_at: usize,
}

/// Writes the request and reads the final response head (interim ones skipped).
async fn exchange(
    mut conn: Upstream,
    request: &[u8],
    head_request: bool,
) -> Result<(Upstream, Head), RawError> {
    match conn
        .exchange(request, |bytes| parse_head(bytes, head_request))
        .await
    {
        Ok((mut head, skipped)) => {
            head.body_at += skipped;
            Ok((conn, head))
        }
        Err(HeadError::Unanswered(e)) => Err(RawError::Unanswered(e)),
        Err(HeadError::Bad(e)) => Err(RawError::Bad(e)),
    }
}

fn parse_head(buf: &[u8], head_request: bool) -> Result<HeadStep<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(HeadStep::Partial),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    if code == 101 {
        return Err("a protocol switch that was not asked for".into());
    }
    if (100..200).contains(&code) {
        return Ok(HeadStep::Interim(body_at));
    }
    let status = StatusCode::from_u16(code).map_err(|e| e.to_string())?;
    let facts =
        head_facts(resp.version, code, resp.headers, head_request).map_err(|e| e.to_string())?;
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("invalid value of header {:?}", h.name))?;
        map.append(name, value);
    }
    // As the pooled client's answers: connection-specific headers stay with this hop.
    strip_hop_by_hop(&mut map);
    if facts.chunked {
        map.remove(header::CONTENT_LENGTH);
    }
    Ok(HeadStep::Final(Head {
        status,
        headers: map,
        facts,
        body_at,
    }))
}

/// The response for the caller: a body that came whole with the head is handed over as is
/// (and the connection goes back to the pool now); any other streams from the connection.
fn finish(pool: &Arc<UpstreamPool>, mut conn: Upstream, head: Head) -> Response<Body> {
    let Head {
        status,
        headers,
        facts,
        body_at,
    } = head;
    let arrived = &conn.buf[body_at..];
    let body = match facts.framing {
        Framing::Empty => {
            if facts.reusable && arrived.is_empty() {
                pool.checkin(conn);
            }
            empty()
        }
        Framing::Length(n) if arrived.len() as u64 >= n => {
            let n = n as usize;
            let bytes = Bytes::copy_from_slice(&arrived[..n]);
            if facts.reusable && arrived.len() == n {
                pool.checkin(conn);
            }
            crate::full(bytes)
        }
        framing => {
            let buf = BytesMut::from(arrived);
            conn.buf.clear();
            let left = match framing {
                Framing::Length(n) => Left::Bytes(n),
                Framing::Chunked => Left::Chunked(Chunk::Size),
                _ => Left::UntilClose,
            };
            boxed(RawBody {
                conn: Some(conn),
                pool: pool.clone(),
                reusable: facts.reusable,
                buf,
                left,
                trailers_len: 0,
                trailers: None,
            })
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = headers;
    resp
}

/// What is left of a streaming body.
#[derive(Debug)]
enum Left {
    Bytes(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Expecting trailer lines, then the blank line.
    Trailers,
}

/// A response body read from the app's connection by whoever polls it.
struct RawBody {
    conn: Option<Upstream>,
    pool: Arc<UpstreamPool>,
    reusable: bool,
    /// Bytes read from the app and not yet given out.
    buf: BytesMut,
    left: Left,
    trailers_len: usize,
    trailers: Option<HeaderMap>,
}

impl RawBody {
    /// The next frame that the bytes already read make, if any.
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        loop {
            match &mut self.left {
                Left::Done => return Ok(None),
                Left::UntilClose => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Frame::data(self.buf.split().freeze())));
                }
                Left::Bytes(n) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*n).min(self.buf.len() as u64) as usize;
                    *n -= take as u64;
                    if *n == 0 {
                        self.left = Left::Done;
                    }
                    return Ok(Some(Frame::data(self.buf.split_to(take).freeze())));
                }
                Left::Chunked(Chunk::Data(n)) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*n).min(self.buf.len() as u64) as usize;
                    *n -= take as u64;
                    if *n == 0 {
                        self.left = Left::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Some(Frame::data(self.buf.split_to(take).freeze())));
                }
                Left::Chunked(Chunk::DataEnd) => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err("malformed chunked body".into());
                    }
                    self.buf.advance(2);
                    self.left = Left::Chunked(Chunk::Size);
                }
                Left::Chunked(Chunk::Size) => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line).ok_or("malformed chunk size")?;
                    self.left = Left::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Left::Chunked(Chunk::Trailers) => {
                    let Some(line) = self.line()? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.left = Left::Done;
                        return Ok(self.trailers.take().map(Frame::trailers));
                    }
                    self.trailers_len += line.len();
                    if self.trailers_len > MAX_TRAILERS {
                        return Err("trailers too large".into());
                    }
                    let (name, value) = trailer(&line).ok_or("malformed trailer")?;
                    self.trailers
                        .get_or_insert_with(HeaderMap::new)
                        .append(name, value);
                }
            }
        }
    }

    /// The next CRLF-ended line (without it), if it has arrived.
    fn line(&mut self) -> Result<Option<Bytes>, BoxError> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                let line = self.buf.split_to(at).freeze();
                self.buf.advance(2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err("chunked body line too long".into()),
            None => Ok(None),
        }
    }

    /// The body was read through: the connection may carry the next request.
    fn done(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && self.buf.is_empty()
        {
            self.pool.checkin(conn);
        }
    }
}

/// A chunk-size line (without its CRLF): 1 to 15 hex digits, then blanks and an extension
/// or nothing; no control characters (a bare LF, say).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let ext = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len());
    let rest = &rest[ext..];
    if rest.first().is_some_and(|b| *b != b';')
        || rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

fn trailer(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    // Only blanks are trimmed: a CR or LF inside the line is refused, not cut off.
    let value = &line[colon + 1..];
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    let value = match (start, end) {
        (Some(s), Some(e)) => &value[s..=e],
        _ => &[],
    };
    Some((name, HeaderValue::from_bytes(value).ok()?))
}

/// Decodes a chunked body held whole in `data` as the general path's response reader does:
/// `Ok(Some((data, end)))` when it ends after `end` bytes, `Ok(None)` when more is needed.
/// For the fuzz targets.
#[doc(hidden)]
pub fn decode_chunked(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, BoxError> {
    let mut body = RawBody {
        conn: None,
        pool: Arc::new(UpstreamPool::new(([127, 0, 0, 1], 9).into())),
        reusable: false,
        buf: BytesMut::from(data),
        left: Left::Chunked(Chunk::Size),
        trailers_len: 0,
        trailers: None,
    };
    let mut out = Vec::new();
    loop {
        match body.decode()? {
            Some(frame) => {
                if let Some(d) = frame.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            None if matches!(body.left, Left::Done) => {
                return Ok(Some((out, data.len() - body.buf.len())));
            }
            None => return Ok(None),
        }
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.decode()? {
                if matches!(this.left, Left::Done) {
                    this.done();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if matches!(this.left, Left::Done) {
                this.done();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(READ_CHUNK);
            // A fresh `read_buf` future each poll: it keeps no state of its own.
            let read = std::pin::pin!(conn.stream.read_buf(&mut this.buf));
            let n = ready!(read.poll(cx))?;
            if n == 0 {
                this.conn = None;
                if matches!(this.left, Left::UntilClose) {
                    this.left = Left::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(
                    "the upstream closed the connection mid-body".into()
                )));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Bytes(n) => SizeHint::with_exact(n),
            Left::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_and_trailers_parse() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"A;name=value"), Some(10));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"xyz"), None);
        assert_eq!(chunk_size(b"fffffffffffffffff"), None);
        let (n, v) = trailer(b"grpc-status: 0").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("grpc-status", "0"));
        assert!(trailer(b"no colon").is_none());
        // Found by the `chunked` fuzz target: a CR inside a trailer was trimmed away.
        assert!(trailer(b"V: \r\xc4\x87").is_none());
        for bad in [
            &b"5g"[..],
            b"0x5",
            b"-5",
            b"10000000000000000",
            b"5\n",
            b"5 x",
            b"5;a\x01",
        ] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
        assert_eq!(chunk_size(b"5 \t;ext"), Some(5));
        let (body, end) = decode_chunked(b"3\r\nabc\r\n0\r\nX: 1\r\n\r\nNEXT")
            .unwrap()
            .unwrap();
        assert_eq!((body.as_slice(), end), (&b"abc"[..], 19));
        assert!(decode_chunked(b"3\r\nabc\r\n0\r\nX:\r1\r\n\r\n").is_err());
        assert!(decode_chunked(b"3\r\nab").unwrap().is_none());
    }
}
