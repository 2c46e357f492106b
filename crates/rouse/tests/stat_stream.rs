//! The activators' stat stream over real loopback sockets: `rouse activator`'s push client
//! against the controller's endpoint (both the real code, in this process): stats and pokes
//! arrive, the poke latency (printed), bad callers refused with the reason, a follower refusing
//! and a leader that steps down ending the stream, and the client reconnecting after the
//! endpoint restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse::cli::hops::stats_push::{StatsPush, Target};
use rouse_autoscaler::push::RevisionLoad;
use rouse_kube::stat_stream::{self, ActivatorStats, StreamEnd, StreamToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const TOKEN: &str = "s3cret-token";
const BOUND: Duration = Duration::from_secs(10);

struct Endpoint {
    addr: SocketAddr,
    stats: Arc<ActivatorStats>,
    leading: watch::Sender<bool>,
}

async fn endpoint_on(addr: SocketAddr) -> Endpoint {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ActivatorStats::default());
    let (leading, rx) = watch::channel(true);
    let end = Arc::new(StreamEnd {
        stats: stats.clone(),
        token: Arc::new(StreamToken::new(TOKEN)),
        leading: rx,
    });
    tokio::spawn(stat_stream::serve(listener, end, std::future::pending()));
    Endpoint {
        addr,
        stats,
        leading,
    }
}

/// An endpoint in a runtime of its own, so that ending the runtime ends its connections too, as
/// an autoscaler process that exits does (aborting the accept loop alone leaves the open
/// stream's tasks running, and a pushing activator on it).
async fn endpoint_in_own_runtime(addr: SocketAddr) -> (Endpoint, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ep = rt.spawn(endpoint_on(addr)).await.unwrap();
    (ep, rt)
}

/// Binds the endpoint again on `addr` once the old listener is gone.
async fn endpoint_again_on(addr: SocketAddr) -> Endpoint {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            drop(l);
            return endpoint_on(addr).await;
        }
        assert!(Instant::now() < deadline, "{addr} still taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn push_to(addr: SocketAddr, token: std::path::PathBuf) -> Arc<StatsPush> {
    StatsPush::start(Target::new(&format!("http://{addr}"), token).unwrap())
}

async fn next_poke(rx: &mut mpsc::UnboundedReceiver<(String, String)>) -> (String, String) {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("a poke within the bound")
        .expect("poke channel open")
}

