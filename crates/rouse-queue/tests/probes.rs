//! The probes against real servers and programs: a hand-written gRPC health server over h2c,
//! HTTP and TCP apps on loopback, and `/bin/sh` for exec probes; then a queue-proxy's
//! readiness following gRPC and exec probes both ways.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_http::{Body, boxed, full};
use rouse_queue::{AppProbe, ProbeAction, ProbeFailure, ProbeSpec, QueueConfig, QueueProxy};
use tokio::net::TcpListener;

const BOUND: Duration = Duration::from_secs(10);
const TRY: Duration = Duration::from_secs(2);

/// A gRPC health server written by hand: statuses per service name; an unknown service gets
/// a trailers-only NOT_FOUND, as grpc-go's health server answers.
#[derive(Clone, Default)]
struct Health {
    statuses: Arc<Mutex<HashMap<String, u8>>>,
    /// Service names the probe asked about, in order.
    asked: Arc<Mutex<Vec<String>>>,
    /// What was seen of the last request: content-type, te, user-agent.
    last_headers: Arc<Mutex<HeaderMap>>,
    /// When set, every call gets this plain HTTP status.
    http_status: Arc<Mutex<Option<StatusCode>>>,
    calls: Arc<AtomicUsize>,
}

impl Health {
    fn set(&self, service: &str, status: u8) {
        self.statuses
            .lock()
            .unwrap()
            .insert(service.to_string(), status);
    }

    async fn start(&self, h2: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let health = health.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| health.clone().check(req));
                    let io = TokioIo::new(tcp);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        addr
    }

    async fn check(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_headers.lock().unwrap() = req.headers().clone();
        if let Some(s) = *self.http_status.lock().unwrap() {
            let mut r = Response::new(full("no"));
            *r.status_mut() = s;
            return Ok(r);
        }
        if req.uri().path() != "/grpc.health.v1.Health/Check" {
            return Ok(trailers_only(12, "unknown method"));
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let service = match parse_request(&body) {
            Some(s) => s,
            None => return Ok(trailers_only(13, "bad request frame")),
        };
        self.asked.lock().unwrap().push(service.clone());
        let status = self.statuses.lock().unwrap().get(&service).copied();
        let Some(status) = status else {
            return Ok(trailers_only(5, "unknown service"));
        };
        // HealthCheckResponse { status } in one frame, then OK in the trailers.
        let mut frame = BytesMut::from(&[0u8, 0, 0, 0, 2, 0x08][..]);
        frame.extend_from_slice(&[status]);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(frame.freeze())),
            Ok(Frame::trailers(trailers)),
        ]);
        let mut resp = Response::new(boxed(StreamBody::new(frames)));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok(resp)
    }
}

/// A gRPC error with no message: status and message in the response headers.
fn trailers_only(code: u16, message: &'static str) -> Response<Body> {
    let mut resp = Response::new(boxed(Empty::<Bytes>::new()));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    resp
}

/// The `service` of a framed HealthCheckRequest (None when malformed).
fn parse_request(body: &[u8]) -> Option<String> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let msg = rest.get(4..4 + len)?;
    if flag != 0 || rest.len() != 4 + len {
        return None;
    }
    match msg {
        [] => Some(String::new()),
        [0x0a, n, name @ ..] if (*n as usize) == name.len() && *n < 0x80 => {
            String::from_utf8(name.to_vec()).ok()
        }
        _ => None,
    }
}

fn grpc(service: &str) -> ProbeAction {
    ProbeAction::Grpc {
        service: service.into(),
    }
}

#[tokio::test]
async fn grpc_probe_passes_only_on_ok_and_serving() {
    let health = Health::default();
    let addr = health.start(true).await;
    health.set("", 1);
    let probe = AppProbe::new(grpc(""), addr, false);
    assert_eq!(probe.check(TRY).await, Ok(()));
    {
        let h = health.last_headers.lock().unwrap();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["te"], "trailers");
        assert!(h["user-agent"].to_str().unwrap().starts_with("kube-probe/"));
    }

    health.set("", 2);
    assert_eq!(
        probe.check(TRY).await,
        Err(ProbeFailure::NotServing("NOT_SERVING".into()))
    );
    health.set("", 0);
    assert_eq!(
        probe.check(TRY).await,
        Err(ProbeFailure::NotServing("UNKNOWN".into()))
    );

    // The service name travels in the request; an unknown one is a gRPC error.
    let named = AppProbe::new(grpc("shop.Cart"), addr, false);
    let err = named.check(TRY).await.unwrap_err();
    assert_eq!(
        err,
        ProbeFailure::GrpcStatus {
            code: 5,
            message: "unknown service".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "gRPC status 5 (NOT_FOUND): unknown service"
    );
    health.set("shop.Cart", 1);
    assert_eq!(named.check(TRY).await, Ok(()));
    assert_eq!(
        health.asked.lock().unwrap().as_slice(),
        ["", "", "", "shop.Cart", "shop.Cart"]
    );

    // Not 200: fails whatever the body says.
    *health.http_status.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(probe.check(TRY).await, Err(ProbeFailure::Status(503)));
}

#[tokio::test]
async fn grpc_probe_fails_clearly_without_a_grpc_server() {
    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = AppProbe::new(grpc(""), closed, false)
        .check(TRY)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeFailure::Connect(_)), "{err:?}");

    // An HTTP/1.1-only server cannot speak HTTP/2.
    let health = Health::default();
    health.set("", 1);
    let h1 = health.start(false).await;
    let err = AppProbe::new(grpc(""), h1, false)
        .check(TRY)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProbeFailure::Protocol(_) | ProbeFailure::TimedOut(_)),
        "{err:?}"
    );

    // A server that accepts and never answers: the try times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let err = AppProbe::new(grpc(""), addr, false)
        .check(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err, ProbeFailure::TimedOut(Duration::from_millis(200)));
    drop(silent);
}

