//! Liveness probes restart instances, and a periodic readiness probe takes an instance out of
//! serving and back, with real processes (`rouse-testapp`, `/bin/sh`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rouse_runtime::{
    InstanceInfo, InstanceState, LIVENESS_PROBE_FAILED, ProbeAction, ProbeSpec, ProcessRuntime,
    QueueTemplate, Runtime, STARTUP_PROBE_FAILED, WorkloadSpec,
};

mod common;

use common::{BOUND, NS, testapp, wait_for, wait_gone};

fn spec(revision: &str, command: Vec<String>) -> WorkloadSpec {
    WorkloadSpec {
        namespace: NS.into(),
        revision: revision.into(),
        configuration: "probed".into(),
        service: "probed".into(),
        command,
        args: vec![],
        env: vec![],
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
        drain_timeout: Duration::from_secs(5),
        liveness: None,
        startup: None,
        container: None,
    }
}

/// A probe tried every 100 ms that gives up after `failures` failures in a row.
fn every_100ms(action: ProbeAction, failures: u32) -> ProbeSpec {
    ProbeSpec {
        action,
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: failures,
        initial_delay: Duration::ZERO,
    }
}

/// `/bin/sh -c script`, run in the instance's working directory.
fn sh(script: &str) -> ProbeAction {
    ProbeAction::Exec {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![],
        working_dir: None,
    }
}

fn runtime(data: &Path, grace: Duration) -> Arc<ProcessRuntime> {
    ProcessRuntime::with_kill_grace(data.to_path_buf(), grace)
}

fn one(insts: &[InstanceInfo]) -> &InstanceInfo {
    assert_eq!(insts.len(), 1, "{insts:#?}");
    &insts[0]
}

fn restarted_by_liveness(i: &[InstanceInfo]) -> bool {
    i.len() == 1
        && i[0].restarts >= 1
        && i[0]
            .last_termination
            .as_ref()
            .is_some_and(|t| t.reason == LIVENESS_PROBE_FAILED)
}

/// Lines in `path` (0 when it does not exist yet).
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

