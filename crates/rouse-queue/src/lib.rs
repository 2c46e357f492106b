//! The queue-proxy: the hop in front of every app instance. It reverse-proxies requests to the
//! app (streaming, keep-alive), counts requests in flight (for the autoscaler and for drain),
//! probes the app's readiness and answers the activator's health checks. In local mode one
//! runs in-process per instance; in Kubernetes mode it runs as the sidecar.
//!
//! [`http`] holds the HTTP pieces every proxy hop shares (gateway, activator).

#![warn(missing_docs)]

pub mod http;
mod inflight;
mod probe;
mod queue;

pub use inflight::{InFlight, InFlightGuard};
pub use probe::{
    AGGRESSIVE_INTERVAL, AGGRESSIVE_TIMEOUT, BACKGROUND_INTERVAL, ProbeAction, ProbeSpec,
};
pub use queue::{ORIGINAL_HOST_HEADER, PROBE_HEADER, PROBE_OK_BODY, QueueConfig, QueueProxy};
