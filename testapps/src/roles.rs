//! Routes that play the remaining roles of Knative's test images (reference §8.4): the
//! `readiness` image's switchable readiness, the `autoscale` image's `bloat` and `prime`, the
//! `timeout` image's delayed head and body, and the `runtime` image's report of what the
//! process sees.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode, header};

use crate::{Body, full, json, num};

/// Whether `/readyz` passes (the process starts ready).
static READY: AtomicBool = AtomicBool::new(true);
/// Bumped by every switch, so a timed restore only undoes its own switch.
static READY_GENERATION: AtomicU64 = AtomicU64::new(0);

/// When the process started, for `READY_DELAY`.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Notes the process's start (`READY_DELAY` counts from here).
pub fn mark_started() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// `READY_DELAY` (`10s`, `500ms`; like the `readiness` image's): how long after the start
/// the health routes keep failing.
fn ready_delay() -> Duration {
    let Ok(raw) = std::env::var("READY_DELAY") else {
        return Duration::ZERO;
    };
    let parsed = match raw.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => raw
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs),
    };
    parsed.unwrap_or_else(|| {
        eprintln!("rouse-testapp: READY_DELAY {raw:?} is not like 10s or 500ms; ignored");
        Duration::ZERO
    })
}

/// `/readyz`, `/healthz/readiness`, `/healthz/liveness`: 200 `ready` while ready, else 503
/// `not ready` (any query is ignored, so a probe path like `/readyz?probe=1` works); all fail
/// until `READY_DELAY` has passed since the start.
pub fn readyz() -> Response<Body> {
    let since = STARTED.get().map_or(Duration::MAX, |t| t.elapsed());
    if since < ready_delay() {
        return full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready yet (READY_DELAY)\n",
        );
    }
    if READY.load(Ordering::SeqCst) {
        full(StatusCode::OK, "text/plain", "ready\n")
    } else {
        full(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
    }
}

/// `/toggle-ready` flips readiness, `/start-failing` makes it fail; with
/// `?restore-after=MS` the previous state comes back after MS (a removed instance cannot be
/// reached to be switched back). Answers `pid=<pid> ready=<bool>`.
pub fn switch_ready(toggle: bool, q: &BTreeMap<String, String>) -> Response<Body> {
    let before = if toggle {
        READY.fetch_xor(true, Ordering::SeqCst)
    } else {
        READY.swap(false, Ordering::SeqCst)
    };
    let generation = READY_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let restore = num(q, "restore-after", 0);
    if restore > 0 {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(restore)).await;
            if READY_GENERATION.load(Ordering::SeqCst) == generation {
                READY.store(before, Ordering::SeqCst);
            }
        });
    }
    let now = READY.load(Ordering::SeqCst);
    full(
        StatusCode::OK,
        "text/plain",
        format!("pid={} ready={now}\n", std::process::id()),
    )
}

/// `/whoami`: the process id, telling instances apart.
pub fn whoami() -> Response<Body> {
    full(
        StatusCode::OK,
        "text/plain",
        format!("{}\n", std::process::id()),
    )
}

/// The `autoscale` image's `bloat=MiB`: allocates and touches that much memory for the
/// request's duration (capped at 4 GiB so a typo cannot take the machine).
pub fn bloat(mib: u64) -> usize {
    let bytes = (mib.min(4096) as usize) << 20;
    let mut v = vec![0u8; bytes];
    // Touch every page so the memory is really used.
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v).iter().step_by(4096).count()
}

/// The `autoscale` image's `prime=N`: the largest prime below N (N ≤ 40 000 000).
pub fn largest_prime_below(n: u64) -> Option<u64> {
    let n = n.min(40_000_000) as usize;
    if n < 3 {
        return None;
    }
    let mut composite = vec![false; n];
    let mut i = 2;
    while i * i < n {
        if !composite[i] {
            (i * i..n).step_by(i).for_each(|j| composite[j] = true);
        }
        i += 1;
    }
    (2..n).rev().find(|&k| !composite[k]).map(|k| k as u64)
}

/// The `timeout` image: waits `initialTimeout` ms, sends the head, waits `timeout` ms, then
/// the body `Slept for X milliseconds`.
pub async fn timeout(q: &BTreeMap<String, String>) -> Response<Body> {
    let initial = num(q, "initialTimeout", 0);
    let later = num(q, "timeout", 0);
    tokio::time::sleep(Duration::from_millis(initial)).await;
    let body = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(later)).await;
        let text = format!("Slept for {} milliseconds", initial + later);
        Ok::<_, hyper::Error>(Frame::data(Bytes::from(text)))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The `runtime` image: what the process sees, as JSON.
pub async fn runtime() -> Response<Body> {
    let stdin = tokio::task::spawn_blocking(stdin_state)
        .await
        .unwrap_or_else(|_| "unknown".into());
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let (uid, gid) = ids();
    let paths: BTreeMap<String, serde_json::Value> = [
        "/tmp",
        "/dev/fd",
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
        "/proc",
        "/proc/self",
        "/etc/hosts",
        "/etc/resolv.conf",
    ]
    .into_iter()
    .map(|p| (p.to_string(), path_info(Path::new(p))))
    .collect();
    json(serde_json::json!({
        "args": std::env::args().collect::<Vec<_>>(),
        "cwd": cwd,
        "uid": uid,
        "gid": gid,
        "stdin": stdin,
        "env": std::env::vars().collect::<BTreeMap<_, _>>(),
        "paths": paths,
        "tmp_writable": writable_dir(Path::new("/tmp")),
        "proc_sys_writable": std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/hostname")
            .is_ok(),
    }))
}

/// `eof` when stdin reads as end of file at once, `data` when it has bytes, `blocked` when a
/// read waits (an open pipe nobody writes), `error: …` otherwise.
fn stdin_state() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let r = std::io::stdin().read(&mut buf);
        let _ = tx.send(match r {
            Ok(0) => "eof".to_string(),
            Ok(_) => "data".to_string(),
            Err(e) => format!("error: {e}"),
        });
    });
    rx.recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| "blocked".to_string())
}

/// The real uid and gid, from `/proc/self/status`.
fn ids() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    (field("Uid:"), field("Gid:"))
}

fn path_info(p: &Path) -> serde_json::Value {
    match std::fs::metadata(p) {
        Ok(m) => serde_json::json!({"exists": true, "dir": m.is_dir()}),
        Err(_) => serde_json::json!({"exists": false, "dir": false}),
    }
}

fn writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!("rouse-testapp-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
