//! Readiness probing of the app behind a queue-proxy.
//!
//! A starting app is probed aggressively (every 50 ms, 100 ms per try) until it passes
//! `success_threshold` times in a row. After that, with a `period` the probe keeps running at
//! that period and flips readiness after `failure_threshold` failures / `success_threshold`
//! successes; without one (period 0, Knative's default) a slow background check runs every
//! second and a failing app goes back to aggressive probing.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, header};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::http::{ProxyClient, empty};

/// Interval between tries while an app is starting.
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(50);
/// Time allowed for each try while an app is starting.
pub const AGGRESSIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Interval of the background check once ready when the probe has no period.
pub const BACKGROUND_INTERVAL: Duration = Duration::from_secs(1);

/// What a readiness probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// Ready when a TCP connection to the app's port succeeds.
    Tcp,
    /// Ready when `GET path` answers 200–399.
    Http {
        /// Request path (a leading `/` is added when missing).
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
}

/// A readiness probe, in Kubernetes' terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The check.
    pub action: ProbeAction,
    /// Interval once ready; zero means Knative's aggressive mode.
    pub period: Duration,
    /// Time allowed per try once ready (zero means 1 s).
    pub timeout: Duration,
    /// Consecutive successes that make the app ready (0 means 1).
    pub success_threshold: u32,
    /// Consecutive failures that make a ready app not ready (0 means 3).
    pub failure_threshold: u32,
    /// Wait after the app starts before the first try.
    pub initial_delay: Duration,
}

impl Default for ProbeSpec {
    /// A TCP probe with Knative's defaults.
    fn default() -> Self {
        ProbeSpec {
            action: ProbeAction::Tcp,
            period: Duration::ZERO,
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
            initial_delay: Duration::ZERO,
        }
    }
}

/// Runs probes against one app.
pub(crate) struct Prober {
    spec: ProbeSpec,
    app: SocketAddr,
    client: ProxyClient,
}

impl Prober {
    pub(crate) fn new(spec: ProbeSpec, app: SocketAddr, h2c: bool) -> Self {
        Prober {
            spec,
            app,
            client: ProxyClient::unpooled(h2c),
        }
    }

    /// One try, bounded by `timeout`.
    pub(crate) async fn check(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.try_once())
            .await
            .unwrap_or(false)
    }

    async fn try_once(&self) -> bool {
        match &self.spec.action {
            ProbeAction::Tcp => TcpStream::connect(self.app).await.is_ok(),
            ProbeAction::Http { path, headers } => {
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                let mut req =
                    Request::get(path.as_str()).header(header::USER_AGENT, "kube-probe/rouse");
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let Ok(req) = req.body(empty()) else {
                    return false;
                };
                match self.client.forward(req, self.app).await {
                    Ok(resp) => (200..400).contains(&resp.status().as_u16()),
                    Err(_) => false,
                }
            }
        }
    }

    /// Probes for one run of the app, publishing readiness into `ready`. Never returns; the
    /// caller drops it when the app stops or restarts.
    pub(crate) async fn run(&self, ready: &watch::Sender<bool>) {
        let set = |v: bool| {
            ready.send_if_modified(|r| std::mem::replace(r, v) != v);
        };
        set(false);
        tokio::time::sleep(self.spec.initial_delay).await;
        let successes = self.spec.success_threshold.max(1);
        let failures = if self.spec.failure_threshold == 0 {
            3
        } else {
            self.spec.failure_threshold
        };
        loop {
            self.aggressive(successes).await;
            set(true);
            let aggressive_mode = self.spec.period.is_zero();
            let (period, timeout) = if aggressive_mode {
                (BACKGROUND_INTERVAL, AGGRESSIVE_TIMEOUT.max(self.timeout()))
            } else {
                (self.spec.period, self.timeout())
            };
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let (mut ok_run, mut fail_run, mut is_ready) = (0u32, 0u32, true);
            loop {
                tick.tick().await;
                if self.check(timeout).await {
                    fail_run = 0;
                    ok_run += 1;
                    if !is_ready && ok_run >= successes {
                        is_ready = true;
                        set(true);
                    }
                } else {
                    ok_run = 0;
                    fail_run += 1;
                    if is_ready && fail_run >= failures {
                        is_ready = false;
                        set(false);
                        if aggressive_mode {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn timeout(&self) -> Duration {
        if self.spec.timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            self.spec.timeout
        }
    }

    /// Tries every 50 ms until `successes` tries in a row pass.
    async fn aggressive(&self, successes: u32) {
        let mut tick = tokio::time::interval(AGGRESSIVE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut run = 0;
        loop {
            tick.tick().await;
            if self.check(AGGRESSIVE_TIMEOUT).await {
                run += 1;
                if run >= successes {
                    return;
                }
            } else {
                run = 0;
            }
        }
    }
}
