//! Raw HTTP/1.1 pieces for the fast path ([`super::front`]): parsing a request head in place,
//! rewriting it for the next hop, parsing a response head and finding where its body ends, all
//! on byte slices, without building header maps.
//!
//! Only plain requests qualify ([`FastRequest::check`]); anything unusual (HTTP/1.0, a
//! chunked or large request body, `Expect`, `Upgrade`, `Connection` options, a malformed head)
//! goes to the general server, which handles every case.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::charset::{host_kind, is_name, is_tchar, valid_host};
use crate::headers::{RequestHeader, is_hop_by_hop_name, push_token_or_quoted, request_header};
use crate::lines::LineCopy;

/// The largest request body the fast path buffers before forwarding; larger ones stream
/// through the general server.
pub const MAX_FAST_BODY: u64 = 64 * 1024;
/// Header fields a fast-path head may have; more goes to the general server (which answers
/// 431 past its own limit).
pub const MAX_FAST_HEADERS: usize = 64;

/// A request head that parsed and qualifies for the fast path.
#[derive(Debug)]
pub struct FastRequest<'a> {
    /// The method.
    pub method: &'a str,
    /// The request target as sent (origin form).
    pub target: &'a str,
    /// The Host header.
    pub host: &'a str,
    /// The header fields as sent.
    pub headers: &'a [httparse::Header<'a>],
    /// Bytes of the head, the blank line included.
    pub head_len: usize,
    /// The body's length (Content-Length; 0 without).
    pub body_len: usize,
    /// Marked `K-Proxy-Request: activator` (honoured only by a hop behind the edge).
    pub from_activator: bool,
    /// The client's Host as a proxy hop moved it aside (`K-Original-Host`; honoured only by a
    /// hop behind the edge).
    pub original_host: Option<&'a [u8]>,
    /// The head's bytes (what the fields are slices of).
    head: &'a [u8],
    /// The Host is a token (written as it is in `Forwarded: host=`).
    host_token: bool,
}

/// What [`FastRequest::check`] found in a plain request's headers.
struct Checked<'a> {
    host: &'a str,
    host_token: bool,
    body_len: usize,
    from_activator: bool,
    original_host: Option<&'a [u8]>,
}

/// What parsing the start of a buffer gave.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A head that qualifies.
    Fast(FastRequest<'a>),
    /// The head is not complete yet.
    Partial,
    /// A complete head the fast path does not take, or a malformed one: the general server
    /// answers it.
    Other,
}

/// Room for a request head's header fields ([`FastRequest::parse`]), left uninitialized: the
/// parser writes only the fields a head has.
pub type HeaderSlots<'a> = [MaybeUninit<httparse::Header<'a>>; MAX_FAST_HEADERS];

/// Empty [`HeaderSlots`].
pub const fn header_slots<'a>() -> HeaderSlots<'a> {
    [const { MaybeUninit::uninit() }; MAX_FAST_HEADERS]
}

