//! The queue-proxy: the hop in front of every app instance. It reverse-proxies requests to the
//! app (streaming, keep-alive), holds them to the revision's containerConcurrency (a FIFO
//! queue of 10 × that, then 503), enforces the revision's timeouts, reports load to the
//! autoscaler ([`QueueStats`]), counts requests in flight for drain, probes the app's
//! readiness and answers the activator's health checks. In local mode one runs in-process per
//! instance; in Kubernetes mode it runs as the sidecar.
//!
//! The HTTP machinery under it is the engine every hop shares (`rouse-http`); this crate is
//! the queue-proxy's behaviour on top.

#![warn(missing_docs)]

mod breaker;
mod inflight;
mod local_hop;
mod probe;
mod queue;
mod request_log;
mod stats;

pub use breaker::QUEUE_DEPTH_PER_SLOT;
pub use inflight::{InFlight, InFlightGuard};
pub use probe::{
    AGGRESSIVE_INTERVAL, AGGRESSIVE_TIMEOUT, AppProbe, BACKGROUND_INTERVAL, CommandRunner,
    HostCommand, PROBE_USER_AGENT, ProbeAction, ProbeFailure, ProbeSpec, RunFuture, retry_pause,
};
pub use queue::{LocalQueue, PROBE_OK_BODY, QUEUE_FULL_BODY, QueueConfig, QueueProxy};
pub use request_log::{LogOutput, RequestLogSwitch, RequestLogger, RevisionInfo};
pub use stats::{QueueStats, StatDecodeError};