/// An HTTP app answering `/code/N` with status N.
async fn status_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let code = req
                        .uri()
                        .path()
                        .strip_prefix("/code/")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(200);
                    let mut r = Response::new(full(""));
                    *r.status_mut() = StatusCode::from_u16(code).unwrap();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_and_http_probes_say_how_they_failed() {
    let app = status_app().await;
    let http = |path: &str| ProbeAction::Http {
        path: path.into(),
        headers: vec![],
    };
    assert_eq!(
        AppProbe::new(ProbeAction::Tcp, app, false).check(TRY).await,
        Ok(())
    );
    assert_eq!(
        AppProbe::new(http("/code/204"), app, false)
            .check(TRY)
            .await,
        Ok(())
    );
    assert_eq!(
        AppProbe::new(http("code/302"), app, false).check(TRY).await,
        Ok(())
    );
    let err = AppProbe::new(http("/code/500"), app, false)
        .check(TRY)
        .await
        .unwrap_err();
    assert_eq!(err, ProbeFailure::Status(500));
    assert_eq!(err.to_string(), "answered HTTP 500");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for action in [ProbeAction::Tcp, http("/")] {
        let err = AppProbe::new(action.clone(), closed, false)
            .check(TRY)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeFailure::Connect(m) if m.to_lowercase().contains("refused")),
            "{action}: {err:?}"
        );
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rouse-probes-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str, env: &[(&str, &str)], dir: Option<&TempDir>) -> ProbeAction {
    ProbeAction::Exec {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        working_dir: dir.map(|d| d.0.clone()),
    }
}

fn unused_addr() -> SocketAddr {
    // Exec probes do not touch the network.
    "127.0.0.1:9".parse().unwrap()
}

#[tokio::test]
async fn exec_probe_runs_with_env_and_dir_and_passes_on_exit_zero() {
    let dir = TempDir::new("exec");
    let check = |script: &str| {
        AppProbe::new(
            sh(script, &[("WANT", "ok")], Some(&dir)),
            unused_addr(),
            false,
        )
    };
    // Runs in the working dir, with the given env.
    std::fs::write(dir.0.join("ok"), "").unwrap();
    assert_eq!(check("test -f \"$WANT\"").check(TRY).await, Ok(()));
    std::fs::remove_file(dir.0.join("ok")).unwrap();
    assert_eq!(
        check("test -f \"$WANT\"").check(TRY).await,
        Err(ProbeFailure::Exit {
            code: Some(1),
            output: String::new()
        })
    );
    let err = check("echo out; echo why >&2; exit 3")
        .check(TRY)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "exited with code 3: out\nwhy");

    let missing = AppProbe::new(
        ProbeAction::Exec {
            command: vec!["/no/such/probe-program".into()],
            env: vec![],
            working_dir: None,
        },
        unused_addr(),
        false,
    );
    let err = missing.check(TRY).await.unwrap_err();
    assert!(
        matches!(&err, ProbeFailure::Spawn { program, .. } if program == "/no/such/probe-program"),
        "{err:?}"
    );
}

#[tokio::test]
async fn exec_probe_past_its_timeout_fails_and_the_program_is_killed() {
    let dir = TempDir::new("timeout");
    let pid_file = dir.0.join("pid");
    let probe = AppProbe::new(
        sh("echo $$ > pid; exec sleep 30", &[], Some(&dir)),
        unused_addr(),
        false,
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        probe.check(Duration::from_millis(500)).await,
        Err(ProbeFailure::TimedOut(Duration::from_millis(500)))
    );
    assert!(started.elapsed() < BOUND);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Gone (or a zombie about to be reaped) within the bound.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probe program {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(qp: &QueueProxy, want: bool) {
    let mut rx = qp.ready();
    tokio::time::timeout(BOUND, rx.wait_for(|r| *r == want))
        .await
        .unwrap_or_else(|_| panic!("readiness did not become {want} in time"))
        .unwrap();
}

fn periodic(action: ProbeAction) -> ProbeSpec {
    ProbeSpec {
        action,
        period: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 2,
        initial_delay: Duration::ZERO,
    }
}

#[tokio::test]
async fn queue_readiness_follows_a_grpc_probe_both_ways() {
    let health = Health::default();
    let app = health.start(true).await;
    let qp = QueueProxy::start(QueueConfig {
        readiness: periodic(grpc("")),
        ..QueueConfig::new(app, "default", "grpc-00001")
    })
    .await
    .unwrap();
    // Unknown service at first: not ready, however long aggressive probing goes on.
    let calls = health.calls.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + BOUND;
    while health.calls.load(Ordering::SeqCst) < calls + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app was not probed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!qp.is_ready());

    health.set("", 1);
    wait_ready(&qp, true).await;
    health.set("", 2);
    wait_ready(&qp, false).await;
    health.set("", 1);
    wait_ready(&qp, true).await;
}

#[tokio::test]
async fn queue_readiness_follows_an_exec_probe_both_ways() {
    let dir = TempDir::new("ready");
    let qp = QueueProxy::start(QueueConfig {
        readiness: periodic(sh("test -f ready", &[], Some(&dir))),
        ..QueueConfig::new(unused_addr(), "default", "exec-00001")
    })
    .await
    .unwrap();
    assert!(!qp.is_ready());
    std::fs::write(dir.0.join("ready"), "").unwrap();
    wait_ready(&qp, true).await;
    std::fs::remove_file(dir.0.join("ready")).unwrap();
    wait_ready(&qp, false).await;
    std::fs::write(dir.0.join("ready"), "").unwrap();
    wait_ready(&qp, true).await;
}
