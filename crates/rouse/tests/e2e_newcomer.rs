//! A newcomer's first hour, end to end through the real `rouse serve` and CLI: deleting a
//! revision that has traffic, URLs with the gateway's port, `serve -f` outcomes and 503s for
//! services that are not ready, an app that never listens, a container's failure carried to
//! the Service, and kubectl habits (`delete -f`, `get -w`, `-l`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// A Service on the test app with `template_extra` under the template's spec and
/// `spec_extra` (e.g. traffic) under the Service's spec.
fn svc(name: &str, marker: &str, message: &str, args: &[&str], annotations: &str) -> String {
    let (mk, mv) = marker.split_once('=').unwrap();
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  labels:
    team: {name}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
{annotations}    spec:
      containers:
        - command: ["{app}"]
          args: [{args}]
          env:
            - {{name: {mk}, value: "{mv}"}}
            - {{name: MESSAGE, value: "{message}"}}
"#,
        app = testapp_bin().display(),
        args = args.join(", "),
    )
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn deleting_a_revision_with_traffic_fails_its_share_fast_and_the_route_says_why() {
    let p = Platform::start();
    let marker = unique_marker("deleted-rev");
    let v1 = svc("split", &marker, "one", &[], "");
    p.apply_wait(&v1);
    // v2 takes half; v1 keeps the other half and the tag `old`.
    let v2 = format!(
        "{}  traffic:\n    - revisionName: split-00001\n      percent: 50\n      tag: old\n    - latestRevision: true\n      percent: 50\n",
        svc("split", &marker, "two", &[], "")
    );
    p.apply_wait(&v2);
    let old_host = "old-split.default.localhost";
    eventually("the tag serves v1", PATIENCE, || {
        p.http_get(old_host, "/")
            .ok()
            .filter(|r| r.status == 200 && r.body.contains("one"))
    });

    p.cli_ok(&["delete", "rev", "split-00001"]);

    // The tag's requests are answered at once, 503 naming the missing revision.
    let body = eventually("the tag answers 503", PATIENCE, || {
        let r = p.http_get(old_host, "/").ok()?;
        (r.status == 503).then_some(r.body)
    });
    assert!(body.contains("split-00001"), "{body}");
    eprintln!("tag body: {body}");
    for _ in 0..5 {
        let start = Instant::now();
        let r = p.http_get(old_host, "/").unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "took {:?}",
            start.elapsed()
        );
    }
    // The main URL: v2's half serves; v1's half fails fast. Nothing waits.
    let mut ok = 0;
    for _ in 0..30 {
        let start = Instant::now();
        let r = p.http_get("split.default.localhost", "/").unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "a request waited {:?}",
            start.elapsed()
        );
        match r.status {
            200 => {
                assert!(r.body.contains("two"), "{}", r.body);
                ok += 1;
            }
            503 => assert!(r.body.contains("split-00001"), "{}", r.body),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(ok > 0, "v2 never served");

    // The Route reports RevisionMissing, as Knative's does.
    let rt = eventually("the route reports RevisionMissing", PATIENCE, || {
        let rt = p.get_json("rt", "split")?;
        let c = rt["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "AllTrafficAssigned")?
            .clone();
        (c["status"] == "False" && c["reason"] == "RevisionMissing").then_some(c)
    });
    assert!(
        rt["message"].as_str().unwrap_or("").contains("split-00001"),
        "{rt}"
    );
    // The activator is not left "activating" the deleted revision.
    assert_eq!(
        metric_value(
            &p,
            "rouse_activator_requests_queued",
            "revision=\"split-00001\""
        ),
        0.0
    );
}

#[test]
fn urls_shown_to_a_person_carry_the_gateway_port() {
    let p = Platform::start();
    let marker = unique_marker("url-port");
    let out = p.apply_wait(&svc("porty", &marker, "hi", &[], ""));
    let port = p.gateway.port();
    let want = format!("http://porty.default.localhost:{port}");
    assert!(
        out.contains(&format!("is Ready at {want}")),
        "apply --wait: {out}"
    );
    let table = p.cli_ok(&["get", "ksvc"]);
    assert!(table.contains(&want), "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "URL",
            "LATESTCREATED",
            "LATESTREADY",
            "READY",
            "REASON"
        ]
    );
    assert!(
        p.cli_ok(&["describe", "ksvc", "porty"]).contains(&want),
        "describe"
    );
    // The status itself stays Knative-shaped.
    let obj = p.get_json("ksvc", "porty").unwrap();
    assert_eq!(obj["status"]["url"], "http://porty.default.localhost");
}

