//! HTTP pieces shared by every proxy hop (queue-proxy, gateway, activator): the body type,
//! header hygiene, a pooled forwarding client (with protocol upgrades such as WebSocket) and a
//! server loop with graceful shutdown and limits on bad clients.

mod body;
mod buffer;
mod client;
mod conn;
mod conn_cap;
mod conn_timer;
mod front;
pub mod h1;
mod headers;
mod limits;
mod read_timeout;
mod retry;
mod server;
mod strict;
mod upgrade;

pub use body::{Body, BoxError, GuardedBody, boxed, empty, full, text_response};
pub use buffer::{BodyRefused, DEFAULT_REQUEST_BODY_BUFFER, buffer_body};
pub use client::{ProxyClient, ProxyError};
pub use conn_timer::ConnTimer;
pub use front::{FastDest, FastRoute, FrontRouter, Route};
pub use h1::ClientAddr;
pub use headers::{
    is_internal, push_token_or_quoted, set_allow_underscores_in_headers, strip_hop_by_hop,
    strip_internal, strip_underscored,
};
pub use limits::{
    ConnectionLimit, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_H2_KEEP_ALIVE_INTERVAL,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS, DEFAULT_MIN_BODY_RATE, MIN_MAX_HEADER_SIZE, ServerLimits,
};
pub use read_timeout::{BodyReadTimeout, BodyTooSlow, MinBodyRate, ReadTimeoutBody};
pub use retry::{ForwardError, forward_retryable};
pub use server::{BODY_TIMEOUT_BODY, FromIncoming, HopService, serve, serve_front, serve_with};
pub use strict::{BadHead, settle_request};
pub use upgrade::{Tunnel, is_upgrade};
