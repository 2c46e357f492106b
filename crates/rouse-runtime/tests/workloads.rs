//! What the process runtime lets workloads have and keeps from them: environment, the cap on
//! instances, log rotation and removal, and processes that try to outlive their instance.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_runtime::{
    ProbeSpec, ProcessRuntime, QueueTemplate, Runtime, RuntimeOptions, WorkloadSpec,
};

mod common;

use common::{BOUND, NS, process_gone, wait_for, wait_gone};

fn sh(revision: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec {
        namespace: NS.into(),
        revision: revision.into(),
        configuration: "cfg".into(),
        service: "svc".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: vec![],
        env: vec![("DECLARED".into(), "yes".into())],
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
            request_body_buffer: 0,
        },
        drain_timeout: Duration::from_secs(1),
        liveness: None,
        startup: None,
        container: None,
    }
}

/// Polls `f` (bounded) until it gives `Some`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_env(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    // Written whole by the program before it renames the file into place.
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Cargo gives this test process `CARGO_*` variables: stand-ins for an operator's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_get_only_their_env_and_descriptors_and_what_is_passed() {
    assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let script = format!(
        "env > {0}.tmp && mv {0}.tmp {0}; exec sleep 600",
        out.display()
    );

    let rt = ProcessRuntime::new(dir.path().join("a"));
    rt.ensure(sh("env-00001", &script), 1);
    let env = eventually("the env file", || read_env(&out)).await;
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "PATH",
        "PORT",
        "K_SERVICE",
        "K_REVISION",
        "K_CONFIGURATION",
        "DECLARED",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("CARGO")),
        "the platform's variables leaked: {names:?}"
    );
    // Nor any descriptor but stdin, stdout and stderr (this test process has others open).
    let pid = rt.instances(NS, "env-00001")[0].pid.unwrap();
    let fds = eventually("the program exec'd", || {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        if !cmd.starts_with(b"sleep") {
            return None;
        }
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        Some(fds)
    })
    .await;
    assert_eq!(fds, ["0", "1", "2"]);
    rt.shutdown().await;
    std::fs::remove_file(&out).unwrap();

    let rt = ProcessRuntime::with_options(
        dir.path().join("b"),
        RuntimeOptions {
            pass_env: vec!["CARGO_PKG_NAME".into()],
            ..RuntimeOptions::default()
        },
    );
    rt.ensure(sh("env-00002", &script), 1);
    let env = eventually("the env file", || read_env(&out)).await;
    let passed = env.iter().find(|(k, _)| k == "CARGO_PKG_NAME");
    assert_eq!(passed.map(|(_, v)| v.as_str()), Some("rouse-runtime"));
    assert!(!env.iter().any(|(k, _)| k == "CARGO_PKG_VERSION"));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_ups_past_the_instance_cap_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::with_options(
        dir.path().to_path_buf(),
        RuntimeOptions {
            max_instances: 2,
            kill_grace: Duration::from_secs(2),
            ..RuntimeOptions::default()
        },
    );
    rt.ensure(sh("cap-a-00001", "exec sleep 600"), 2);
    wait_for(&rt, "cap-a-00001", "two running", |i| {
        i.len() == 2 && i.iter().all(|i| i.pid.is_some())
    })
    .await;
    assert_eq!(rt.scale_refusal(NS, "cap-a-00001"), None);

    rt.ensure(sh("cap-b-00001", "exec sleep 600"), 1);
    assert!(rt.instances(NS, "cap-b-00001").is_empty());
    let why = rt.scale_refusal(NS, "cap-b-00001").expect("a refusal");
    assert!(why.contains("2 of at most 2"), "{why}");

    // Room again once the other revision scales down: the refusal goes.
    rt.ensure(sh("cap-a-00001", "exec sleep 600"), 1);
    rt.ensure(sh("cap-b-00001", "exec sleep 600"), 1);
    assert_eq!(rt.instances(NS, "cap-b-00001").len(), 1);
    assert_eq!(rt.scale_refusal(NS, "cap-b-00001"), None);
    rt.shutdown().await;
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_by_size_and_go_after_their_revision_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Duration::from_secs(2);
    let rt = ProcessRuntime::with_options(
        dir.path().to_path_buf(),
        RuntimeOptions {
            log_max_bytes: 4096,
            log_max_files: 3,
            log_retention: retention,
            ..RuntimeOptions::default()
        },
    );
    // 2 KB every 100 ms for at most a minute.
    let script = "i=0; while [ $i -lt 600 ]; do head -c 2000 /dev/zero | tr '\\0' x; echo; \
                  i=$((i+1)); sleep 0.1; done; exec sleep 600";
    rt.ensure(sh("logs-00001", script), 1);
    let insts = wait_for(&rt, "logs-00001", "running", |i| {
        i.len() == 1 && i[0].pid.is_some()
    })
    .await;
    let log = insts[0].log_path.clone();
    let log_dir = log.parent().unwrap().to_path_buf();
    let second = PathBuf::from(format!("{}.2", log.display()));
    eventually("two rotations", || second.exists().then_some(())).await;
    // Three files at most: the live one, .1 and .2.
    let files = log_files(&log_dir);
    assert_eq!(
        files,
        vec![
            log.clone(),
            PathBuf::from(format!("{}.1", log.display())),
            second.clone()
        ]
    );
    let rotated = std::fs::metadata(&second).unwrap().len();
    assert!(
        rotated > 4096,
        "a rotated file holds what passed the limit: {rotated}"
    );

    let removed = std::time::Instant::now();
    rt.remove(NS, "logs-00001");
    // Kept for the retention, for debugging.
    wait_for(&rt, "logs-00001", "stopped", |i| i.is_empty()).await;
    if removed.elapsed() < retention {
        assert!(log_dir.exists(), "logs removed before their retention");
    }
    eventually("the logs removed", || (!log_dir.exists()).then_some(())).await;
    assert!(removed.elapsed() >= retention);
    rt.shutdown().await;
}