#[test]
fn serve_f_reports_each_outcome_and_not_ready_hosts_answer_503_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let marker = unique_marker("serve-f");
    let good = svc("good", &marker, "hi", &[], "");
    let bad = svc(
        "bad",
        &marker,
        "x",
        &[
            "--print",
            "boom: missing DATABASE_URL",
            "--exit-immediately",
            "1",
        ],
        "",
    );
    let file = dir.path().join("apps.yaml");
    std::fs::write(&file, format!("{good}---\n{bad}")).unwrap();
    let p = Platform::start_with(&["-f", file.to_str().unwrap()]);
    let port = p.gateway.port();
    let (mut ready, mut failed) = (None, None);
    let deadline = Instant::now() + PATIENCE * 2;
    while ready.is_none() || failed.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p
            .stdout_lines
            .recv_timeout(left)
            .expect("serve -f reported both services");
        if line.starts_with("service/good is Ready") {
            ready = Some(line);
        } else if line.starts_with("service/bad failed") {
            failed = Some(line);
        }
    }
    let ready = ready.unwrap();
    assert!(
        ready.contains(&format!("curl http://good.default.localhost:{port}/")),
        "{ready}"
    );
    let failed = failed.unwrap();
    assert!(
        failed.contains("boom: missing DATABASE_URL"),
        "serve -f: {failed}"
    );
    // The failed service's host exists: 503 saying it is not ready and why, not 404.
    let r = eventually("the failed host answers 503", PATIENCE, || {
        p.http_get("bad.default.localhost", "/")
            .ok()
            .filter(|r| r.status == 503)
    });
    assert!(r.body.contains("not ready"), "{}", r.body);
    assert!(r.body.contains("boom: missing DATABASE_URL"), "{}", r.body);
    assert_eq!(
        p.http_get("nobody.default.localhost", "/").unwrap().status,
        404
    );
    assert_eq!(
        p.http_get("good.default.localhost", "/").unwrap().status,
        200
    );
}

#[test]
fn an_app_that_never_listens_says_what_it_is_doing() {
    let p = Platform::start();
    let marker = unique_marker("never-listens");
    // Prints, then sleeps far beyond the wait before it would listen.
    let yaml = svc(
        "sleepy",
        &marker,
        "x",
        &[
            "--print",
            "connecting to the database",
            "--startup-delay",
            "600000",
        ],
        "",
    );
    let start = Instant::now();
    let out = p.apply(&yaml, &["--wait", "--timeout", "25s"]);
    assert!(!out.status.success());
    assert!(start.elapsed() >= Duration::from_secs(25));
    let err = stderr(&out);
    assert!(err.contains("still waiting after"), "{err}");
    assert!(err.contains("pid ") && err.contains("PORT "), "{err}");
    assert!(err.contains("connecting to the database"), "{err}");
    assert!(err.contains("timed out after 25s"), "{err}");
    let described = p.cli_ok(&["describe", "rev", "sleepy-00001"]);
    assert!(
        described.contains("readiness probe has not passed yet")
            && described.contains("connecting to the database"),
        "{described}"
    );
    // The default wait outlasts Knative's 600 s progress deadline.
    let help = stdout(&p.cli(&["apply", "--help"]));
    assert!(help.contains("[default: 11m]"), "{help}");
}