impl<'a> FastRequest<'a> {
    /// Parses the head at the start of `buf` (with `headers` as scratch space).
    pub fn parse(
        buf: &'a [u8],
        headers: &'a mut [MaybeUninit<httparse::Header<'a>>],
    ) -> Parsed<'a> {
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Other;
        };
        if !target.starts_with('/') {
            return Parsed::Other;
        }
        let headers: &'a [httparse::Header<'a>] = req.headers;
        match Self::check(headers) {
            Some(Checked {
                host,
                host_token,
                body_len,
                from_activator,
                original_host,
            }) => Parsed::Fast(FastRequest {
                method,
                target,
                host,
                headers,
                head_len,
                body_len,
                from_activator,
                original_host,
                head: &buf[..head_len],
                host_token,
            }),
            None => Parsed::Other,
        }
    }

    /// What the fast path needs of a plain request's headers; `None` for anything the general
    /// server must handle (health checks among them). Names are told apart by their length
    /// first: most are none of these, and cost one comparison.
    fn check(headers: &'a [httparse::Header<'a>]) -> Option<Checked<'a>> {
        let mut host = None;
        let mut body_len = None;
        let mut from_activator = false;
        let mut original_host = None;
        for h in headers {
            let name = h.name;
            let is = |known: &str| is_name(name.as_bytes(), known.as_bytes());
            match name.len() {
                4 if is("host") => {
                    if host.is_some() {
                        return None;
                    }
                    host = Some(std::str::from_utf8(h.value).ok()?);
                }
                14 if is("content-length") => {
                    let n = digits(h.value)?;
                    if body_len.is_some() || n > MAX_FAST_BODY {
                        return None;
                    }
                    body_len = Some(n as usize);
                }
                // Only the default may be repeated; options and close go the general way.
                10 if is("connection") && !trimmed(h.value).eq_ignore_ascii_case(b"keep-alive") => {
                    return None;
                }
                10 if is("user-agent") && is_probe_agent(h.value) => return None,
                6 if is("expect") => return None,
                7 if is("upgrade") => return None,
                17 if is("transfer-encoding") => return None,
                15 if is("k-network-probe") || is("k-kubelet-probe") => return None,
                15 if is("k-original-host") => {
                    if original_host.is_some() {
                        return None;
                    }
                    original_host = Some(h.value);
                }
                15 if is("k-proxy-request") => {
                    from_activator |= h.value == super::headers::PROXY_ACTIVATOR.as_bytes();
                }
                _ => {}
            }
        }
        // What the general path would refuse (400) never goes the fast way.
        let host: &str = host.filter(|h| !h.is_empty())?;
        let (valid, host_token) = host_kind(host.as_bytes());
        if !valid {
            return None;
        }
        if original_host.is_some_and(|h| h.is_empty() || !valid_host(h)) {
            return None;
        }
        Some(Checked {
            host,
            host_token,
            body_len: body_len.unwrap_or(0),
            from_activator,
            original_host,
        })
    }

    /// The value of the (first) `name` header, if any.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether a retry of this request is safe (RFC 9110 idempotent methods that proxies
    /// retry).
    pub fn is_idempotent(&self) -> bool {
        matches!(self.method, "GET" | "HEAD" | "OPTIONS" | "TRACE")
    }

    /// Writes the values of every `name` header, each followed by `, `.
    fn write_values(&self, name: &str, out: &mut Vec<u8>) {
        for h in self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }

    /// Starts the head for the next hop with the request line, `METHOD target HTTP/1.1`.
    fn request_line(&self, lines: &mut LineCopy<'_, '_>) {
        // As sent (the version is 1.1, or the request would not be here) unless spaced oddly.
        let end = lines.offset(self.target.as_bytes()).and_then(|at| {
            let end = at + self.target.len() + b" HTTP/1.1\r\n".len();
            let sent = at == self.method.len() + 1
                && lines.offset(self.method.as_bytes()) == Some(0)
                && self.head.get(at - 1) == Some(&b' ')
                && self.head.get(at + self.target.len()..end) == Some(b" HTTP/1.1\r\n");
            sent.then_some(end)
        });
        match end {
            Some(end) => lines.take(0..end),
            None => {
                let out = lines.out();
                out.extend_from_slice(self.method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(self.target.as_bytes());
                out.extend_from_slice(b" HTTP/1.1\r\n");
            }
        }
    }

    /// Writes the head for the app behind a hop that is not the edge (a sidecar queue-proxy):
    /// the same request line and headers minus hop-by-hop, platform-internal and underscored
    /// ones, the Host a proxy hop moved aside restored; the forwarding headers go on as the
    /// edge wrote them.
    pub fn write_inner_head(&self, out: &mut Vec<u8>) {
        let mut lines = LineCopy::new(self.head, out);
        self.request_line(&mut lines);
        let mut te_trailers = false;
        for h in self.headers {
            match (request_header(h.name), self.original_host) {
                (RequestHeader::Te, _) => te_trailers |= asks_for_trailers(h.value),
                (RequestHeader::Dropped, _) => {}
                (RequestHeader::Host, Some(original)) => lines.header(h.name.as_bytes(), original),
                _ => lines.header(h.name.as_bytes(), h.value),
            }
        }
        let out = lines.out();
        if te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"\r\n");
        lines.finish();
    }

    /// Writes the head for the next hop into `out`: the same request line and headers minus
    /// hop-by-hop, platform-internal and underscored ones, plus `X-Forwarded-For`,
    /// `X-Forwarded-Proto` (`http`, or a trusted client's own) and an RFC 7239 `Forwarded`
    /// element for `client`.
    pub fn write_upstream_head(&self, client: &ClientAddr, out: &mut Vec<u8>) {
        let mut lines = LineCopy::new(self.head, out);
        self.request_line(&mut lines);
        let mut has_proto = false;
        let mut te_trailers = false;
        let (mut has_for, mut has_forwarded) = (false, false);
        for h in self.headers {
            match request_header(h.name) {
                // Written below, with this hop's item appended.
                RequestHeader::XForwardedFor => has_for = true,
                RequestHeader::Forwarded => has_forwarded = true,
                RequestHeader::Te => te_trailers |= asks_for_trailers(h.value),
                RequestHeader::Dropped => {}
                // The scheme is this connection's, unless a trusted proxy in front says.
                RequestHeader::XForwardedProto if !client.trusted => {}
                class => {
                    has_proto |= class == RequestHeader::XForwardedProto;
                    lines.header(h.name.as_bytes(), h.value);
                }
            }
        }
        // Straight into `out`, earlier values first: no list is built apart.
        let out = lines.out();
        out.extend_from_slice(b"x-forwarded-for: ");
        if has_for {
            self.write_values("x-forwarded-for", out);
        }
        out.extend_from_slice(client.ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !has_proto {
            out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        }
        out.extend_from_slice(b"forwarded: ");
        if has_forwarded {
            self.write_values("forwarded", out);
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(client.node.as_bytes());
        out.extend_from_slice(b";host=");
        if self.host_token {
            out.extend_from_slice(self.host.as_bytes());
        } else {
            push_token_or_quoted(self.host.as_bytes(), out);
        }
        out.extend_from_slice(b";proto=http\r\n");
        if te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"\r\n");
        lines.finish();
    }
}

