//! The process runtime with real processes: the built `rouse-testapp` and `/bin/sh`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rouse_runtime::{
    InstanceInfo, InstanceState, ProbeSpec, ProcessRuntime, QueueTemplate, Runtime, WorkloadSpec,
};

mod common;

use common::{BOUND, NS, process_gone, testapp, wait_for, wait_gone};

fn spec(revision: &str, command: Vec<String>, args: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        namespace: NS.into(),
        revision: revision.into(),
        configuration: "hello".into(),
        service: "hello-svc".into(),
        command,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("MESSAGE".into(), "hi from env".into())],
        working_dir: None,
        queue: QueueTemplate {
            h2c: false,
            container_concurrency: 0,
            readiness: ProbeSpec::default(),
            revision: revision.into(),
            namespace: NS.into(),
            timeout: None,
            response_start_timeout: None,
            idle_timeout: None,
            request_body_buffer: rouse_http::DEFAULT_REQUEST_BODY_BUFFER,
        },
        drain_timeout: Duration::from_secs(10),
        liveness: None,
        startup: None,
        container: None,
    }
}

fn app_spec(revision: &str, args: &[&str]) -> WorkloadSpec {
    spec(revision, vec![testapp().display().to_string()], args)
}

fn all_ready(n: usize) -> impl Fn(&[InstanceInfo]) -> bool {
    move |i| i.len() == n && i.iter().all(|i| i.state == InstanceState::Ready)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{addr}{path}");
    let resp = client.get(uri.parse().unwrap()).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_starts_ready_with_env_and_a_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let mut events = rt.subscribe();
    rt.ensure(
        app_spec(
            "env-00001",
            &["--print", "booting $(K_REVISION) on $(PORT)"],
        ),
        1,
    );
    let insts = wait_for(&rt, "env-00001", "ready", all_ready(1)).await;
    let inst = &insts[0];
    assert!(
        inst.ever_ready && inst.pid.is_some() && inst.restarts == 0,
        "{inst:?}"
    );
    assert!(inst.id.starts_with("env-00001-"), "{}", inst.id);
    assert_eq!(
        events.try_recv().unwrap(),
        (NS.to_string(), "env-00001".to_string())
    );

    let (status, body) = get(inst.endpoint, "/").await;
    assert_eq!((status, body.as_str()), (200, "hi from env\n"));
    let (_, env) = get(inst.endpoint, "/env").await;
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    assert_eq!(env["PORT"], inst.app_port.to_string());
    assert_eq!(env["K_REVISION"], "env-00001");
    assert_eq!(env["K_CONFIGURATION"], "hello");
    assert_eq!(env["K_SERVICE"], "hello-svc");

    let expected = dir
        .path()
        .join(format!("logs/{NS}/env-00001/{}.log", inst.id));
    assert_eq!(inst.log_path, expected);
    let log = std::fs::read_to_string(&inst.log_path).unwrap();
    assert!(
        log.contains(&format!("booting env-00001 on {}", inst.app_port)),
        "{log}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_process_restarts_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let started = std::time::Instant::now();
    rt.ensure(
        app_spec(
            "crash-00001",
            &[
                "--print",
                "cannot open the pod bay doors",
                "--exit-immediately",
                "3",
            ],
        ),
        1,
    );
    let insts = wait_for(&rt, "crash-00001", "4 restarts", |i| {
        i.len() == 1 && i[0].restarts >= 4
    })
    .await;
    // Backoff 100 + 200 + 400 + 800 ms before the 4th restart: no tight crash loop.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    let inst = &insts[0];
    assert!(!inst.ever_ready);
    assert_ne!(inst.state, InstanceState::Ready);
    let t = inst
        .last_termination
        .as_ref()
        .expect("termination recorded");
    assert_eq!(
        (t.exit_code, t.signal, t.reason.as_str()),
        (Some(3), None, "Error")
    );
    assert!(t.message.contains("cannot open the pod bay doors"), "{t:?}");
    assert!(t.message.contains("exiting with code 3"), "{t:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_process_that_exits_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    rt.ensure(app_spec("exit-00001", &[]), 1);
    let first = wait_for(&rt, "exit-00001", "ready", all_ready(1))
        .await
        .remove(0);
    let (status, _) = get(first.endpoint, "/exit?code=7").await;
    assert_eq!(status, 200);
    let again = wait_for(&rt, "exit-00001", "restarted and ready", |i| {
        all_ready(1)(i) && i[0].restarts == 1
    })
    .await
    .remove(0);
    let t = again.last_termination.as_ref().unwrap();
    assert_eq!(t.exit_code, Some(7));
    assert_ne!(again.pid, first.pid);
    assert_eq!(again.endpoint, first.endpoint, "the queue-proxy stays put");
    assert_eq!(get(again.endpoint, "/").await.0, 200);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_a_clear_termination() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let cases = [
        (
            "missing-00001",
            "/no/such/program",
            "No such file or directory",
        ),
        (
            "missing-00002",
            "no-such-program-anywhere",
            "not found in $PATH",
        ),
        (
            "missing-00003",
            not_exec.to_str().unwrap(),
            "Permission denied",
        ),
    ];
    for (rev, program, _) in &cases {
        rt.ensure(spec(rev, vec![program.to_string()], &[]), 1);
    }
    for (rev, _, want) in cases {
        let insts = wait_for(&rt, rev, "a termination", |i| {
            i.len() == 1 && i[0].last_termination.is_some()
        })
        .await;
        let t = insts[0].last_termination.clone().unwrap();
        assert_eq!(t.reason, "ContainerMissing", "{rev}: {t:?}");
        assert!(t.message.contains(want), "{rev}: {t:?}");
        assert_eq!(insts[0].pid, None);
        assert_ne!(insts[0].state, InstanceState::Ready);
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_programs_run_in_the_working_dir() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("bin")).unwrap();
    std::os::unix::fs::symlink(testapp(), work.join("bin/app")).unwrap();
    std::fs::write(work.join("greeting"), "hello from a file").unwrap();
    let rt = ProcessRuntime::new(dir.path().join("data"));
    // The shell reads a file relative to workingDir, proving the directory, then runs the app.
    let mut s = spec(
        "wd-00001",
        vec!["/bin/sh".into(), "-c".into()],
        &["MESSAGE=\"$(cat greeting)\" exec ./bin/app"],
    );
    s.working_dir = Some(work.clone());
    rt.ensure(s, 1);
    let inst = wait_for(&rt, "wd-00001", "ready", all_ready(1))
        .await
        .remove(0);
    assert_eq!(get(inst.endpoint, "/").await.1, "hello from a file\n");

    let mut s = spec("wd-00002", vec!["bin/app".into()], &[]);
    s.working_dir = Some(work);
    rt.ensure(s, 1);
    wait_for(&rt, "wd-00002", "ready", all_ready(1)).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_stops_the_newest_instance() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let s = app_spec("scale-00001", &[]);
    rt.ensure(s.clone(), 1);
    wait_for(&rt, "scale-00001", "one ready", all_ready(1)).await;
    rt.ensure(s.clone(), 2);
    let two = wait_for(&rt, "scale-00001", "two ready", all_ready(2)).await;
    rt.ensure(s.clone(), 1);
    let one = wait_for(&rt, "scale-00001", "one left", |i| i.len() == 1).await;
    assert_eq!(one[0].id, two[0].id, "the oldest instance stays");
    wait_gone(two[1].pid.unwrap()).await;
    assert!(!process_gone(two[0].pid.unwrap()));
    rt.ensure(s, 0);
    wait_for(&rt, "scale-00001", "none left", |i| i.is_empty()).await;
    wait_gone(two[0].pid.unwrap()).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_drains_in_flight_requests_before_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    rt.ensure(app_spec("drain-00001", &[]), 1);
    let inst = wait_for(&rt, "drain-00001", "ready", all_ready(1))
        .await
        .remove(0);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{}/stream?chunks=4&interval=150", inst.endpoint);
    let resp = client.get(uri.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The response has started; stop the revision while its body is still streaming.
    rt.remove(NS, "drain-00001");
    assert_eq!(
        rt.instances(NS, "drain-00001")[0].state,
        InstanceState::Terminating
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("full body")
        .to_bytes();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    wait_for(&rt, "drain-00001", "forgotten", |i| i.is_empty()).await;
    wait_gone(inst.pid.unwrap()).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_followed_by_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(300);
    let rt = ProcessRuntime::with_kill_grace(dir.path().to_path_buf(), grace);
    // The shell makes SIGTERM ignored and the app inherits that.
    let app = testapp().display().to_string();
    let s = spec(
        "stubborn-00001",
        vec!["/bin/sh".into(), "-c".into()],
        &[&format!("trap '' TERM; exec {app}")],
    );
    rt.ensure(s, 1);
    let inst = wait_for(&rt, "stubborn-00001", "ready", all_ready(1))
        .await
        .remove(0);
    let started = std::time::Instant::now();
    rt.remove(NS, "stubborn-00001");
    wait_for(&rt, "stubborn-00001", "forgotten", |i| i.is_empty()).await;
    assert!(
        started.elapsed() >= grace,
        "stopped before the grace: SIGTERM was not ignored?"
    );
    wait_gone(inst.pid.unwrap()).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    rt.ensure(app_spec("a-00001", &[]), 2);
    // A shell whose child is not exec'd: the whole process group must go.
    let s = spec(
        "b-00001",
        vec!["/bin/sh".into(), "-c".into()],
        &[&format!("{} ; echo done", testapp().display())],
    );
    rt.ensure(s, 1);
    let mut pids = Vec::new();
    for rev in ["a-00001", "b-00001"] {
        let n = if rev == "a-00001" { 2 } else { 1 };
        let insts = wait_for(&rt, rev, "ready", all_ready(n)).await;
        pids.extend(insts.iter().map(|i| i.pid.unwrap()));
    }
    // Polled: under load the probe can pass a moment before the shell's fork is visible.
    let deadline = std::time::Instant::now() + BOUND;
    let mut child_of_shell = children_of(pids[2]);
    while child_of_shell.len() != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        child_of_shell = children_of(pids[2]);
    }
    assert_eq!(
        child_of_shell.len(),
        1,
        "the shell runs the app as its child"
    );
    tokio::time::timeout(BOUND, rt.shutdown())
        .await
        .expect("shutdown finished");
    for pid in &pids {
        assert!(process_gone(*pid), "{pid} survived shutdown");
    }
    // The shell's child got the group's signal but is not ours to reap: its exit may land a
    // moment after shutdown returns.
    for pid in &child_of_shell {
        wait_gone(*pid).await;
    }
    assert!(rt.instances(NS, "a-00001").is_empty());
    rt.ensure(app_spec("a-00001", &[]), 1);
    assert!(
        rt.instances(NS, "a-00001").is_empty(),
        "nothing starts after shutdown"
    );
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A GET with extra headers; returns the status and the body.
async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::default()).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_reports_each_instance_once_per_period() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    rt.ensure(app_spec("scrape-00001", &[]), 2);
    let insts = wait_for(&rt, "scrape-00001", "two ready", all_ready(2)).await;
    rt.scrape(NS, "scrape-00001").await;
    for _ in 0..3 {
        assert_eq!(get(insts[0].endpoint, "/").await.0, 200);
    }
    let proxied = [("K-Proxy-Request", "activator")];
    assert_eq!(get_with(insts[1].endpoint, "/", &proxied).await.0, 200);

    let mut report = rt.scrape(NS, "scrape-00001").await;
    report.sort_by_key(|(id, _)| insts.iter().position(|i| i.id == *id));
    let ids: Vec<&str> = report.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec![insts[0].id.as_str(), insts[1].id.as_str()]);
    let (a, b) = (report[0].1, report[1].1);
    assert_eq!((a.request_count, a.proxied_request_count), (3.0, 0.0));
    assert_eq!((b.request_count, b.proxied_request_count), (1.0, 1.0));
    assert!(a.process_uptime > 0.0);

    // Each call covers the time since the previous one.
    for (_, s) in rt.scrape(NS, "scrape-00001").await {
        assert_eq!(s.request_count, 0.0);
        assert_eq!(s.average_concurrency, 0.0);
    }
    assert!(rt.scrape(NS, "no-such-00001").await.is_empty());
    rt.shutdown().await;
}

fn with_env(mut spec: WorkloadSpec, env: &[(&str, &str)]) -> WorkloadSpec {
    spec.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spec
}

/// `n` concurrent GETs of `path`; their statuses.
async fn burst(addr: SocketAddr, path: &'static str, n: usize) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(async move { get(addr, path).await.0 });
    }
    let mut out = Vec::new();
    while let Some(s) = set.join_next().await {
        out.push(s.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_one_keeps_a_single_threaded_app_happy() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let single = [("FAIL_ON_CONCURRENCY", "1")];
    // Unlimited: the app notices the overlap (the check works).
    rt.ensure(with_env(app_spec("single-00001", &[]), &single), 1);
    let inst = wait_for(&rt, "single-00001", "ready", all_ready(1))
        .await
        .remove(0);
    let statuses = burst(inst.endpoint, "/?sleep=300", 5).await;
    assert!(statuses.contains(&500), "{statuses:?}");

    // containerConcurrency 1: 5 clients × 20 requests, never two at once.
    let mut spec = with_env(app_spec("single-00002", &[]), &single);
    spec.queue.container_concurrency = 1;
    rt.ensure(spec, 1);
    let inst = wait_for(&rt, "single-00002", "ready", all_ready(1))
        .await
        .remove(0);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let addr = inst.endpoint;
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(get(addr, "/?sleep=5").await.0);
            }
            statuses
        });
    }
    let mut all = Vec::new();
    while let Some(s) = clients.join_next().await {
        all.extend(s.unwrap());
    }
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_crashing_on_its_first_request_serves_after_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let spec = with_env(
        app_spec("crashfirst-00001", &[]),
        &[
            ("CRASH_ON_FIRST_REQUEST", "1"),
            ("MARKER_DIR", markers.to_str().unwrap()),
        ],
    );
    rt.ensure(spec, 1);
    let first = wait_for(&rt, "crashfirst-00001", "ready", all_ready(1))
        .await
        .remove(0);
    // The app dies under the request. A GET is idempotent, so the queue-proxy waits for the
    // restarted app and sends it once more: the client gets the real answer.
    assert_eq!(get(first.endpoint, "/").await.0, 200);
    let again = wait_for(&rt, "crashfirst-00001", "restarted and ready", |i| {
        all_ready(1)(i) && i[0].restarts == 1
    })
    .await
    .remove(0);
    assert_eq!(again.last_termination.as_ref().unwrap().exit_code, Some(1));
    assert!(markers.join("crashed-on-first-request").exists());
    assert_eq!(get(again.endpoint, "/").await.0, 200);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_timeouts_reach_the_queue_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let mut spec = app_spec("timeout-00001", &[]);
    spec.queue.timeout = Some(Duration::from_millis(500));
    rt.ensure(spec, 1);
    let inst = wait_for(&rt, "timeout-00001", "ready", all_ready(1))
        .await
        .remove(0);
    assert_eq!(get(inst.endpoint, "/headers?sleep=10").await.0, 200);
    let (status, body) = get(inst.endpoint, "/?sleep=5000").await;
    assert_eq!((status, body.as_str()), (504, "request timeout\n"));
    rt.shutdown().await;
}

