//! Scale to zero and back, end to end: the activator, the KPA loop and the SKS switch with the
//! real binary, real processes and short windows through config-autoscaler.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[test]
fn scales_to_zero_and_wakes_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("zero");
    p.apply_wait(&service("sleepy", &marker, &[], &[], &[], ""));
    assert!(!pids_with_env(&marker).is_empty());

    // Idle: the stable window passes, the activator takes over, the instance goes away.
    eventually("scaled to zero", Duration::from_secs(60), || {
        (pa_scale(&p, "sleepy-00001") == (0, 0) && pids_with_env(&marker).is_empty()).then_some(())
    });
    assert_eq!(sks_mode(&p, "sleepy-00001"), "Proxy");
    let rev = p.get_json("revision", "sleepy-00001").unwrap();
    let ready = rev["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "a revision at zero stays Ready");

    // A request wakes it: answered by the app, marked as a cold start.
    let r = p.http_get("sleepy.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.headers.iter().any(|(k, _)| k == "k-cold-start"),
        "{:?}",
        r.headers
    );
    assert_eq!(pids_with_env(&marker).len(), 1);
    // Warm now: no cold-start header.
    let r = p.http_get("sleepy.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.headers.iter().any(|(k, _)| k == "k-cold-start"));
}

#[test]
fn burst_at_zero_is_one_activation_and_slow_starts_are_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("burst");
    let zero = [("autoscaling.knative.dev/initial-scale", "0")];
    p.apply_wait(&service("burst", &marker, &zero, &[], &[], ""));
    assert!(
        pids_with_env(&marker).is_empty(),
        "initial-scale 0 starts nothing"
    );

    let statuses = concurrent_gets(&p, "burst.default.localhost", "/", 50);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let activations = metric_value(
        &p,
        "rouse_activator_activations_total",
        "revision=\"burst-00001\"",
    );
    assert_eq!(activations, 1.0);

    // An app that takes 3 s to listen: 20 requests sent before it listens all get 200.
    p.apply_wait(&service(
        "slow",
        &marker,
        &zero,
        &[],
        &["--startup-delay", "3000"],
        "",
    ));
    let started = Instant::now();
    let statuses = concurrent_gets(&p, "slow.default.localhost", "/", 20);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "served only after the app listened"
    );
}

#[test]
fn never_ready_app_times_out_with_503_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("never");
    let ann = [
        ("autoscaling.knative.dev/initial-scale", "0"),
        ("serving.knative.dev/progress-deadline", "5s"),
    ];
    // The app never listens: its instance runs but never becomes ready.
    let spec_extra = "      timeoutSeconds: 3\n";
    let manifest = service(
        "never",
        &marker,
        &ann,
        &[],
        &["--startup-delay", "600000"],
        spec_extra,
    );
    p.apply_wait(&manifest);
    let started = Instant::now();
    let r = p.http_get("never.default.localhost", "/").unwrap();
    // The wait for an instance outlived the deadline: Knative's activator answers 503.
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("activator request timeout"), "{}", r.body);
    assert!(started.elapsed() >= Duration::from_secs(3));
    // The revision says why: woken, but no instance became ready within its progress deadline.
    eventually(
        "revision reports the failure",
        Duration::from_secs(30),
        || {
            let rev = p.get_json("revision", "never-00001")?;
            let conds = rev["status"]["conditions"].as_array()?.clone();
            conds
                .iter()
                .any(|c| {
                    c["type"] == "ResourcesAvailable"
                        && c["status"] == "False"
                        && c["reason"] == "ProgressDeadlineExceeded"
                })
                .then_some(())
        },
    );
}

#[test]
fn crash_on_first_request_others_served_by_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("crash");
    let marker_dir = dir.path().join("markers");
    std::fs::create_dir_all(&marker_dir).unwrap();
    let zero = [
        ("autoscaling.knative.dev/initial-scale", "0"),
        ("autoscaling.knative.dev/max-scale", "1"),
    ];
    let env = [
        ("CRASH_ON_FIRST_REQUEST", "1"),
        ("MARKER_DIR", marker_dir.to_str().unwrap()),
    ];
    p.apply_wait(&service(
        "crashy",
        &marker,
        &zero,
        &env,
        &[],
        "      containerConcurrency: 1\n",
    ));
    let statuses = concurrent_gets(&p, "crashy.default.localhost", "/", 10);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // The request the app crashed on is lost with it; every other one is served.
    assert!(ok >= 9, "{statuses:?}");
}

