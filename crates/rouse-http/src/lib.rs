//! The HTTP engine every proxy hop shares (queue-proxy, gateway, activator): the front
//! server and its connection handling (graceful shutdown, limits on bad clients, the
//! connection cap), the fast path's HTTP/1.1 head parser and raw upstream exchange over
//! pooled connections, per-connection and per-request timers, header hygiene and the
//! forwarding headers, the body type, and a pooled forwarding client (with protocol upgrades
//! such as WebSocket).
//!
//! It knows no hop's behaviour: a hop decides where each request goes ([`FrontRouter`]) and,
//! for a hop of the same process, serves it handed over directly ([`fast::LocalHop`]).

#![warn(missing_docs)]

mod body;
mod buffer;
mod charset;
mod client;
mod conn;
mod conn_cap;
mod conn_timer;
pub mod fast;
pub mod front;
pub mod h1;
mod h2_server;
mod headers;
mod limits;
mod lines;
pub mod raw;
mod read_timeout;
mod retry;
mod server;
mod strict;
pub mod timeout;
mod upgrade;
mod upstream;

pub use body::{Body, BoxError, GuardedBody, boxed, empty, full, text_response};
pub use buffer::{BodyRefused, DEFAULT_REQUEST_BODY_BUFFER, buffer_body};
pub use client::{ProxyClient, ProxyError};
pub use conn_timer::ConnTimer;
pub use fast::{FastConn, FastExchange, FastOutcome, LocalHop, RemoteHop};
pub use front::{FastDest, FastRoute, FrontRouter, Route};
pub use h1::ClientAddr;
pub use h2_server::H2Body;
pub use headers::{
    ORIGINAL_HOST_HEADER, PROBE_AGENT_PREFIXES, PROBE_HEADER, PROXY_ACTIVATOR, PROXY_HEADER,
    is_internal, push_token_or_quoted, set_allow_underscores_in_headers, strip_hop_by_hop,
    strip_internal, strip_underscored,
};
pub use limits::{
    ConnectionLimit, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_H2_KEEP_ALIVE_INTERVAL,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS, DEFAULT_MIN_BODY_RATE, MIN_MAX_HEADER_SIZE, ServerLimits,
};
pub use read_timeout::{BodyReadTimeout, BodyTooSlow, MinBodyRate, ReadTimeoutBody};
pub use retry::{ForwardError, forward_retryable, forward_to_hop};
pub use server::{
    BODY_TIMEOUT_BODY, FromIncoming, HopService, serve, serve_front, serve_tls, serve_with,
};
pub use strict::{BadHead, settle_request};
pub use timeout::{BodyTimeout, TIMEOUT_BODY};
pub use upgrade::{Tunnel, is_upgrade};
pub use upstream::UpstreamPool;

/// The parsers the fuzz targets (`fuzz/`) drive; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::{
        ChunkedScanner, ClientAddr, FastRequest, MAX_FAST_HEADERS, Parsed, header_slots,
    };
    pub use crate::raw::decode_chunked;
}
