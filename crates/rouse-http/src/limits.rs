//! What the server loop tolerates from a client before it answers with an error or hangs up.

use std::time::Duration;

pub use super::conn_cap::ConnectionLimit;
use super::read_timeout::MinBodyRate;

/// Default [`ServerLimits::header_read_timeout`]: long enough for any real client, short
/// enough that slow-header (slowloris) connections do not pile up.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerLimits::idle_timeout`]. Longer than the 90 s a [`super::ProxyClient`] keeps
/// an idle pooled connection, so between Rouse's own hops the client always closes first and
/// never sends a request on a connection the server is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default [`ServerLimits::body_read_timeout`].
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ServerLimits::min_body_rate`]: 512 bytes/s once the reader waited 10 s in all.
pub const DEFAULT_MIN_BODY_RATE: MinBodyRate = MinBodyRate {
    bytes_per_second: 512,
    grace: Duration::from_secs(10),
};
/// Default [`ServerLimits::max_header_size`]: 64 KiB.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// Default [`ServerLimits::max_headers`] (hyper's own default).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default [`ServerLimits::h2_keep_alive_interval`].
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// The smallest head size limit the HTTP/1 parser supports (its minimum buffer).
pub const MIN_MAX_HEADER_SIZE: usize = 8 * 1024;

/// Limits a server loop ([`super::serve_with`]) puts on its clients. `Default` gives the
/// `DEFAULT_*` values; `None` switches a timeout off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long an HTTP/1.1 client may take to send a request head, from its first byte (or
    /// from connecting, for the first request). On any connection, HTTP/2 included, the first
    /// request must begin this soon after connecting. Past it the connection is closed without
    /// an answer.
    pub header_read_timeout: Option<Duration>,
    /// How long a connection may stay open with no request in progress (keep-alive idle).
    /// HTTP/1.1 connections are then closed; HTTP/2 ones get a GOAWAY.
    pub idle_timeout: Option<Duration>,
    /// How long the server waits for more of a request body while the handler reads it and
    /// the client sends nothing. The body then fails (whoever reads it, an upstream say, sees
    /// the error), and the client gets 408 if its response had not started, or a broken
    /// response otherwise. Applies to services taking [`super::Body`] requests (see
    /// [`super::FromIncoming`]); hyper's own `Incoming` cannot carry it.
    pub body_read_timeout: Option<Duration>,
    /// The least average rate an HTTP/1 request body must arrive at while it is read (the
    /// time its reader waited counts, time nobody reads does not), once its grace passed;
    /// slower fails as a stall does (408 before the response started). Only where
    /// `body_read_timeout` applies; `None` sets no rate.
    pub min_body_rate: Option<MinBodyRate>,
    /// The largest request head (request line and headers) in bytes; a larger one gets 431
    /// Request Header Fields Too Large. On HTTP/2 this is the maximum header list size (431
    /// too). Values under [`MIN_MAX_HEADER_SIZE`] are raised to it. On HTTP/1.1 this is also
    /// the connection's read buffer, so body chunks arrive in pieces of at most this size.
    pub max_header_size: usize,
    /// The most header fields an HTTP/1.1 request may have; more gets 431.
    pub max_headers: usize,
    /// How often an HTTP/2 connection is PINGed to find clients that vanished mid-request
    /// (one that does not answer within 20 s is closed); `None` sends no pings.
    pub h2_keep_alive_interval: Option<Duration>,
    /// The cap on client connections and the descriptor reserve (none by default).
    pub connections: ConnectionLimit,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            body_read_timeout: Some(DEFAULT_BODY_READ_TIMEOUT),
            min_body_rate: Some(DEFAULT_MIN_BODY_RATE),
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_headers: DEFAULT_MAX_HEADERS,
            h2_keep_alive_interval: Some(DEFAULT_H2_KEEP_ALIVE_INTERVAL),
            connections: ConnectionLimit::default(),
        }
    }
}