#[test]
fn burst_capacity_modes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("tbc");
    let always = [("autoscaling.knative.dev/target-burst-capacity", "-1")];
    let never = [("autoscaling.knative.dev/target-burst-capacity", "0")];
    p.apply_wait(&service("always", &marker, &always, &[], &[], ""));
    p.apply_wait(&service("never", &marker, &never, &[], &[], ""));
    p.apply_wait(&service("default", &marker, &[], &[], &[], ""));
    eventually("TBC 0 serves directly once ready", PATIENCE, || {
        (sks_mode(&p, "never-00001") == "Serve").then_some(())
    });
    // TBC -1 keeps the activator in the path; the default (211) needs 3 instances' capacity.
    for _ in 0..20 {
        assert_eq!(
            p.http_get("always.default.localhost", "/").unwrap().status,
            200
        );
        assert_eq!(
            p.http_get("default.default.localhost", "/").unwrap().status,
            200
        );
    }
    assert_eq!(sks_mode(&p, "always-00001"), "Proxy");
    assert_eq!(sks_mode(&p, "default-00001"), "Proxy");
    assert_eq!(sks_mode(&p, "never-00001"), "Serve");
}

#[test]
fn steady_load_through_zero_and_back_has_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("steady");
    // Target 1 request per instance: 4 steady clients need several instances.
    let ann = [
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
        ("autoscaling.knative.dev/target", "1"),
        ("autoscaling.knative.dev/max-scale", "3"),
    ];
    p.apply_wait(&service("steady", &marker, &ann, &[], &[], ""));
    let peak = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    // Two rounds of: load for a few seconds (0 → N, Proxy → Serve), silence until zero.
    for round in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(8);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (gw, errors, sent) = (p.gateway, errors.clone(), sent.clone());
                std::thread::spawn(move || {
                    while Instant::now() < deadline {
                        let s = http_get(gw, "steady.default.localhost", "/?sleep=20")
                            .map(|r| r.status)
                            .unwrap_or(0);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if s != 200 {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        while workers.iter().any(|w| !w.is_finished()) {
            peak.fetch_max(pids_with_env(&marker).len(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
        for w in workers {
            w.join().unwrap();
        }
        eventually(
            &format!("round {round}: back to zero"),
            Duration::from_secs(60),
            || {
                (pa_scale(&p, "steady-00001").1 == 0 && pids_with_env(&marker).is_empty())
                    .then_some(())
            },
        );
    }
    let (errors, sent) = (errors.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    let peak = peak.load(Ordering::Relaxed);
    println!("steady load through zero: {sent} requests, {errors} errors, peak {peak} instances");
    assert!(sent > 50);
    assert!(peak > 1, "the load scaled the revision up (peak {peak})");
    assert_eq!(errors, 0);
}

#[test]
fn single_concurrency_overload_all_served() {
    let p = Platform::start_with(&[
        "--config",
        &fast_config(tempfile::tempdir().unwrap().path(), &[]),
    ]);
    let marker = unique_marker("cc1");
    let ann = [
        ("autoscaling.knative.dev/max-scale", "10"),
        ("autoscaling.knative.dev/target-burst-capacity", "-1"),
    ];
    p.apply_wait(&service(
        "single",
        &marker,
        &ann,
        &[("FAIL_ON_CONCURRENCY", "1")],
        &[],
        "      containerConcurrency: 1\n",
    ));
    // Knative's activator overload case: 100 concurrent 300 ms requests, CC 1, max-scale 10.
    let statuses = concurrent_gets(&p, "single.default.localhost", "/?sleep=300", 100);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[test]
fn activator_queue_overflow_is_a_fast_503() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(dir.path(), &[("activator-queue-depth", "20")]);
    let p = Platform::start_with(&["--config", &cfg]);
    let marker = unique_marker("overflow");
    let ann = [
        ("autoscaling.knative.dev/max-scale", "1"),
        ("autoscaling.knative.dev/target-burst-capacity", "-1"),
    ];
    p.apply_wait(&service(
        "full",
        &marker,
        &ann,
        &[],
        &[],
        "      containerConcurrency: 1\n",
    ));
    let statuses = concurrent_gets(&p, "full.default.localhost", "/?sleep=300", 60);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let full = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + full, 60, "{statuses:?}");
    assert!(full > 0 && ok >= 20, "ok {ok} full {full}");

    // The depth raised through the API, no restart: the same burst now waits its turn.
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
        "data": {"stable-window": "6s", "scale-to-zero-grace-period": "1s",
                 "allow-zero-initial-scale": "true", "activator-queue-depth": "100"},
    });
    let r = api_request(
        &p,
        "PUT",
        "/api/v1/namespaces/knative-serving/configmaps/config-autoscaler",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let statuses = concurrent_gets(&p, "full.default.localhost", "/?sleep=100", 60);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}
