//! `rouse queue-proxy`: the queue-proxy as a pod's sidecar. Only a runner: it reads Knative's
//! environment contract ([`env`]), binds Knative's ports and runs the same queue-proxy
//! behaviour local mode runs in-process ([`rouse_queue::QueueProxy`]: breaker and queue,
//! timeouts, probes, load report, drain). Around it: the admin port (`/wait-for-drain` for
//! the app's preStop hook, `/healthz`), the autoscaler's stats (`/metrics`, protobuf `Stat`
//! or JSON) and request metrics (Prometheus text), and the drain on SIGTERM.

pub mod env;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use rouse_http::{Body, full, text_response};
use rouse_queue::{QueueProxy, QueueStats};
use tokio::net::TcpListener;
use tokio::sync::watch;

use env::SidecarEnv;

/// How often the load report is cut (Knative's reporting period).
const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How long `/wait-for-drain` waits for a drain to begin before answering: the app may be
/// restarting alone (a failed liveness probe) while the queue-proxy keeps running.
const DRAIN_START_WAIT: Duration = Duration::from_secs(1);
/// How long the admin port may take to answer the preStop hooks after the drain.
const ADMIN_LINGER: Duration = Duration::from_secs(2);
/// How often the quiet period looks for new requests.
const QUIET_POLL: Duration = Duration::from_millis(50);
/// How long without a new request before the sidecar drops its code pages again.
const SHED_WHEN_IDLE: Duration = Duration::from_secs(10);
/// How often the sidecar looks for requests since its last look, to know it is idle.
const SHED_CHECK: Duration = Duration::from_secs(1);

/// Runs the sidecar until SIGTERM (or SIGINT) and its drain are over.
pub async fn run() -> anyhow::Result<()> {
    let env = SidecarEnv::from_process()?;
    if env.tls_port.is_some() {
        tracing::debug!("QUEUE_SERVING_TLS_PORT is set; TLS is not served yet");
    }
    if env.http2_auto_detection {
        tracing::debug!("ENABLE_HTTP2_AUTO_DETECTION: the app's protocol follows the serving port");
    }
    let bind = |port: u16| {
        let addr = SocketAddr::new(env.bind, port);
        async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
        }
    };
    let serving = bind(env.serving_port).await?;
    let h2c = match env.h2c_port {
        Some(p) if p != env.serving_port || p == 0 => Some(bind(p).await?),
        _ => None,
    };
    let admin = bind(env.admin_port).await?;
    let metrics = bind(env.metrics_port).await?;
    let user_metrics = bind(env.user_metrics_port).await?;
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string());
    let h2c_addr = match &h2c {
        Some(l) => addr(l)?,
        None => "off".into(),
    };
    // One line with every address (port 0 means a free one: tests read them here).
    let line = format!(
        "rouse queue-proxy: serving={} h2c={h2c_addr} admin={} metrics={} user-metrics={} app={}",
        addr(&serving)?,
        addr(&admin)?,
        addr(&metrics)?,
        addr(&user_metrics)?,
        env.queue.app_addr,
    );
    println!("{line}");
    let _ = std::io::stdout().flush();
    // Start-up is over: keep resident only the code that serving runs.
    crate::code_pages::shed();

    let qp = Arc::new(QueueProxy::with_listener(env.queue.clone(), serving)?);
    if let Some(l) = h2c {
        qp.serve_also(l);
    }
    let env = Arc::new(env);
    let report = Arc::new(Mutex::new(QueueStats::default()));
    let (drain_state, _) = watch::channel(DrainState::Running);
    let drain_state = Arc::new(drain_state);

    // Start-up ends for good once the app is first ready (the first probes, the thread that
    // watched for its port): drop what that ran too, before the first requests come.
    let mut ready = qp.ready();
    let ready_shed = tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_ok() {
            crate::code_pages::shed();
        }
    });
    let reporter = tokio::spawn(cut_reports(qp.clone(), report.clone()));
    let shedder = tokio::spawn(shed_code_when_idle(qp.clone()));
    let admin_task = tokio::spawn(serve_admin(admin, qp.clone(), drain_state.clone()));
    let metrics_task = tokio::spawn(serve_stats(metrics, env.clone(), report));
    let user_metrics_task =
        tokio::spawn(serve_request_metrics(user_metrics, env.clone(), qp.clone()));

    wait_for_termination().await?;
    tracing::info!(quiet = ?env.quiet_period, "draining");
    drain(&qp, &env, &drain_state).await;
    reporter.abort();
    shedder.abort();
    ready_shed.abort();
    // The preStop hooks waiting on `/wait-for-drain` get their answer before the exit.
    let _ = tokio::time::timeout(ADMIN_LINGER, admin_task).await;
    metrics_task.abort();
    user_metrics_task.abort();
    Ok(())
}