/// The process whose pid a program wrote to `file`, once written.
fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_that_leaves_the_process_group_goes_with_its_instance() {
    if std::process::Command::new("setsid")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("setsid (util-linux) is not installed; not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grandchild");
    let rt = ProcessRuntime::with_options(
        dir.path().join("data"),
        RuntimeOptions {
            kill_grace: Duration::from_secs(2),
            ..RuntimeOptions::default()
        },
    );
    // `setsid` puts the sleeper in a session (and process group) of its own.
    let script = format!(
        "setsid sleep 600 & echo $! > {0}.tmp && mv {0}.tmp {0}; exec sleep 600",
        file.display()
    );
    rt.ensure(sh("escape-00001", &script), 1);
    let grandchild = eventually("the grandchild's pid", || pid_in(&file)).await;
    let cgroup = std::fs::read_to_string(format!("/proc/{grandchild}/cgroup")).unwrap();
    rt.remove(NS, "escape-00001");
    wait_for(&rt, "escape-00001", "stopped", |i| i.is_empty()).await;
    if !cgroup.contains("/rouse-") {
        // No writable cgroup v2 here: only the process group is tracked, which it left.
        eprintln!("no instance cgroup on this machine ({cgroup:?}); not checked");
        let _ = std::process::Command::new("kill")
            .args(["-9", &grandchild.to_string()])
            .status();
        return;
    }
    wait_gone(grandchild).await;
    rt.shutdown().await;
}

/// A start time as `/proc/<pid>/stat` gives it.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_are_killed_by_pid_and_start_time_only() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("run").join("instances");
    std::fs::create_dir_all(&records).unwrap();
    let spawn = || {
        std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap()
    };
    // One an earlier platform left (its record matches) and one whose pid a record names
    // with another start time (the pid was reused: not ours).
    let mut left = spawn();
    let mut reused = spawn();
    let record = |name: &str, pid: u32, start: u64| {
        std::fs::write(
            records.join(name),
            format!("pid={pid} start={start} cgroup=-\n"),
        )
        .unwrap();
    };
    record("default.left-00001-aaaaa", left.id(), start_time(left.id()));
    record(
        "default.reused-00001-bbbbb",
        reused.id(),
        start_time(reused.id()) + 1,
    );
    let rt = ProcessRuntime::new(dir.path().to_path_buf());
    let cleaned = rt.clean_leftovers();
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    assert!(cleaned[0].contains("left-00001"), "{cleaned:?}");
    let status = left.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!process_gone(reused.id()), "a reused pid was killed");
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    reused.kill().unwrap();
    reused.wait().unwrap();
}