async fn wait_lines(path: &Path, n: usize) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while lines(path) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} lines, want {n}",
            path.display(),
            lines(path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_http_liveness_probe_restarts_the_instance() {
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(data.path(), Duration::from_secs(5));
    let mut s = spec("live-http", vec![testapp().display().to_string()]);
    let path = "/status?code=500";
    s.liveness = Some(every_100ms(
        ProbeAction::Http {
            path: path.into(),
            headers: vec![],
        },
        2,
    ));
    rt.ensure(s, 1);
    let first = wait_for(&rt, "live-http", "a running process", |i| {
        i.len() == 1 && i[0].pid.is_some()
    })
    .await;
    let first_pid = one(&first).pid.unwrap();

    let insts = wait_for(
        &rt,
        "live-http",
        "a liveness restart",
        restarted_by_liveness,
    )
    .await;
    let t = one(&insts).last_termination.clone().unwrap();
    assert_eq!(
        t.message,
        format!("liveness probe httpGet {path} failed 2 times in a row: answered HTTP 500")
    );
    // The app does not handle SIGTERM: the signal ended it.
    assert_eq!((t.exit_code, t.signal), (None, Some(libc::SIGTERM)));
    wait_gone(first_pid).await;
    // It keeps being restarted, each time by a new process.
    let again = wait_for(&rt, "live-http", "a second run", |i| {
        i.len() == 1 && i[0].restarts >= 1 && i[0].pid.is_some_and(|p| p != first_pid)
    })
    .await;
    assert_ne!(one(&again).state, InstanceState::Terminating);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_restarts_only_after_consecutive_failures_and_recovers() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (alive, log) = (work.path().join("alive"), work.path().join("probes.log"));
    std::fs::write(&alive, "").unwrap();
    let rt = runtime(data.path(), Duration::from_secs(5));
    let mut s = spec("live-exec", vec![testapp().display().to_string()]);
    s.working_dir = Some(work.path().to_path_buf());
    // Each try leaves a line (with the instance's PORT, proving its env) before checking.
    s.liveness = Some(every_100ms(
        sh("echo \"$PORT\" >> probes.log; test -f alive"),
        3,
    ));
    rt.ensure(s, 1);
    let insts = wait_for(&rt, "live-exec", "ready", |i| {
        i.len() == 1 && i[0].state == InstanceState::Ready
    })
    .await;
    let (pid, port) = (one(&insts).pid.unwrap(), one(&insts).app_port);

    // Passing tries, well past the failure threshold: no restart.
    wait_lines(&log, 6).await;
    let first_line = std::fs::read_to_string(&log).unwrap();
    assert_eq!(first_line.lines().next(), Some(port.to_string().as_str()));
    let insts = rt.instances(NS, "live-exec");
    assert_eq!(one(&insts).restarts, 0, "{insts:#?}");
    assert_eq!(one(&insts).pid, Some(pid));
    assert_eq!(one(&insts).state, InstanceState::Ready);

    // Failing: restarted, with the probe and its exit in the message.
    std::fs::remove_file(&alive).unwrap();
    let insts = wait_for(
        &rt,
        "live-exec",
        "a liveness restart",
        restarted_by_liveness,
    )
    .await;
    let t = one(&insts).last_termination.clone().unwrap();
    assert!(
        t.message.starts_with("liveness probe exec [")
            && t.message
                .ends_with("failed 3 times in a row: exited with code 1"),
        "{}",
        t.message
    );
    wait_gone(pid).await;

    // Healthy again: the next run becomes ready and stays.
    std::fs::write(&alive, "").unwrap();
    let insts = wait_for(&rt, "live-exec", "ready again", |i| {
        i.len() == 1 && i[0].state == InstanceState::Ready && i[0].pid.is_some_and(|p| p != pid)
    })
    .await;
    let (restarts, pid2) = (one(&insts).restarts, one(&insts).pid);
    let seen = lines(&log);
    wait_lines(&log, seen + 5).await;
    let insts = rt.instances(NS, "live-exec");
    assert_eq!((one(&insts).restarts, one(&insts).pid), (restarts, pid2));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_never_listens_fails_tcp_liveness_and_is_killed_past_the_grace() {
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(data.path(), Duration::from_millis(300));
    // Ignores SIGTERM (the disposition survives exec), never listens.
    let mut s = spec(
        "live-tcp",
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap '' TERM; exec sleep 600".into(),
        ],
    );
    // Ready by another measure, so only liveness is in question.
    s.queue.readiness = ProbeSpec {
        action: sh("true"),
        ..ProbeSpec::default()
    };
    s.liveness = Some(every_100ms(ProbeAction::Tcp, 3));
    rt.ensure(s, 1);
    let insts = wait_for(&rt, "live-tcp", "a liveness restart", restarted_by_liveness).await;
    let t = one(&insts).last_termination.clone().unwrap();
    assert!(
        t.message
            .starts_with("liveness probe tcpSocket failed 3 times in a row: cannot connect:"),
        "{}",
        t.message
    );
    assert_eq!(
        (t.exit_code, t.signal),
        (None, Some(libc::SIGKILL)),
        "SIGKILL after the grace"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_probe_holds_readiness_and_liveness_until_it_passes() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (started, startup_log, live_log) = (
        work.path().join("started"),
        work.path().join("startup.log"),
        work.path().join("live.log"),
    );
    let rt = runtime(data.path(), Duration::from_secs(5));
    let mut s = spec("startup-gate", vec![testapp().display().to_string()]);
    s.working_dir = Some(work.path().to_path_buf());
    // Each startup try leaves a line; it passes once `started` exists.
    s.startup = Some(every_100ms(
        sh("echo try >> startup.log; test -f started"),
        1000,
    ));
    // A liveness probe that always fails: it would restart the app within 200 ms of running.
    s.liveness = Some(every_100ms(sh("echo try >> live.log; false"), 2));
    rt.ensure(s, 1);
    // Ten startup tries: the app listens, yet neither readiness nor liveness has run.
    wait_lines(&startup_log, 10).await;
    let insts = rt.instances(NS, "startup-gate");
    assert_eq!(one(&insts).state, InstanceState::Starting, "{insts:#?}");
    assert_eq!(one(&insts).restarts, 0);
    assert!(
        !live_log.exists(),
        "liveness ran before the startup probe passed"
    );
    let pid = one(&insts).pid.unwrap();

    // Started: readiness (TCP) passes, and liveness runs from now on (and restarts it).
    std::fs::write(&started, "").unwrap();
    wait_for(&rt, "startup-gate", "ready", |i| {
        i.len() == 1 && i[0].pid == Some(pid) && i[0].ever_ready
    })
    .await;
    let insts = wait_for(
        &rt,
        "startup-gate",
        "a liveness restart",
        restarted_by_liveness,
    )
    .await;
    assert!(lines(&live_log) >= 2, "{insts:#?}");
    let tries = lines(&startup_log);
    // The next run starts with its startup probe again (`started` still exists: one try).
    wait_lines(&startup_log, tries + 1).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_probe_failing_its_threshold_restarts_the_instance() {
    let data = tempfile::tempdir().unwrap();
    let rt = runtime(data.path(), Duration::from_secs(5));
    let mut s = spec("startup-fail", vec![testapp().display().to_string()]);
    s.startup = Some(every_100ms(sh("exit 3"), 3));
    rt.ensure(s, 1);
    let insts = wait_for(&rt, "startup-fail", "a startup restart", |i| {
        i.len() == 1
            && i[0].restarts >= 1
            && i[0]
                .last_termination
                .as_ref()
                .is_some_and(|t| t.reason == STARTUP_PROBE_FAILED)
    })
    .await;
    let t = one(&insts).last_termination.clone().unwrap();
    assert!(
        t.message.starts_with("startup probe exec [")
            && t.message
                .ends_with("failed 3 times in a row: exited with code 3"),
        "{}",
        t.message
    );
    assert!(
        !one(&insts).ever_ready,
        "never ready before its startup probe passed"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_readiness_probe_takes_the_instance_out_of_serving_and_back() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let ready: PathBuf = work.path().join("ready");
    let rt = runtime(data.path(), Duration::from_secs(5));
    let mut s = spec("ready-flip", vec![testapp().display().to_string()]);
    s.working_dir = Some(work.path().to_path_buf());
    s.queue.readiness = every_100ms(sh("test -f ready"), 2);
    let mut events = rt.subscribe();
    rt.ensure(s, 1);
    let insts = wait_for(&rt, "ready-flip", "a running process", |i| {
        i.len() == 1 && i[0].pid.is_some()
    })
    .await;
    assert_eq!(one(&insts).state, InstanceState::Starting);
    let pid = one(&insts).pid;

    std::fs::write(&ready, "").unwrap();
    wait_state(&rt, &mut events, InstanceState::Ready).await;
    std::fs::remove_file(&ready).unwrap();
    wait_state(&rt, &mut events, InstanceState::NotReady).await;
    std::fs::write(&ready, "").unwrap();
    wait_state(&rt, &mut events, InstanceState::Ready).await;

    // Readiness never restarts anything.
    let insts = rt.instances(NS, "ready-flip");
    assert_eq!((one(&insts).pid, one(&insts).restarts), (pid, 0));
    assert!(one(&insts).ever_ready);
    rt.shutdown().await;
}

/// Waits (bounded) for a change event of the revision after which its one instance is in
/// `want`: what the reconcilers see.
async fn wait_state(
    rt: &ProcessRuntime,
    events: &mut tokio::sync::broadcast::Receiver<(String, String)>,
    want: InstanceState,
) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event with state {want:?}; instances: {:#?}",
                    rt.instances(NS, "ready-flip")
                )
            });
        assert!(tokio::time::Instant::now() < deadline, "events: {ev:?}");
        if let Ok((ns, rev)) = ev
            && (ns.as_str(), rev.as_str()) != (NS, "ready-flip")
        {
            continue;
        }
        let insts = rt.instances(NS, "ready-flip");
        if insts.len() == 1 && insts[0].state == want {
            return;
        }
    }
}