/// Where the drain is; `/wait-for-drain` watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainState {
    Running,
    Draining,
    Drained,
}

async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Knative's drain: health checks fail at once (the endpoints controllers take the pod out)
/// while requests are still served, until the quiet period passes without a new request;
/// then the listeners close and the requests in flight (streams and WebSockets included) get
/// up to the revision's timeout to finish.
async fn drain(qp: &QueueProxy, env: &SidecarEnv, state: &watch::Sender<DrainState>) {
    state.send_replace(DrainState::Draining);
    qp.begin_drain();
    let mut seen = qp.requests_started();
    let mut quiet_since = tokio::time::Instant::now();
    while quiet_since.elapsed() < env.quiet_period {
        let left = env.quiet_period.saturating_sub(quiet_since.elapsed());
        tokio::time::sleep(left.min(QUIET_POLL)).await;
        let now = qp.requests_started();
        if now != seen {
            seen = now;
            quiet_since = tokio::time::Instant::now();
        }
    }
    qp.drain(env.grace).await;
    state.send_replace(DrainState::Drained);
}

/// Cuts the load report every second, as Knative's queue-proxy does; scrapes read the last one.
async fn cut_reports(qp: Arc<QueueProxy>, report: Arc<Mutex<QueueStats>>) {
    let mut tick = tokio::time::interval(REPORT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let stats = qp.take_stats();
        if let Ok(mut r) = report.lock() {
            *r = stats;
        }
    }
}

