//! Probing the app behind a queue-proxy: the checks (TCP, HTTP, gRPC health, exec) and the
//! readiness loop.
//!
//! A starting app is probed aggressively (a network probe first as soon as the app's port
//! accepts connections, watched every quarter millisecond or so; then with pauses growing
//! from 1 ms to 50 ms, 100 ms per try) until it passes
//! `success_threshold` times in a row. After that, with a `period` the probe keeps running at
//! that period and flips readiness after `failure_threshold` failures / `success_threshold`
//! successes; without one (period 0, Knative's default) a slow background check runs every
//! second and a failing app goes back to aggressive probing.

mod exec;
mod grpc;

pub use exec::{CommandRunner, HostCommand, RunFuture};

use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use rouse_http::{ProxyClient, empty};

/// The longest interval between tries while an app is starting.
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(50);
/// The shortest pause between tries while an app is starting.
pub const FIRST_RETRY: Duration = Duration::from_millis(1);

/// The pause before the next try of a probe that began failing `waited` ago: a quarter of
/// that, within [`FIRST_RETRY`] and `cap`, so a target that comes up is seen within a
/// quarter of the time it took (a few ms for an app that starts at once), while one that
/// is slow costs no more than a try per `cap`.
pub fn retry_pause(waited: Duration, cap: Duration) -> Duration {
    (waited / 4).clamp(FIRST_RETRY, cap.max(FIRST_RETRY))
}
/// The shortest pause between looks at a starting app's port (see [`wait_for_port`]).
pub(crate) const PORT_POLL: Duration = Duration::from_micros(250);
/// How long a starting app's port is watched that finely before the usual pauses take over.
pub(crate) const PORT_POLL_FOR: Duration = Duration::from_millis(50);
/// Ports watched that finely at once in the process; more starting apps (a burst scaling
/// up) get the usual pauses, so the looks cannot add up to a busy core.
const PORT_WATCHERS: usize = 4;
/// Time allowed for each try while an app is starting.
pub const AGGRESSIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Interval of the background check once ready when the probe has no period.
pub const BACKGROUND_INTERVAL: Duration = Duration::from_secs(1);
/// The `User-Agent` of HTTP and gRPC probes (apps tell probes from requests by its
/// `kube-probe/` prefix, as on Kubernetes).
pub const PROBE_USER_AGENT: &str = "kube-probe/rouse";

/// What a probe does. Every network check targets the app's own port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// Passes when a TCP connection to the app's port succeeds.
    Tcp,
    /// Passes when `GET path` answers 200–399.
    Http {
        /// Request path (a leading `/` is added when missing).
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// The gRPC health protocol (`grpc.health.v1.Health/Check` over HTTP/2 cleartext): passes
    /// when the call returns OK with status `SERVING`.
    Grpc {
        /// The service asked about; empty means the server as a whole.
        service: String,
    },
    /// Runs a program: passes when it exits with code 0 within the probe's timeout (which
    /// kills it).
    Exec {
        /// The program and its arguments, as run (no shell, no expansion here).
        command: Vec<String>,
        /// Variables set on top of the platform's environment (the instance's, normally).
        env: Vec<(String, String)>,
        /// The directory to run in; `None` means the platform's.
        working_dir: Option<PathBuf>,
    },
}

impl fmt::Display for ProbeAction {
    /// Names the check the way a user wrote it (`httpGet /healthz`, `grpc`, `exec [..]`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeAction::Tcp => f.write_str("tcpSocket"),
            ProbeAction::Http { path, .. } => write!(f, "httpGet {path}"),
            ProbeAction::Grpc { service } if service.is_empty() => f.write_str("grpc"),
            ProbeAction::Grpc { service } => write!(f, "grpc service {service:?}"),
            ProbeAction::Exec { command, .. } => write!(f, "exec {command:?}"),
        }
    }
}

/// A probe, in Kubernetes' terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The check.
    pub action: ProbeAction,
    /// Interval once ready (readiness: zero means Knative's aggressive mode; liveness: zero
    /// means 10 s).
    pub period: Duration,
    /// Time allowed per try once ready (zero means 1 s).
    pub timeout: Duration,
    /// Consecutive successes that make the app ready (0 means 1).
    pub success_threshold: u32,
    /// Consecutive failures that make a ready app not ready, or a live one dead (0 means 3).
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

impl ProbeSpec {
    /// The time allowed per try (`timeout`, 1 s when zero).
    pub fn effective_timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            self.timeout
        }
    }

    /// Consecutive failures that count (`failure_threshold`, 3 when zero).
    pub fn effective_failure_threshold(&self) -> u32 {
        if self.failure_threshold == 0 {
            3
        } else {
            self.failure_threshold
        }
    }
}