const HELPER_ENV: &str = "ROUSE_RUNTIME_ORPHAN_HELPER_DIR";

/// Not a test on its own: the no-orphans test re-runs this test binary with this test
/// selected and `ROUSE_RUNTIME_ORPHAN_HELPER_DIR` set, making it a platform that runs two
/// instances and then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_helper_platform() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let rt = ProcessRuntime::new(PathBuf::from(dir));
    rt.ensure(app_spec("orphan-00001", &[]), 2);
    let insts = wait_for(&rt, "orphan-00001", "ready", all_ready(2)).await;
    let pids: Vec<String> = insts.iter().map(|i| i.pid.unwrap().to_string()).collect();
    println!("PIDS {}", pids.join(" "));
    std::future::pending::<()>().await;
}

#[test]
fn no_orphans_when_the_platform_is_sigkilled() {
    testapp();
    let dir = tempfile::tempdir().unwrap();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "orphan_helper_platform",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // The harness prints the test's name on the same line.
            if let Some((_, pids)) = line.split_once("PIDS ") {
                let _ = tx.send(pids.to_string());
            }
        }
    });
    let pids: Vec<u32> = match rx.recv_timeout(BOUND) {
        Ok(line) => line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect(),
        Err(e) => {
            let _ = helper.kill();
            panic!("the helper platform never reported its instances: {e}");
        }
    };
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| !process_gone(*p)));
    helper.kill().unwrap(); // SIGKILL: no chance to clean up
    helper.wait().unwrap();
    let deadline = std::time::Instant::now() + BOUND;
    for pid in pids {
        while !process_gone(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "app {pid} outlived its platform"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The next platform on the data dir finds the killed one's records (and cgroups) and
    // clears them.
    let records = dir.path().join("run").join("instances");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 2);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _rt = tokio.enter();
    let next = ProcessRuntime::new(dir.path().to_path_buf());
    next.clean_leftovers();
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
}

#[allow(dead_code)]
fn _assert_runtime_is_object_safe(rt: Arc<ProcessRuntime>) -> Arc<dyn Runtime> {
    rt
}

/// The program starts clean: no signal blocked, SIGPIPE back to its default (Rust ignores
/// it), in its own process group, a child of the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_starts_with_default_signals_in_its_own_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let rev = "status-00001";
    rt.ensure(
        spec(rev, vec!["cat".into(), "/proc/self/status".into()], &[]),
        1,
    );
    let insts = wait_for(&rt, rev, "the first run's end", |i| {
        i.len() == 1 && i[0].last_termination.is_some()
    })
    .await;
    let status = std::fs::read_to_string(&insts[0].log_path).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
            .to_string()
    };
    let mask = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
    assert_eq!(mask("SigBlk"), 0, "{status}");
    assert_eq!(mask("SigIgn") & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
    assert_eq!(field("PPid"), std::process::id().to_string());
    let pid = field("Pid");
    assert_eq!(field("NSpgid"), pid, "its own process group: {status}");
    assert_eq!(
        insts[0].last_termination.as_ref().unwrap().exit_code,
        Some(0)
    );
    rt.shutdown().await;
}