#[test]
fn a_container_failure_reaches_the_service_columns_and_the_wait_error() {
    let p = Platform::start();
    let marker = unique_marker("crash");
    let yaml = svc(
        "crashy",
        &marker,
        "x",
        &[
            "--print",
            "boom: missing DATABASE_URL",
            "--exit-immediately",
            "1",
        ],
        "        serving.knative.dev/progress-deadline: \"5s\"\n",
    );
    let out = p.apply(&yaml, &["--wait", "--timeout", "90s"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("service.serving.knative.dev/crashy failed")
            && err.contains("boom: missing DATABASE_URL"),
        "{err}"
    );
    assert!(!err.contains(".."), "double period: {err}");
    let table = p.cli_ok(&["get", "ksvc", "crashy"]);
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains("False"), "{table}");
    assert!(row.contains("boom: missing DATABASE_URL"), "{table}");
    // Knative's conditions are kept on the revision.
    let rev = p.get_json("rev", "crashy-00001").unwrap();
    let healthy = rev["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ContainerHealthy")
        .unwrap()
        .clone();
    assert_eq!(healthy["status"], "False");
}

#[test]
fn kubectl_habits_delete_by_file_watch_and_label_selectors() {
    let p = Platform::start();
    let marker = unique_marker("habits");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, svc("alpha", &marker, "a", &[], "")).unwrap();
    p.cli_ok(&[
        "apply",
        "-f",
        a.to_str().unwrap(),
        "--wait",
        "--timeout",
        "90s",
    ]);
    p.apply_wait(&svc("beta", &marker, "b", &[], ""));

    // -l: equality-based selectors, filtered on the labels.
    let only_alpha = p.cli_ok(&["get", "ksvc", "-l", "team=alpha"]);
    assert!(
        only_alpha.contains("alpha") && !only_alpha.contains("beta"),
        "{only_alpha}"
    );
    let not_alpha = p.cli_ok(&["get", "ksvc", "-l", "team!=alpha"]);
    assert!(
        !not_alpha.contains("alpha") && not_alpha.contains("beta"),
        "{not_alpha}"
    );

    // -w: the listing, then a row again when the object changes.
    let mut watch = Command::new(rouse_bin())
        .args(["--api", &p.api, "get", "ksvc", "beta", "-w"])
        .env("ROUSE_DATA_DIR", &p.data_dir)
        .env_remove("ROUSE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: Vec<String> = (0..2)
        .map(|_| rx.recv_timeout(PATIENCE).expect("the first listing"))
        .collect();
    assert!(first[0].starts_with("NAME"), "{first:?}");
    assert!(first[1].starts_with("beta"), "{first:?}");
    p.apply_wait(&svc("beta", &marker, "b2", &[], ""));
    let again = rx.recv_timeout(PATIENCE).expect("a row after the change");
    assert!(again.starts_with("beta"), "{again}");
    let _ = watch.kill();
    let _ = watch.wait();

    // delete -f: the objects the file names.
    let out = p.cli_ok(&["delete", "-f", a.to_str().unwrap()]);
    assert_eq!(out, "service.serving.knative.dev \"alpha\" deleted\n");
    assert!(p.get_json("ksvc", "alpha").is_none());
    let out = p.cli(&["delete", "-f", a.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
    // delete -l.
    let out = p.cli_ok(&["delete", "ksvc", "-l", "team=beta"]);
    assert_eq!(out, "service.serving.knative.dev \"beta\" deleted\n");
}

#[test]
fn the_sample_runs_from_any_directory() {
    // From a directory that is not the repository's root, as a newcomer might.
    let elsewhere = tempfile::tempdir().unwrap();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello.yaml");
    let sample = std::fs::canonicalize(sample).unwrap();
    let listing = Command::new(rouse_bin())
        .current_dir(elsewhere.path())
        .args([
            "delete",
            "-f",
            sample.to_str().unwrap(),
            "--api",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    // The file parses (only the API is missing).
    assert!(stderr(&listing).contains("cannot reach"), "{listing:?}");
    // The resolved command exists only when the bins were built into the repository's
    // target/ (the README's layout); skip the serve part otherwise.
    let app = sample
        .parent()
        .unwrap()
        .join("../target/debug/rouse-testapp");
    if !app.exists() {
        eprintln!("skipping: {} is not built", app.display());
        return;
    }
    let p = Platform::start_with(&["-f", sample.to_str().unwrap()]);
    let line = eventually("serve -f reports hello", PATIENCE, || {
        p.stdout_lines
            .recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|l| l.starts_with("service/hello "))
            .filter(|l| !l.contains("created") && !l.contains("unchanged"))
    });
    assert!(line.starts_with("service/hello is Ready"), "{line}");
    let r = p.http_get("hello.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}