/// Why one try of a probe failed: the app's answer (or silence), never the platform's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// No verdict within the try's timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The app's port refused or dropped the connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// An HTTP probe got a status outside 200–399, or a gRPC probe one other than 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The exchange broke (a reset stream, a malformed answer).
    #[error("{0}")]
    Protocol(String),
    /// The gRPC call failed with a non-OK `grpc-status`.
    #[error("gRPC status {code} ({}){}", grpc::code_name(*code), suffix(message))]
    GrpcStatus {
        /// The `grpc-status` code.
        code: u32,
        /// The `grpc-message`, if any.
        message: String,
    },
    /// The gRPC health service answered a status other than `SERVING`.
    #[error("health status {0}")]
    NotServing(String),
    /// An exec probe's program exited with a non-zero code or by a signal.
    #[error("exited with {}{}", exit_text(*code), suffix(output))]
    Exit {
        /// Its exit code; `None` when a signal ended it.
        code: Option<i32>,
        /// The last of what it printed.
        output: String,
    },
    /// An exec probe's program could not be started.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        reason: String,
    },
}

fn suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("code {c}"),
        None => "a signal".to_string(),
    }
}

/// An error with its causes, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// One probe aimed at one app: runs single tries. The readiness loop of a queue-proxy uses
/// one; so does a runtime watching liveness.
#[derive(Debug)]
pub struct AppProbe {
    action: ProbeAction,
    app: SocketAddr,
    client: ProxyClient,
    /// Where an exec probe's command runs.
    runner: Arc<dyn CommandRunner>,
}

impl AppProbe {
    /// A probe running `action` against the app at `app`; `h2c` makes HTTP probes speak
    /// HTTP/2 cleartext (gRPC probes always do).
    pub fn new(action: ProbeAction, app: SocketAddr, h2c: bool) -> Self {
        AppProbe {
            action,
            app,
            client: ProxyClient::unpooled(h2c),
            runner: Arc::new(HostCommand),
        }
    }

    /// The same probe, its exec command run by `runner` (a process on the host by default).
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// The check it runs.
    pub fn action(&self) -> &ProbeAction {
        &self.action
    }

    /// One try, bounded by `timeout` (an exec probe's program is killed when it runs out).
    pub async fn check(&self, timeout: Duration) -> Result<(), ProbeFailure> {
        tokio::time::timeout(timeout, self.try_once())
            .await
            .unwrap_or(Err(ProbeFailure::TimedOut(timeout)))
    }

    async fn try_once(&self) -> Result<(), ProbeFailure> {
        match &self.action {
            ProbeAction::Tcp => match TcpStream::connect(self.app).await {
                Ok(_) => Ok(()),
                Err(e) => Err(ProbeFailure::Connect(format!("{}: {e}", self.app))),
            },
            ProbeAction::Http { path, headers } => self.http(path, headers).await,
            ProbeAction::Grpc { service } => grpc::check(self.app, service).await,
            ProbeAction::Exec {
                command,
                env,
                working_dir,
            } => self.runner.run(command, env, working_dir.as_deref()).await,
        }
    }

    async fn http(&self, path: &str, headers: &[(String, String)]) -> Result<(), ProbeFailure> {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let mut req = Request::get(path.as_str()).header(header::USER_AGENT, PROBE_USER_AGENT);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(empty())
            .map_err(|e| ProbeFailure::Protocol(format!("cannot build the request: {e}")))?;
        match self.client.forward(req, self.app).await {
            Ok(resp) if (200..400).contains(&resp.status().as_u16()) => Ok(()),
            Ok(resp) => Err(ProbeFailure::Status(resp.status().as_u16())),
            Err(e) if e.is_connect() => Err(ProbeFailure::Connect(
                e.source().map_or_else(|| e.to_string(), chain),
            )),
            Err(e) => Err(ProbeFailure::Protocol(chain(&e))),
        }
    }
}

/// Runs the readiness probe of one app.
pub(crate) struct Prober {
    spec: ProbeSpec,
    probe: AppProbe,
}

impl Prober {
    pub(crate) fn new(
        spec: ProbeSpec,
        app: SocketAddr,
        h2c: bool,
        runner: Arc<dyn CommandRunner>,
    ) -> Self {
        Prober {
            probe: AppProbe::new(spec.action.clone(), app, h2c).with_runner(runner),
            spec,
        }
    }

    /// One try, bounded by `timeout`.
    async fn check(&self, timeout: Duration) -> bool {
        self.probe.check(timeout).await.is_ok()
    }

