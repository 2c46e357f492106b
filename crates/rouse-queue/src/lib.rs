//! The queue-proxy: the hop in front of every app instance. It reverse-proxies requests to the
//! app (streaming, keep-alive), holds them to the revision's containerConcurrency (a FIFO
//! queue of 10 × that, then 503), enforces the revision's timeouts, reports load to the
//! autoscaler ([`QueueStats`]), counts requests in flight for drain, probes the app's
//! readiness and answers the activator's health checks. In local mode one runs in-process per
//! instance; in Kubernetes mode it runs as the sidecar.
//!
//! [`http`] holds the HTTP pieces every proxy hop shares (gateway, activator).

#![warn(missing_docs)]

mod breaker;
mod fast;
pub mod http;
mod inflight;
mod probe;
mod queue;
mod raw;
mod request_log;
mod stats;
mod timeout;

pub use breaker::QUEUE_DEPTH_PER_SLOT;
pub use fast::{FastConn, FastExchange, FastOutcome, RemoteHop};
pub use inflight::{InFlight, InFlightGuard};
pub use probe::{
    AGGRESSIVE_INTERVAL, AGGRESSIVE_TIMEOUT, AppProbe, BACKGROUND_INTERVAL, CommandRunner,
    HostCommand, PROBE_USER_AGENT, ProbeAction, ProbeFailure, ProbeSpec, RunFuture, retry_pause,
};
pub use queue::{
    LocalQueue, ORIGINAL_HOST_HEADER, PROBE_HEADER, PROBE_OK_BODY, PROXY_ACTIVATOR, PROXY_HEADER,
    QUEUE_FULL_BODY, QueueConfig, QueueProxy,
};
pub use request_log::{LogOutput, RequestLogSwitch, RequestLogger, RevisionInfo};
pub use stats::{QueueStats, StatDecodeError};

/// The parsers the fuzz targets (`fuzz/`) drive; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::h1::{ChunkedScanner, ClientAddr, FastRequest, MAX_FAST_HEADERS, Parsed};
    pub use crate::raw::decode_chunked;
}
pub use timeout::{BodyTimeout, TIMEOUT_BODY};