/// A client's address as the forwarding headers write it, formatted once per connection.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    /// For `X-Forwarded-For` (IPv4-mapped IPv6 addresses as IPv4).
    ip: String,
    /// For `Forwarded: for=` (IPv6 bracketed and quoted).
    node: String,
    /// A proxy in front whose `X-Forwarded-Proto` is kept.
    trusted: bool,
    /// The client reached this hop over TLS.
    secure: bool,
}

impl ClientAddr {
    /// The forms of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let text = ip.to_string();
        let node = match ip {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        ClientAddr {
            ip: text,
            node,
            trusted: false,
            secure: false,
        }
    }

    /// Marks the client as connected over TLS (its scheme is `https`).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Whether the client connected over TLS.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The scheme the client reached this hop with: `https` over TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.secure { "https" } else { "http" }
    }

    /// Marks the client as a trusted proxy (its `X-Forwarded-Proto` is kept).
    pub fn trusted(mut self, trusted: bool) -> Self {
        self.trusted = trusted;
        self
    }

    /// Whether the client is a trusted proxy.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// The form `X-Forwarded-For` lists.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The form of `Forwarded: for=`.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, passed through as is.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head, rewritten for the client.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Bytes of the upstream's head.
    pub head_len: usize,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the upstream connection may carry another request afterwards.
    pub reusable: bool,
    /// Whether the client was told the connection closes after this response.
    pub closes: bool,
}

/// What parsing an upstream response head gave.
#[derive(Debug)]
pub enum ParsedResponse {
    /// A final response head; its rewritten form was written out.
    Head(ResponseHead),
    /// An interim (1xx) response of this many bytes, to skip.
    Interim(usize),
    /// More bytes are needed.
    Partial,
}