/// Drops the code pages again, and gives the heap's free pages back, each time the sidecar has
/// gone [`SHED_WHEN_IDLE`] without a new request (health checks do not count): what serving
/// touched stays resident only while requests come, and an idle pod keeps the code its probes
/// and reports run. The pages stay in the page cache (not evicted), so the next request maps
/// them back with minor faults instead of waiting on the disk.
async fn shed_code_when_idle(qp: Arc<QueueProxy>) {
    let mut tick = tokio::time::interval(SHED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = qp.requests_started();
    let mut quiet_since = tokio::time::Instant::now();
    // The start-up shed came before the listeners' tasks and the first probes ran.
    let mut shed = false;
    loop {
        tick.tick().await;
        let now = qp.requests_started();
        if now != seen {
            seen = now;
            quiet_since = tokio::time::Instant::now();
            shed = false;
        } else if !shed && quiet_since.elapsed() >= SHED_WHEN_IDLE {
            crate::code_pages::shed();
            qp.release_idle_buffers();
            crate::serve::release_free_heap();
            shed = true;
        }
    }
}

fn never_stop() -> impl std::future::Future<Output = ()> + Send {
    std::future::pending()
}

/// `:8022`: `/wait-for-drain` (the app's preStop hook: answers once the queue-proxy has
/// drained, so the app outlives every request routed to it) and `/healthz`.
async fn serve_admin(
    listener: TcpListener,
    qp: Arc<QueueProxy>,
    state: Arc<watch::Sender<DrainState>>,
) {
    let make = |_remote| {
        let qp = qp.clone();
        let state = state.clone();
        service_fn(move |req: Request<Body>| {
            let qp = qp.clone();
            let mut state = state.subscribe();
            async move {
                Ok::<_, Infallible>(match (req.method(), req.uri().path()) {
                    (&Method::GET, "/wait-for-drain") => {
                        let begun = tokio::time::timeout(
                            DRAIN_START_WAIT,
                            state.wait_for(|s| *s != DrainState::Running),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok());
                        if begun {
                            let drained = state.wait_for(|s| *s == DrainState::Drained).await;
                            drop(drained);
                        }
                        text_response(StatusCode::OK, "drained")
                    }
                    (&Method::GET, "/healthz") if qp.is_draining() => {
                        text_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    }
                    (&Method::GET, "/healthz") => text_response(StatusCode::OK, "ok"),
                    _ => text_response(StatusCode::NOT_FOUND, "not found"),
                })
            }
        })
    };
    // Stops once drained, after answering the preStop hooks that waited for it.
    let mut drained = state.subscribe();
    let shutdown = async move {
        let _ = drained.wait_for(|s| *s == DrainState::Drained).await;
    };
    rouse_http::serve(listener, make, shutdown).await;
}

/// `:9090/metrics`: the last load report, as Knative's protobuf `Stat` when the scraper asks
/// for `application/protobuf` (the autoscaler does), else as JSON.
async fn serve_stats(listener: TcpListener, env: Arc<SidecarEnv>, report: Arc<Mutex<QueueStats>>) {
    let make = |_remote| {
        let env = env.clone();
        let report = report.clone();
        service_fn(move |req: Request<Body>| {
            let stats = report.lock().map(|r| *r).unwrap_or_default();
            let env = env.clone();
            async move {
                if req.uri().path() != "/metrics" {
                    return Ok::<_, Infallible>(text_response(StatusCode::NOT_FOUND, "not found"));
                }
                let protobuf = req
                    .headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| {
                        v.contains("application/protobuf") || v.contains("application/x-protobuf")
                    });
                Ok(if protobuf {
                    with_type(full(stats.to_protobuf(&env.pod)), "application/protobuf")
                } else {
                    let json = serde_json::json!({
                        "podName": env.pod,
                        "namespace": env.queue.namespace,
                        "revision": env.queue.revision,
                        "averageConcurrentRequests": stats.average_concurrency,
                        "averageProxiedConcurrentRequests": stats.average_proxied_concurrency,
                        "requestCount": stats.request_count,
                        "proxiedRequestCount": stats.proxied_request_count,
                        "processUptime": stats.process_uptime,
                    });
                    with_type(full(json.to_string()), "application/json")
                })
            }
        })
    };
    rouse_http::serve(listener, make, never_stop()).await;
}

/// `:9091/metrics`: request metrics in Prometheus' text format.
async fn serve_request_metrics(listener: TcpListener, env: Arc<SidecarEnv>, qp: Arc<QueueProxy>) {
    let make = |_remote| {
        let env = env.clone();
        let qp = qp.clone();
        service_fn(move |req: Request<Body>| {
            let text = request_metrics(&env, &qp);
            async move {
                Ok::<_, Infallible>(if req.uri().path() == "/metrics" {
                    with_type(full(text), "text/plain; version=0.0.4; charset=utf-8")
                } else {
                    text_response(StatusCode::NOT_FOUND, "not found")
                })
            }
        })
    };
    rouse_http::serve(listener, make, never_stop()).await;
}

fn request_metrics(env: &SidecarEnv, qp: &QueueProxy) -> String {
    let labels = format!(
        "namespace=\"{}\",configuration=\"{}\",revision=\"{}\",pod=\"{}\"",
        escape(&env.queue.namespace),
        escape(&env.configuration),
        escape(&env.queue.revision),
        escape(&env.pod)
    );
    let metric = |out: &mut String, name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"
        ));
    };
    let mut out = String::new();
    metric(
        &mut out,
        "rouse_queue_requests_total",
        "counter",
        "Requests received (health checks excluded).",
        qp.requests_started().to_string(),
    );
    metric(
        &mut out,
        "rouse_queue_requests_in_flight",
        "gauge",
        "Requests being handled now, queued ones included.",
        qp.in_flight().to_string(),
    );
    metric(
        &mut out,
        "rouse_queue_depth",
        "gauge",
        "Requests waiting for a concurrency slot.",
        qp.queued().to_string(),
    );
    metric(
        &mut out,
        "rouse_queue_app_ready",
        "gauge",
        "1 when the app passes its readiness probe.",
        u8::from(qp.is_ready()).to_string(),
    );
    out
}

/// A label value as Prometheus' text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