/// Reports a load every 50 ms until the endpoint has one (the stream is up then).
async fn until_stats_arrive(push: &StatsPush, stats: &ActivatorStats) -> Vec<RevisionLoad> {
    let deadline = Instant::now() + BOUND;
    loop {
        push.report(vec![load("hello-00001", 2.5)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = stats.take();
        if !got.is_empty() {
            return got
                .into_iter()
                .map(|l| RevisionLoad {
                    namespace: l.namespace,
                    revision: l.revision,
                    average_concurrency: l.average_concurrency,
                    request_count: l.request_count,
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "no stats arrived");
    }
}

fn load(rev: &str, c: f64) -> RevisionLoad {
    RevisionLoad {
        namespace: "ns".into(),
        revision: rev.into(),
        average_concurrency: c,
        request_count: 3.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_pokes_reach_the_autoscaler_and_a_poke_is_fast() {
    let ep = endpoint_on("127.0.0.1:0".parse().unwrap()).await;
    let mut pokes = ep.stats.begin_term();
    let dir = tempfile::tempdir().unwrap();
    let push = push_to(ep.addr, token_file(&dir, TOKEN));
    let got = until_stats_arrive(&push, &ep.stats).await;
    assert_eq!(got[0], load("hello-00001", 2.5));

    let mut latencies = Vec::new();
    for i in 0..50 {
        let rev = format!("rev-{i}");
        let sent = Instant::now();
        push.poke("ns", &rev);
        let poke = next_poke(&mut pokes).await;
        latencies.push(sent.elapsed());
        assert_eq!(poke, ("ns".to_string(), rev));
    }
    latencies.sort();
    println!(
        "poke latency over loopback, activator push -> autoscaler poke channel (50 pokes): \
         min {:?}, median {:?}, p90 {:?}, max {:?}",
        latencies[0], latencies[25], latencies[45], latencies[49]
    );
}

/// Sends `head` (and `body`) on a fresh connection; the answer's status and text.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may stop reading early (that is what some cases test).
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
            if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 100") {
                let text = String::from_utf8_lossy(&out);
                if let Some(len) = text.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                }) {
                    let head_end = text.find("\r\n\r\n").unwrap() + 4;
                    if out.len() >= head_end + len {
                        break;
                    }
                }
            }
        }
    });
    read.await.expect("an answer within the bound");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn stream_head(addr: SocketAddr, auth: &str) -> String {
    format!(
        "POST /v1/activator-stats HTTP/1.1\r\nHost: {addr}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    )
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

#[tokio::test]
async fn callers_without_the_token_or_with_bad_lines_are_refused() {
    let ep = endpoint_on("127.0.0.1:0".parse().unwrap()).await;
    let mut pokes = ep.stats.begin_term();
    let a = ep.addr;
    let (status, text) = raw(a, &stream_head(a, ""), &chunk("{}\n")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("Bearer"), "{text}");
    let (status, _) = raw(a, &stream_head(a, "Authorization: Bearer wrong\r\n"), &[]).await;
    assert_eq!(status, 401);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, _) = raw(
        a,
        &format!("GET /v1/activator-stats HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
        &[],
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = raw(
        a,
        &format!("POST /elsewhere HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"),
        &[],
    )
    .await;
    assert_eq!(status, 404);
    // Accepted: a good line is taken; the bad one after it ends the stream, and the answer's
    // body says why.
    let mut body = chunk("{\"poke\":{\"namespace\":\"ns\",\"revision\":\"ok\"}}\n");
    body.extend(chunk("{\"stats\":[{\"namespace\":\"ns\",\"revision\":\"r\",\"averageConcurrency\":-4,\"requestCount\":1}]}\n"));
    let (status, text) = raw(a, &stream_head(a, &auth), &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("bad line: stats[0].averageConcurrency"),
        "{text}"
    );
    assert_eq!(next_poke(&mut pokes).await, ("ns".into(), "ok".into()));
    // An over-long line ends the stream before it is all read.
    let long = "x".repeat(rouse_autoscaler::push::MAX_LINE + 10);
    let (status, text) = raw(a, &stream_head(a, &auth), &chunk(&long)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("bad line: longer than"), "{text}");
    // Closing the stream ends it cleanly.
    let (status, text) = raw(a, &stream_head(a, &auth), b"0\r\n\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("closed by the activator"), "{text}");
    // A follower refuses at once.
    ep.leading.send_replace(false);
    let (status, text) = raw(a, &stream_head(a, &auth), &[]).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not the leading autoscaler"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stepping_down_ends_the_stream_and_the_push_reconnects() {
    let ep = endpoint_on("127.0.0.1:0".parse().unwrap()).await;
    let mut pokes = ep.stats.begin_term();
    let dir = tempfile::tempdir().unwrap();
    let push = push_to(ep.addr, token_file(&dir, TOKEN));
    until_stats_arrive(&push, &ep.stats).await;
    ep.leading.send_replace(false);
    // While nobody leads, pokes wait in the push's queue (the stream is refused)...
    tokio::time::sleep(Duration::from_millis(300)).await;
    push.poke("ns", "after-stepping-down");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pokes.try_recv().is_err(), "a follower took a poke");
    // ...and reach the leader once there is one again.
    let mut pokes = ep.stats.begin_term();
    ep.leading.send_replace(true);
    assert_eq!(
        next_poke(&mut pokes).await,
        ("ns".into(), "after-stepping-down".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_reconnects_after_the_autoscaler_restarts() {
    let (first, first_process) = endpoint_in_own_runtime("127.0.0.1:0".parse().unwrap()).await;
    let addr = first.addr;
    let mut pokes = first.stats.begin_term();
    let dir = tempfile::tempdir().unwrap();
    let push = push_to(addr, token_file(&dir, TOKEN));
    push.poke("ns", "before");
    assert_eq!(next_poke(&mut pokes).await, ("ns".into(), "before".into()));
    // The autoscaler goes away (its connections with it) and comes back on the same port.
    first_process.shutdown_background();
    let second = endpoint_again_on(addr).await;
    let mut pokes = second.stats.begin_term();
    push.poke("ns", "after");
    // Recent pokes are sent again on a new connection (one may have been lost with the old).
    loop {
        let (ns, rev) = next_poke(&mut pokes).await;
        assert_eq!(ns, "ns");
        assert!(rev == "before" || rev == "after", "{rev}");
        if rev == "after" {
            break;
        }
    }
    let got = until_stats_arrive(&push, &second.stats).await;
    assert_eq!(got[0].revision, "hello-00001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_file_is_read_again_at_each_connection() {
    let ep = endpoint_on("127.0.0.1:0".parse().unwrap()).await;
    let mut pokes = ep.stats.begin_term();
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir, "not-the-token");
    let push = push_to(ep.addr, file.clone());
    push.poke("ns", "waiting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pokes.try_recv().is_err(), "accepted a wrong token");
    // The Secret is mounted: a corrected token reaches the file and the next connection.
    std::fs::write(&file, TOKEN).unwrap();
    push.poke("ns", "now");
    let mut seen = Vec::new();
    while !seen.contains(&"now".to_string()) {
        seen.push(next_poke(&mut pokes).await.1);
    }
}

#[test]
fn the_autoscaler_url_is_checked() {
    let t = |u: &str| {
        Target::new(u, "t".into())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(t("http://autoscaler.knative-serving.svc:8080").is_ok());
    assert!(t("http://[::1]:8080/").is_ok());
    assert!(
        t("https://autoscaler:8080")
            .unwrap_err()
            .contains("http://")
    );
    assert!(
        t("http://autoscaler:8080/path")
            .unwrap_err()
            .contains("no path")
    );
    assert!(t("autoscaler:8080").is_err());
}