    /// Probes for one run of the app, publishing readiness into `ready`. Never returns; the
    /// caller drops it when the app stops or restarts.
    pub(crate) async fn run(&self, ready: &watch::Sender<bool>) {
        let set = |v: bool| {
            ready.send_if_modified(|r| std::mem::replace(r, v) != v);
        };
        set(false);
        // Even a zero sleep waits for the timer's next millisecond tick: skip it.
        if !self.spec.initial_delay.is_zero() {
            tokio::time::sleep(self.spec.initial_delay).await;
        }
        let successes = self.spec.success_threshold.max(1);
        let failures = self.spec.effective_failure_threshold();
        loop {
            self.aggressive(successes).await;
            tracing::debug!(app = %self.probe.app, "app passed readiness");
            set(true);
            let aggressive_mode = self.spec.period.is_zero();
            let timeout = self.spec.effective_timeout();
            let (period, timeout) = if aggressive_mode {
                (BACKGROUND_INTERVAL, AGGRESSIVE_TIMEOUT.max(timeout))
            } else {
                (self.spec.period, timeout)
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

    /// Tries until `successes` tries in a row pass: for a network probe, first as soon as the
    /// app's port accepts connections ([`wait_for_port`]), then after pauses growing from
    /// 1 ms to 50 ms (see [`retry_pause`]). Each network try gets
    /// 100 ms; an exec try gets the probe's timeout, since starting a program alone can take
    /// longer.
    async fn aggressive(&self, successes: u32) {
        let timeout = match self.spec.action {
            ProbeAction::Exec { .. } => self.spec.effective_timeout(),
            _ => AGGRESSIVE_TIMEOUT,
        };
        let mut run = 0;
        let network = !matches!(self.spec.action, ProbeAction::Exec { .. });
        if network && wait_for_port(self.probe.app, PORT_POLL_FOR).await {
            // For a TCP probe that connection was the try itself.
            if self.spec.action == ProbeAction::Tcp {
                run = 1;
                if run >= successes {
                    return;
                }
            }
        }
        let began = Instant::now();
        loop {
            let started = Instant::now();
            if self.check(timeout).await {
                run += 1;
                if run >= successes {
                    return;
                }
            } else {
                run = 0;
            }
            let pause = retry_pause(started - began, AGGRESSIVE_INTERVAL);
            tokio::time::sleep_until(started + pause).await;
        }
    }
}

/// Waits until `app` accepts TCP connections, for at most about `limit`: true once one was
/// accepted (and closed). Tokio's timer ticks in milliseconds, so an async pause of 1 ms lasts
/// up to 2, which is as long again as a small app takes to start; here a blocking thread looks
/// every [`PORT_POLL`] (a refused loopback connection costs a few microseconds), the pause
/// growing with the wait (a sixteenth of it) so a slow app costs a few dozen looks. Stops
/// when the returned future is dropped. False at once when [`PORT_WATCHERS`] ports are
/// watched already.
pub(crate) async fn wait_for_port(app: SocketAddr, limit: Duration) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WATCHING: AtomicUsize = AtomicUsize::new(0);
    struct Watcher;
    impl Drop for Watcher {
        fn drop(&mut self) {
            WATCHING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if WATCHING.fetch_add(1, Ordering::Relaxed) >= PORT_WATCHERS {
        WATCHING.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    watch_port(app, limit, Watcher).await
}

/// [`wait_for_port`] without the cap; `hold` is dropped when the looking ends.
async fn watch_port<H: Send + 'static>(app: SocketAddr, limit: Duration, hold: H) -> bool {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let looking = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        // Real time: a blocking thread cannot follow a paused Tokio clock.
        let began = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if std::net::TcpStream::connect_timeout(&app, AGGRESSIVE_TIMEOUT).is_ok() {
                return true;
            }
            let waited = began.elapsed();
            if waited >= limit {
                return false;
            }
            std::thread::sleep((waited / 16).max(PORT_POLL));
        }
        false
    });
    looking.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn wait_for_port_sees_a_port_start_accepting() {
        let addr = free_addr();
        let waiting = tokio::spawn(watch_port(addr, Duration::from_secs(10), ()));
        // Nothing listens yet: it keeps looking.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _listener = std::net::TcpListener::bind(addr).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(seen.unwrap().unwrap(), "the port accepts");
    }

    #[tokio::test]
    async fn wait_for_port_gives_up_after_its_limit() {
        let addr = free_addr();
        let seen = tokio::time::timeout(
            Duration::from_secs(10),
            watch_port(addr, Duration::from_millis(5), ()),
        )
        .await;
        assert!(!seen.unwrap(), "nothing ever listened");
    }
}
