//! Hardening of local workloads and the gateway's descriptors, end to end with the real
//! `rouse serve`: what a killed platform left is stopped by the next one, workloads see only
//! their own environment, and a flood of idle clients cannot take the platform down.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A process as `/proc/<pid>/stat` shows it: (parent, start time), while it lives.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// Whether this process (same pid and start time) still lives.
fn alive(pid: u32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|(_, s)| s == start)
}

fn program_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A Service whose command is a shell wrapping the test app, so the app is the instance's
/// grandchild (the shell waits for it, then echoes).
fn wrapped_service(name: &str, marker: &str) -> String {
    let (mk, mv) = marker.split_once('=').unwrap();
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
        - command: ["sh", "-c", "{app}; echo exited"]
          env:
            - {{name: {mk}, value: "{mv}"}}
"#,
        app = testapp_bin().display()
    )
}

#[test]
fn a_restarted_platform_stops_what_a_killed_one_left() {
    let mut p = Platform::start();
    let marker = unique_marker("leftovers");
    p.apply_wait(&wrapped_service("wrapped", &marker));
    let r = p.http_get("wrapped.default.localhost", "/env").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let env: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let port: u16 = env["PORT"].as_str().unwrap().parse().unwrap();
    let app_name = testapp_bin().display().to_string();
    let app = eventually("the app under its shell", PATIENCE, || {
        pids_with_env(&marker)
            .into_iter()
            .find(|pid| program_of(*pid) == app_name)
    });
    let (_, app_start) = proc_stat(app).unwrap();

    p.kill9();
    // The shell dies with the platform (its parent-death signal); the app it started does not.
    eventually("only the app is left", PATIENCE, || {
        let left = pids_with_env(&marker);
        (left == vec![app]).then_some(())
    });
    assert!(
        alive(app, app_start),
        "the grandchild did not outlive the platform"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the app still holds its port"
    );

    p.restart();
    eventually("the earlier run's app stopped", PATIENCE, || {
        (!alive(app, app_start)).then_some(())
    });
    // The restart said what it stopped.
    let said = p
        .early_lines
        .iter()
        .find(|l| l.contains("Stopped what an earlier run left running"))
        .unwrap_or_else(|| panic!("no line about the cleanup in {:?}", p.early_lines));
    assert!(said.contains("1 instance"), "{said}");
    eventually("the old port free", PATIENCE, || {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    // The service comes back on a new instance.
    let r = eventually("served again", PATIENCE, || {
        p.http_get("wrapped.default.localhost", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(r.body.contains("noodles"), "{r:?}");
}

/// Cargo sets `CARGO_*` variables for the test process, which `rouse serve` inherits: stand-ins
/// for an operator's secrets.
#[test]
fn workloads_see_only_their_env_unless_more_is_passed() {
    assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
    for (extra, passed) in [
        (&[][..], false),
        (&["--pass-env", "CARGO_PKG_NAME"][..], true),
    ] {
        let p = Platform::start_with(extra);
        let marker = unique_marker("env");
        p.apply_wait(&service_yaml("envy", &marker, &[("DECLARED", "yes")]));
        let r = p.http_get("envy.default.localhost", "/env").unwrap();
        let env: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let env = env.as_object().unwrap();
        for want in ["PATH", "PORT", "K_SERVICE", "DECLARED"] {
            assert!(env.contains_key(want), "{want} missing: {env:?}");
        }
        assert_eq!(
            env.get("CARGO_PKG_NAME").and_then(|v| v.as_str()),
            passed.then_some("rouse"),
            "{env:?}"
        );
        assert!(!env.contains_key("CARGO_MANIFEST_DIR"), "{env:?}");
        assert!(!env.contains_key("RUST_LOG"), "{env:?}");
    }
}

/// Sends a keep-alive GET and reads its whole response (by Content-Length); the connection
/// stays open.
fn keep_alive_get(s: &mut TcpStream, host: &str, path: &str) -> std::io::Result<u16> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// Whether the server closed this connection (polls, bounded).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            _ => {}
        }
    }
    false
}

fn api_healthy(p: &Platform) -> bool {
    let api: SocketAddr = p.api.trim_start_matches("http://").parse().unwrap();
    http_get(api, "localhost", "/healthz").is_ok_and(|r| r.status == 200)
}

#[test]
fn at_the_connection_cap_the_idlest_client_makes_room() {
    const CAP: usize = 24;
    let p = Platform::start_with(&["--max-connections", &CAP.to_string()]);
    let marker = unique_marker("conncap");
    p.apply_wait(&service_yaml("capped", &marker, &[]));
    let host = "capped.default.localhost";

    // The cap's worth of keep-alive clients, each served once and then idle, oldest first.
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = TcpStream::connect(p.gateway).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            assert_eq!(keep_alive_get(&mut s, host, "/").unwrap(), 200);
            s
        })
        .collect();

    // A new client is served: the idlest one was closed for it.
    let r = p.http_get(host, "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        closed_by_server(&mut idle[0]),
        "the idlest client was not closed"
    );
    // The most recent one is still served on its connection.
    assert_eq!(keep_alive_get(&mut idle[CAP - 1], host, "/").unwrap(), 200);

    // The API answers, and a new instance starts (a cold start) and is reached.
    assert!(api_healthy(&p));
    p.apply_wait(&service_yaml("second", &marker, &[]));
    let r = p.http_get("second.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

/// Under a low open-file limit the cap derives from it, and a flood of idle clients past it
/// leaves the API, new instances and new clients working.
#[test]
fn a_flood_of_idle_clients_under_a_low_open_file_limit() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) is not installed; not checked");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::spawn_wrapped(
        &["prlimit", "--nofile=512:512"],
        &tmp.path().join("data"),
        &[],
    );
    let said = eventually("the connection cap line", PATIENCE, || {
        p.stdout_lines
            .recv_timeout(PATIENCE)
            .ok()
            .filter(|l| l.contains("Client connections:"))
    });
    // (512 - 128 reserved) / 2.
    assert!(said.contains("at most 192 (open-file limit 512)"), "{said}");
    let marker = unique_marker("fdflood");
    p.apply_wait(&service_yaml("flood", &marker, &[]));
    let host = "flood.default.localhost";
    let mut clients = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(p.gateway).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Refused (503, closed) or served; either way the platform goes on.
        let _ = keep_alive_get(&mut s, host, "/");
        clients.push(s);
    }
    assert!(api_healthy(&p), "the API stopped answering");
    let r = p.http_get(host, "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    p.apply_wait(&service_yaml("after-flood", &marker, &[]));
    let r = p.http_get("after-flood.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    drop(clients);
    drop(p);
}

use std::process::Command;

#[test]
fn past_the_instance_limit_requests_get_a_fast_503_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--max-instances", "1", "--config", &config]);
    let marker = unique_marker("maxinst");
    // A revision that was served, then scaled to zero.
    p.apply_wait(&service_yaml("sleepy", &marker, &[]));
    eventually("sleepy at zero", PATIENCE, || {
        (pa_scale(&p, "sleepy-00001").1 == 0 && sks_mode(&p, "sleepy-00001") == "Proxy")
            .then_some(())
    });
    // Another takes the only place.
    let holder = service(
        "holder",
        &marker,
        &[("autoscaling.knative.dev/min-scale", "1")],
        &[],
        &[],
        "",
    );
    p.apply_wait(&holder);

    // No room to wake sleepy: answered at once with why, not after its 300 s timeout.
    let started = Instant::now();
    let r = p.http_get("sleepy.default.localhost", "/").unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.body.contains("cannot start") && r.body.contains("at most 1"),
        "{r:?}"
    );
    // A new service's revision says why it does not start.
    let out = p.apply(&service_yaml("third", &marker, &[]), &[]);
    assert!(out.status.success(), "{out:?}");
    let cond = eventually("third's revision says why", PATIENCE, || {
        let rev = p.get_json("revision", "third-00001")?;
        rev["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ResourcesAvailable" && c["reason"] == "InstanceLimitReached")
            .cloned()
    });
    assert!(
        cond["message"].as_str().unwrap().contains("at most 1"),
        "{cond}"
    );

    // Room again: sleepy wakes and serves.
    p.cli_ok(&["delete", "ksvc", "third"]);
    p.cli_ok(&["delete", "ksvc", "holder"]);
    let r = eventually("sleepy served again", PATIENCE, || {
        p.http_get("sleepy.default.localhost", "/")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(r.body.contains("noodles"), "{r:?}");
}

#[test]
fn logs_of_revisions_deleted_while_down_go_after_the_retention() {
    let mut p = Platform::start_with(&["--log-retention", "1s"]);
    let marker = unique_marker("ghostlogs");
    p.apply_wait(&service_yaml("kept", &marker, &[]));
    p.stop();
    let ghost = p.data_dir.join("logs").join("default").join("ghost-00001");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::write(ghost.join("ghost-00001-abcde.log"), "old\n").unwrap();
    p.restart();
    eventually("the deleted revision's logs removed", PATIENCE, || {
        (!ghost.exists()).then_some(())
    });
    assert!(
        p.data_dir
            .join("logs")
            .join("default")
            .join("kept-00001")
            .exists()
    );
}
