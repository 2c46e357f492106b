//! The activator's settings and each revision's parameters.

use std::sync::Arc;
use std::time::Duration;

/// Knative's default revision timeout (`revision-timeout-seconds`).
pub const DEFAULT_REVISION_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings for the whole activator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivatorConfig {
    /// Requests that may wait per revision (config `activator-queue-depth`); beyond it an
    /// immediate 503.
    pub queue_depth: usize,
    /// How often an instance that has not passed its probe yet is probed again.
    pub probe_interval: Duration,
    /// Time allowed for each probe.
    pub probe_timeout: Duration,
}

impl Default for ActivatorConfig {
    /// Depth 10 000, probes every 50 ms with 100 ms per try.
    fn default() -> Self {
        ActivatorConfig {
            queue_depth: 10_000,
            probe_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(100),
        }
    }
}

/// What the activator needs to know about one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionParams {
    /// Requests one instance takes at once (0 = unlimited); picks the load-balancing policy.
    pub container_concurrency: u32,
    /// The whole budget of a request (`timeoutSeconds`), time spent waiting included. Zero
    /// means the default, 300 s.
    pub timeout: Duration,
    /// Time allowed from arrival until the response starts (`responseStartTimeoutSeconds`).
    pub response_start_timeout: Option<Duration>,
    /// The revision's app speaks HTTP/2 cleartext (its port is named `h2c`): requests go to
    /// its queue-proxies over h2c (pooled, multiplexed), so trailers (gRPC) and full-duplex
    /// streams survive the hop. Probes stay HTTP/1.1 either way.
    pub h2c: bool,
    /// Request bodies of up to this many bytes are received whole before the request waits
    /// for an instance or takes its slot (0: streamed; never for h2c).
    pub request_body_buffer: u64,
}

impl Default for RevisionParams {
    /// Unlimited concurrency, Knative's 300 s timeout, no response-start limit, HTTP/1.1.
    fn default() -> Self {
        RevisionParams {
            container_concurrency: 0,
            timeout: DEFAULT_REVISION_TIMEOUT,
            response_start_timeout: None,
            h2c: false,
            request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        }
    }
}

impl RevisionParams {
    /// The total budget, with zero meaning the default.
    pub(crate) fn total_timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            DEFAULT_REVISION_TIMEOUT
        } else {
            self.timeout
        }
    }
}

/// Called once per activation with `(namespace, revision)`: the revision has requests waiting
/// and no instance ready. The autoscaler should scale it up at once. Must not block.
pub type Poke = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One revision's load in the activator over one reporting period.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivatorStat {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision.
    pub revision: String,
    /// Time-weighted average of requests in the activator (waiting or being proxied).
    pub average_concurrency: f64,
    /// Requests received in the period.
    pub request_count: f64,
}