/// Why an upstream response could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The head does not parse.
    #[error("malformed response head: {0}")]
    Malformed(#[from] httparse::Error),
    /// The head says something a proxy cannot pass on.
    #[error("unusable response: {0}")]
    Unusable(&'static str),
}

/// Parses the response head at the start of `buf` (for a HEAD request if `head_request`); a
/// final head is written into `out` for the client (hop-by-hop headers removed, `Date` added
/// when missing, the header lines `extra` added, `Connection: close` when the body ends with
/// the connection or `close_client`).
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    extra: &[u8],
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, ResponseError> {
    // Uninitialized: the parser writes only the fields the head has.
    let mut headers = [const { MaybeUninit::uninit() }; 100];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    )?;
    let head_len = match parsed {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(ParsedResponse::Partial),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        // `059` parses as 59: written back it would not be a status line.
        return Err(ResponseError::Unusable("an invalid status code"));
    }
    if status == 101 {
        return Err(ResponseError::Unusable(
            "a protocol switch that was not asked for",
        ));
    }
    if (100..200).contains(&status) {
        return Ok(ParsedResponse::Interim(head_len));
    }
    let HeadFacts {
        framing,
        reusable,
        chunked,
        has_date,
        named_options,
    } = head_facts(resp.version, status, resp.headers, head_request)?;
    let mut lines = LineCopy::new(buf, out);
    status_line(&mut lines, &resp, status);
    let named = if named_options {
        connection_options(resp.headers)
    } else {
        Vec::new()
    };
    for h in resp.headers.iter() {
        let name = h.name;
        // Only names starting so can be hop-by-hop or a void framing header.
        let dropped = match name.as_bytes().first().map(u8::to_ascii_lowercase) {
            Some(b'c' | b'k' | b'p' | b't' | b'u') => {
                is_response_hop_by_hop(name)
                    // A chunked body keeps its coding header; any length beside it is void.
                    || (chunked && is_name(name.as_bytes(), b"content-length"))
                    || (framing != Framing::Chunked
                        && is_name(name.as_bytes(), b"transfer-encoding"))
            }
            _ => false,
        };
        if dropped || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        lines.header(name.as_bytes(), h.value);
    }
    let out = lines.out();
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    let closes = framing == Framing::UntilClose || close_client;
    if closes {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    lines.finish();
    Ok(ParsedResponse::Head(ResponseHead {
        status,
        head_len,
        framing,
        reusable,
        closes,
    }))
}

/// Writes the status line for the client: `HTTP/1.1`, the status, the upstream's reason
/// phrase or else the standard one. As the upstream sent it when it reads so already.
fn status_line(lines: &mut LineCopy<'_, '_>, resp: &httparse::Response<'_, '_>, status: u16) {
    const START: usize = b"HTTP/1.1 200 ".len();
    let reason = resp.reason.filter(|r| !r.is_empty());
    if let Some(reason) = reason.filter(|_| resp.version == Some(1))
        && lines.offset(reason.as_bytes()) == Some(START)
    {
        let end = START + reason.len() + 2;
        let head = lines.bytes();
        // The code's three digits are the status parsed from them.
        if head.starts_with(b"HTTP/1.1 ")
            && head[START - 1] == b' '
            && head.get(end - 2..end) == Some(b"\r\n")
        {
            lines.take(0..end);
            return;
        }
    }
    let out = lines.out();
    out.extend_from_slice(b"HTTP/1.1 ");
    match http::StatusCode::from_u16(status) {
        Ok(code) => out.extend_from_slice(code.as_str().as_bytes()),
        Err(_) => out.extend_from_slice(status.to_string().as_bytes()),
    }
    out.push(b' ');
    let reason = reason
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What a final response head says about its body and connection.
#[derive(Debug)]
pub(crate) struct HeadFacts {
    pub(crate) framing: Framing,
    /// Whether the upstream connection may carry another request after the body.
    pub(crate) reusable: bool,
    /// Whether a `Transfer-Encoding: chunked` header delimits the body.
    pub(crate) chunked: bool,
    pub(crate) has_date: bool,
    /// Whether a `Connection` header names options besides `close` and `keep-alive`.
    pub(crate) named_options: bool,
}

/// Reads the framing and connection facts off a final response head (RFC 9112 §6.3).
pub(crate) fn head_facts(
    version: Option<u8>,
    status: u16,
    headers: &[httparse::Header<'_>],
    head_request: bool,
) -> Result<HeadFacts, ResponseError> {
    let http11 = version == Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut conn_close = !http11;
    let mut has_date = false;
    let mut named_options = false;
    for h in headers {
        let name = h.name.as_bytes();
        if is_name(name, b"content-length") {
            let n = digits(h.value).ok_or(ResponseError::Unusable("an invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ResponseError::Unusable("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if is_name(name, b"transfer-encoding") {
            // The last coding decides: chunked delimits the body, anything else runs to the
            // close.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = trimmed(last).eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if is_name(name, b"connection") {
            for option in h.value.split(|b| *b == b',') {
                let option = trimmed(option);
                if option.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    if !http11 {
                        conn_close = false;
                    }
                } else {
                    named_options |= !option.is_empty();
                }
            }
        } else if is_name(name, b"date") {
            has_date = true;
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let reusable = !conn_close && framing != Framing::UntilClose;
    Ok(HeadFacts {
        framing,
        reusable,
        chunked,
        has_date,
        named_options,
    })
}

/// A complete plain-text response (as [`super::text_response`] makes) for errors the fast path
/// answers itself.
pub fn text_response_bytes(status: http::StatusCode, text: &str, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + text.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    let newline = !text.ends_with('\n');
    out.extend_from_slice((text.len() + usize::from(newline)).to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    push_date(&mut out);
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    if newline {
        out.push(b'\n');
    }
    out
}

/// Finds the end of a chunked body fed in pieces, without decoding it.
#[derive(Debug, Default)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Bytes left of the current chunk's data.
    remaining: u64,
    /// Digits seen in the current size line.
    digits: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the chunk size's hex digits.
    #[default]
    Size,
    /// After the size, blanks: before an extension or the line end.
    SizeBws,
    /// After the size: an extension, up to the line end.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside the chunk data.
    Data,
    /// Expecting the CR after the data.
    DataCr,
    /// Expecting the LF after the data.
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer field's name.
    TrailerName,
    /// Inside a trailer field's value.
    Trailer,
    /// Expecting the LF that ends a trailer line.
    TrailerLf,
    /// Expecting the LF of the final blank line.
    EndLf,
    /// The body is complete.
    Done,
}

/// A chunked body that does not follow the coding.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedScanner {
    /// Feeds the next bytes; `Some(n)` when the body ends after the first `n` of them.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match hex(b) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(BadChunk);
                        }
                        self.remaining = self.remaining * 16 + u64::from(d);
                    }
                    None if self.digits == 0 => return Err(BadChunk),
                    None if b == b'\r' => self.state = ChunkState::SizeLf,
                    None if b == b';' => self.state = ChunkState::Extension,
                    None if b == b' ' || b == b'\t' => self.state = ChunkState::SizeBws,
                    None => return Err(BadChunk),
                },
                ChunkState::SizeBws => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if is_ctl(b) {
                        return Err(BadChunk);
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.digits = 0;
                    self.state = if self.remaining == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else if is_tchar(b) {
                        ChunkState::TrailerName
                    } else {
                        return Err(BadChunk);
                    };
                }
                ChunkState::TrailerName => {
                    if b == b':' {
                        self.state = ChunkState::Trailer;
                    } else if !is_tchar(b) {
                        return Err(BadChunk);
                    }
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if is_ctl(b) {
                        return Err(BadChunk);
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Done;
                    return Ok(Some(i + 1));
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside), at most 18 of
/// them.
fn digits(v: &[u8]) -> Option<u64> {
    let v = trimmed(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A control character other than HTAB: never inside a field or chunk line.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a `TE` value lists `trailers` (the one TE a proxy passes on).
fn asks_for_trailers(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| trimmed(t).eq_ignore_ascii_case(b"trailers"))
}

/// Whether a `User-Agent` is one of Knative's health checkers' (the kubelet, the activator,
/// the autoscaler): a queue-proxy answers those itself.
fn is_probe_agent(agent: &[u8]) -> bool {
    super::headers::PROBE_AGENT_PREFIXES
        .iter()
        .any(|p| agent.starts_with(p.as_bytes()))
}

fn trimmed(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Response headers that describe one connection. `Transfer-Encoding` and `Trailer` stay: a
/// chunked body is passed through as it came.
fn is_response_hop_by_hop(name: &str) -> bool {
    !is_name(name.as_bytes(), b"trailer") && is_hop_by_hop_name(name)
}

/// The header names a `Connection` header lists as hop-by-hop.
fn connection_options<'a>(headers: &[httparse::Header<'a>]) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .filter_map(|o| std::str::from_utf8(trimmed(o)).ok())
        .filter(|o| {
            !o.is_empty()
                && !o.eq_ignore_ascii_case("close")
                && !o.eq_ignore_ascii_case("keep-alive")
        })
        .collect()
}

thread_local! {
    /// The formatted date and the second it is for: formatting once a second is enough.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

thread_local! {
    /// The `date` header value and the second it is for, shared by the responses of a second.
    static DATE_VALUE: RefCell<(u64, Option<http::HeaderValue>)> = const { RefCell::new((u64::MAX, None)) };
}

/// The current IMF-fixdate as a header value (made once a second; cloning it is a reference
/// count).
pub(crate) fn date_value() -> http::HeaderValue {
    let (now, secs) = now_and_second();
    DATE_VALUE.with(|d| {
        let mut d = d.borrow_mut();
        match &d.1 {
            Some(value) if d.0 == secs => value.clone(),
            _ => {
                let text = bytes::Bytes::from(httpdate::fmt_http_date(now));
                let value = http::HeaderValue::from_maybe_shared(text)
                    .expect("an HTTP date is a valid header value");
                *d = (secs, Some(value.clone()));
                value
            }
        }
    })
}

/// The time now and the Unix second it falls in (what the date caches are keyed by).
fn now_and_second() -> (SystemTime, u64) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    (now, secs)
}

/// Appends the current IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn push_date(out: &mut Vec<u8>) {
    let (now, secs) = now_and_second();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_fast(raw: &[u8]) -> Option<(String, String, usize, usize)> {
        let mut headers = header_slots();
        match FastRequest::parse(raw, &mut headers) {
            Parsed::Fast(r) => Some((
                r.method.to_string(),
                r.host.to_string(),
                r.head_len,
                r.body_len,
            )),
            _ => None,
        }
    }

    #[test]
    fn plain_requests_qualify_and_unusual_ones_do_not() {
        let get = b"GET /a?b=1 HTTP/1.1\r\nHost: x.default.localhost\r\n\r\n";
        assert_eq!(
            parse_fast(get),
            Some(("GET".into(), "x.default.localhost".into(), get.len(), 0))
        );
        let post = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_fast(post).map(|p| p.3), Some(5));
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nK-Network-Probe: queue\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: h\r\n\r\n",
        ] {
            assert!(
                parse_fast(raw).is_none(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut headers = header_slots();
        assert!(matches!(
            FastRequest::parse(b"GET / HTTP/1.1\r\nHost: h\r\n", &mut headers),
            Parsed::Partial
        ));
    }

    #[test]
    fn the_upstream_head_drops_hop_by_hop_and_internal_headers_and_adds_forwarding() {
        let raw =
            b"GET /p HTTP/1.1\r\nHost: Hello.default.localhost:8080\r\nConnection: keep-alive\r\n\
            Keep-Alive: 5\r\nK-Proxy-Request: activator\r\nKnative-Serving-Revision: x\r\n\
            X-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nForwarded: for=1.1.1.1\r\n\
            TE: trailers, deflate\r\nAccept: */*\r\n\r\n";
        let mut headers = header_slots();
        let Parsed::Fast(req) = FastRequest::parse(raw, &mut headers) else {
            panic!("not fast");
        };
        let mut out = Vec::new();
        req.write_upstream_head(&ClientAddr::new("::1".parse().unwrap()), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "GET /p HTTP/1.1\r\nHost: Hello.default.localhost:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, ::1\r\nx-forwarded-proto: http\r\n\
             forwarded: for=1.1.1.1, for=\"[::1]\";host=\"Hello.default.localhost:8080\";proto=http\r\n\
             te: trailers\r\n\r\n"
        );
    }

    #[test]
    fn heads_go_on_as_sent_when_plain_and_rewritten_when_not() {
        let inner = |raw: &[u8]| {
            let mut headers = header_slots();
            let Parsed::Fast(req) = FastRequest::parse(raw, &mut headers) else {
                panic!("not fast");
            };
            let mut out = Vec::new();
            req.write_inner_head(&mut out);
            String::from_utf8(out).unwrap()
        };
        // Plain lines come out byte for byte, odd spacing and bare LFs canonical.
        assert_eq!(
            inner(
                b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nConnection: keep-alive\r\nX-B: 2\r\n\r\n"
            ),
            "GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        );
        assert_eq!(
            inner(b"GET /x HTTP/1.1\r\nHost:h\r\nAccept:   */*  \r\nX-A: 1\r\n\r\n"),
            "GET /x HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-A: 1\r\n\r\n"
        );
        assert_eq!(
            inner(b"GET / HTTP/1.1\nHost: h\nX-A: 1\n\n"),
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
        );
        assert_eq!(
            inner(b"GET / HTTP/1.1\r\nHost: h\r\nK-Original-Host: app.example.com\r\n\r\n"),
            "GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
        );

        let client = |raw: &[u8]| {
            let mut out = Vec::new();
            let ParsedResponse::Head(_) =
                parse_response(raw, false, false, b"x-e: 1\r\n", &mut out).unwrap()
            else {
                panic!("no head");
            };
            String::from_utf8(out).unwrap()
        };
        let date = "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        assert_eq!(
            client(
                format!("HTTP/1.1 200 Fine\r\nX: 1\r\n{date}Content-Length: 0\r\n\r\n").as_bytes()
            ),
            format!("HTTP/1.1 200 Fine\r\nX: 1\r\n{date}Content-Length: 0\r\nx-e: 1\r\n\r\n")
        );
        assert_eq!(
            client(
                format!(
                    "HTTP/1.0 200 OK\nX:1\n{date}Content-Length: 0\nConnection: keep-alive\n\n"
                )
                .as_bytes()
            ),
            format!("HTTP/1.1 200 OK\r\nX: 1\r\n{date}Content-Length: 0\r\nx-e: 1\r\n\r\n")
        );
        assert_eq!(
            client(format!("HTTP/1.1 404 \r\n{date}Content-Length: 0\r\n\r\n").as_bytes()),
            format!("HTTP/1.1 404 Not Found\r\n{date}Content-Length: 0\r\nx-e: 1\r\n\r\n")
        );
    }

    #[test]
    fn response_heads_are_framed_and_cleaned() {
        let mut out = Vec::new();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
            Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nabc";
        let ParsedResponse::Head(h) = parse_response(raw, false, false, b"", &mut out).unwrap()
        else {
            panic!("no head");
        };
        assert_eq!(
            (h.status, h.framing, h.reusable),
            (200, Framing::Length(3), true)
        );
        assert_eq!(h.head_len, raw.len() - 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );

        let mut out = Vec::new();
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
        let ParsedResponse::Head(h) = parse_response(raw, false, false, b"", &mut out).unwrap()
        else {
            panic!("no head");
        };
        assert_eq!(h.framing, Framing::Chunked);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(text.contains("\r\ndate: "));

        let mut out = Vec::new();
        let raw = b"HTTP/1.0 200 OK\r\n\r\nbody";
        let ParsedResponse::Head(h) = parse_response(raw, false, false, b"", &mut out).unwrap()
        else {
            panic!("no head");
        };
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("connection: close\r\n")
        );

        let mut out = Vec::new();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let ParsedResponse::Head(h) = parse_response(raw, true, false, b"", &mut out).unwrap()
        else {
            panic!("no head");
        };
        assert_eq!(h.framing, Framing::Empty);

        let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let Ok(ParsedResponse::Interim(n)) =
            parse_response(raw, false, false, b"", &mut Vec::new())
        else {
            panic!("not interim");
        };
        assert!(matches!(
            parse_response(&raw[n..], false, false, b"", &mut Vec::new()),
            Ok(ParsedResponse::Head(ResponseHead { status: 204, .. }))
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Le",
                false,
                false,
                b"",
                &mut Vec::new()
            ),
            Ok(ParsedResponse::Partial)
        ));
        assert!(
            parse_response(
                b"HTTP/1.1 059 X\r\n\r\n",
                false,
                false,
                b"",
                &mut Vec::new()
            )
            .is_err()
        );
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                b"",
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn the_chunked_scanner_finds_the_end_in_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nGrpc-Status: 0\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let (a, b) = body.split_at(split);
            let found = match s.feed(a).unwrap() {
                Some(n) => n,
                None => split + s.feed(b).unwrap().expect("ends"),
            };
            assert_eq!(found, end, "split at {split}");
        }
        let mut s = ChunkedScanner::default();
        assert_eq!(s.feed(b"0\r\n\r\n").unwrap(), Some(5));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\n",
            b"\r\n",
            b"5g\r\n",
            b"0x5\r\n",
            b"-5\r\n",
            b"10000000000000000\r\n",
            b"5 x\r\n",
            b"5;a\nb\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
            b"0\r\n: a\r\n\r\n",
            b"0\r\n X: a\r\n\r\n",
        ] {
            assert!(ChunkedScanner::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_responses_are_complete() {
        let out = text_response_bytes(http::StatusCode::SERVICE_UNAVAILABLE, "full", true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("content-length: 5\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nfull\n"));
    }
}
