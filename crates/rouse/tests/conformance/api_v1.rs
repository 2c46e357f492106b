//! Knative's `test/conformance/api/v1` cases (reference §8.1).

use std::time::{Duration, Instant};

use crate::platform::*;

const HELLO: &str = "Hello World! How about some tasty noodles?";
/// Knative's `test/conformance.go` constants.
const CONCURRENT_REQUESTS: usize = 200;
const MIN_SPLIT_PERCENTAGE: f64 = 0.25;

fn names(items: &[serde_json::Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        .collect()
}

fn hello(name: &str) -> Svc {
    Svc::new(name, Image::HelloWorld)
}

/// Sends `n` requests from 20 clients and counts the bodies.
fn bodies(t: &Target, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for (status, body) in load(t, "/", 20, n, PATIENCE) {
        assert_eq!(status, 200, "{body}");
        *seen.entry(body.trim().to_string()).or_default() += 1;
    }
    seen
}

#[test]
fn TestBlueGreenRoute() {
    let Some(p) = crate::platform("bluegreen", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = |rev: &str, msg: &str| {
        Svc::new("bluegreen", Image::PizzaPlanet)
            .revision_name(rev)
            .env("MESSAGE", msg)
    };
    svc("bluegreen-blue", "What a spaceport!").deploy(p);
    let split = "  traffic:\n    - {revisionName: bluegreen-blue, percent: 50, tag: blue}\n    - {revisionName: bluegreen-green, percent: 50, tag: green}\n";
    let main = svc(
        "bluegreen-green",
        "Re-energize yourself with a slice of pepperoni!",
    )
    .traffic(split)
    .deploy(p);
    let status = p.get("ksvc", "bluegreen").unwrap();
    let tag_url = |tag: &str| {
        status["status"]["traffic"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag"] == tag)
            .and_then(|t| t["url"].as_str())
            .unwrap_or_else(|| panic!("no URL for tag {tag}: {status}"))
            .to_string()
    };
    // The main URL: each side gets at least MinSplitPercentage of 200 requests.
    let seen = bodies(&main, CONCURRENT_REQUESTS);
    for msg in [
        "What a spaceport!",
        "Re-energize yourself with a slice of pepperoni!",
    ] {
        let n = seen.get(msg).copied().unwrap_or(0);
        assert!(
            n as f64 >= MIN_SPLIT_PERCENTAGE * CONCURRENT_REQUESTS as f64,
            "{msg}: {n} of {CONCURRENT_REQUESTS} ({seen:?})"
        );
    }
    // Each tag URL reaches only its revision (MinDirectPercentage 1).
    for (tag, msg) in [
        ("blue", "What a spaceport!"),
        ("green", "Re-energize yourself with a slice of pepperoni!"),
    ] {
        let t = p.target(&tag_url(tag));
        let seen = bodies(&t, CONCURRENT_REQUESTS);
        assert_eq!(seen.len(), 1, "{tag}: {seen:?}");
        assert_eq!(seen.get(msg), Some(&CONCURRENT_REQUESTS), "{seen:?}");
    }
}

#[test]
fn TestConfigurationGetAndList() {
    let Some(p) = crate::platform("configget", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    hello("cfg-get").deploy(p);
    let cfg = p.get("config", "cfg-get").expect("configuration");
    assert_eq!(cfg["metadata"]["name"], "cfg-get");
    assert_eq!(cfg["status"]["latestReadyRevisionName"], "cfg-get-00001");
    assert_eq!(condition(&cfg, "Ready")["status"], "True", "{cfg}");
    assert!(names(&p.list("config")).contains(&"cfg-get".to_string()));
}

#[test]
fn TestUpdateConfigurationMetadata() {
    let Some(p) = crate::platform("cfgmeta", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let yaml = |labels: &str, annotations: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: cfg-meta\n  labels:\n    keep: \"yes\"\n{labels}  annotations:\n    keep: \"yes\"\n{annotations}spec:\n  template:\n{}",
            hello("cfg-meta").template(p)
        )
    };
    p.apply_ready(&yaml("", ""));
    let before = p.get("config", "cfg-meta").unwrap();
    assert_eq!(
        before["status"]["latestCreatedRevisionName"],
        "cfg-meta-00001"
    );
    // New labels and annotations on the Configuration's own metadata: stored, no new revision.
    p.apply_ready(&yaml(
        "    added-label: \"1\"\n",
        "    added-annotation: \"2\"\n",
    ));
    let after = eventually("metadata stored", PATIENCE, || {
        let c = p.get("config", "cfg-meta")?;
        (c["metadata"]["labels"]["added-label"] == "1").then_some(c)
    });
    assert_eq!(after["metadata"]["annotations"]["added-annotation"], "2");
    assert_eq!(
        after["status"]["latestCreatedRevisionName"],
        "cfg-meta-00001"
    );
    assert!(p.get("rev", "cfg-meta-00002").is_none(), "no new revision");
    // The revision carries its configuration's generation label, unchanged.
    let rev = p.get("rev", "cfg-meta-00001").unwrap();
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/configurationGeneration"], "1",
        "{rev}"
    );
}

#[test]
fn TestContainerErrorMsg() {
    // Knative: an image that cannot be pulled. Locally: a program that cannot be started.
    let Some(p) = crate::platform("errmsg", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: err-msg\nspec:\n  template:\n    spec:\n      containers:\n{}",
        p.unstartable_container()
    );
    p.apply(&yaml).expect("accepted");
    let rev = eventually("the revision reports the failure", PATIENCE, || {
        let r = p.get("rev", "err-msg-00001")?;
        (condition(&r, "ContainerHealthy")["status"] == "False").then_some(r)
    });
    let c = condition(&rev, "ContainerHealthy");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/program"),
        "{c}"
    );
    let svc = eventually("the service reports it", PATIENCE, || {
        let s = p.get("ksvc", "err-msg")?;
        (condition(&s, "Ready")["status"] == "False").then_some(s)
    });
    assert!(
        condition(&svc, "Ready")["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/program")
            || condition(&svc, "ConfigurationsReady")["message"]
                .as_str()
                .unwrap_or("")
                .contains("/nonexistent/program"),
        "{svc}"
    );
}

#[test]
fn TestContainerExitingMsg() {
    let Some(p) = crate::platform("exitmsg", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = Svc::new("exit-msg", Image::Failing).args(&[
        "--print",
        "Crashed...",
        "--exit-immediately",
        "5",
    ]);
    p.apply(&svc.yaml(p)).expect("accepted");
    let rev = eventually("exit code surfaced", PATIENCE, || {
        let r = p.get("rev", "exit-msg-00001")?;
        (condition(&r, "ContainerHealthy")["reason"] == "ExitCode5").then_some(r)
    });
    let c = condition(&rev, "ContainerHealthy");
    assert_eq!(c["status"], "False");
    assert!(
        c["message"].as_str().unwrap_or("").contains("Crashed..."),
        "{c}"
    );
    let svc = eventually("the service is not ready", PATIENCE, || {
        let s = p.get("ksvc", "exit-msg")?;
        (condition(&s, "Ready")["status"] == "False").then_some(s)
    });
    assert_eq!(condition(&svc, "Ready")["status"], "False");
}

fn generated_name(out: &str, prefix: &str) -> String {
    out.split(|c: char| c.is_whitespace() || c == '"' || c == '/')
        .find(|w| w.starts_with(prefix) && w.len() > prefix.len())
        .unwrap_or_else(|| panic!("no generated name with {prefix} in {out:?}"))
        .to_string()
}

#[test]
fn TestServiceGenerateName() {
    let Some(p) = crate::platform("genname", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let yaml = hello("x").yaml(p).replace(
        "metadata:\n  name: x\n",
        "metadata:\n  generateName: gen-svc-\n",
    );
    let out = p.apply(&yaml).expect("generateName accepted");
    let name = generated_name(&out, "gen-svc-");
    let svc = eventually("the generated service is ready", PATIENCE, || {
        let s = p.get("ksvc", &name)?;
        (condition(&s, "Ready")["status"] == "True").then_some(s)
    });
    let t = p.target(svc["status"]["url"].as_str().unwrap());
    let r = t.get("/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO));
}

#[test]
fn TestRouteAndConfigGenerateName() {
    let Some(p) = crate::platform("rtcfggen", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let cfg = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  generateName: gen-cfg-\nspec:\n  template:\n{}",
        hello("x").template(p)
    );
    let cfg_name = generated_name(&p.apply(&cfg).expect("accepted"), "gen-cfg-");
    eventually("configuration ready", PATIENCE, || {
        let c = p.get("config", &cfg_name)?;
        (condition(&c, "Ready")["status"] == "True").then_some(())
    });
    let route = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  generateName: gen-route-\nspec:\n  traffic:\n    - {{configurationName: {cfg_name}, percent: 100}}\n"
    );
    let route_name = generated_name(&p.apply(&route).expect("accepted"), "gen-route-");
    let rt = eventually("route ready", PATIENCE, || {
        let r = p.get("rt", &route_name)?;
        (condition(&r, "Ready")["status"] == "True").then_some(r)
    });
    let t = p.target(rt["status"]["url"].as_str().unwrap());
    let r = eventually("served", PATIENCE, || {
        t.get("/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.body.trim(), HELLO);
}

#[test]
fn TestRevisionGetAndList() {
    let Some(p) = crate::platform("revget", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    hello("rev-get").deploy(p);
    let rev = p.get("rev", "rev-get-00001").expect("revision");
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/configuration"],
        "rev-get"
    );
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/service"],
        "rev-get"
    );
    assert_eq!(condition(&rev, "Ready")["status"], "True", "{rev}");
    assert!(names(&p.list("rev")).contains(&"rev-get-00001".to_string()));
}

#[test]
fn TestRevisionTimeout() {
    let Some(p) = crate::platform("revtimeout", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("rev-timeout", Image::Timeout)
        .spec("      timeoutSeconds: 10\n")
        .deploy(p);
    std::thread::scope(|s| {
        // Initial sleep 2 s: well within the timeout.
        let ok = s.spawn(|| t.get("/timeout?initialTimeout=2000").unwrap());
        // Initial sleep 12 s: nothing written by 10 s, so 504.
        let late = s.spawn(|| {
            let started = Instant::now();
            let r = t.get("/timeout?initialTimeout=12000").unwrap();
            (r, started.elapsed())
        });
        // Header at once, body after 15 s: the status stays 200 (the body is cut at 10 s).
        let streamed = s.spawn(|| t.get_raw("/timeout?initialTimeout=0&timeout=15000"));
        let r = ok.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("Slept for 2000 milliseconds"), "{r:?}");
        let (r, took) = late.join().unwrap();
        assert_eq!(r.status, 504, "{r:?}");
        assert!(took < Duration::from_secs(12), "{took:?}");
        let (status, raw) = streamed.join().unwrap();
        assert_eq!(status, 200, "{raw}");
    });
}

#[test]
fn TestRouteGetAndList() {
    let Some(p) = crate::platform("routeget", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    hello("route-get").deploy(p);
    let rt = p.get("rt", "route-get").expect("route");
    assert_eq!(
        rt["status"]["url"],
        format!("http://route-get.{}.{}", p.namespace(), p.domain())
    );
    assert_eq!(
        rt["status"]["traffic"][0]["revisionName"],
        "route-get-00001"
    );
    assert!(names(&p.list("rt")).contains(&"route-get".to_string()));
}

#[test]
fn TestRouteCreation() {
    let Some(p) = crate::platform("routecreate", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let cfg = |msg: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: rc\nspec:\n  template:\n{}",
            hello("rc").env("MESSAGE", msg).template(p)
        )
    };
    p.apply_ready(&cfg("first"));
    p.apply_ready("apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: rc\nspec:\n  traffic:\n    - {configurationName: rc, percent: 100}\n");
    let rt = p.get("rt", "rc").unwrap();
    let t = p.target(rt["status"]["url"].as_str().unwrap());
    assert_eq!(t.get("/").unwrap().body.trim(), "first");
    // A new revision of the configuration takes the route's traffic.
    p.apply_ready(&cfg("second"));
    eventually("the route follows the latest revision", PATIENCE, || {
        (t.get("/").ok()?.body.trim() == "second").then_some(())
    });
    let rt = p.get("rt", "rc").unwrap();
    assert_eq!(rt["status"]["traffic"][0]["revisionName"], "rc-00002");
}

#[test]
fn TestServiceAccountValidation() {
    let Some(p) = crate::platform("savalid", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let yaml = hello("sa-invalid")
        .spec("      serviceAccountName: \"+Invalid\"\n")
        .yaml(p);
    let err = p
        .apply(&yaml)
        .expect_err("an invalid serviceAccountName is refused");
    assert!(err.contains("serviceAccountName"), "{err}");
    assert!(p.get("ksvc", "sa-invalid").is_none(), "nothing stored");
}

#[test]
fn TestServiceCreateListAndDelete() {
    let Some(p) = crate::platform("svclist", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = hello("svc-list").deploy(p);
    assert_eq!(t.get("/").unwrap().body.trim(), HELLO);
    assert!(names(&p.list("ksvc")).contains(&"svc-list".to_string()));
    p.delete("ksvc", "svc-list").expect("deleted");
    eventually("the service and what it owns are gone", PATIENCE, || {
        (p.get("ksvc", "svc-list").is_none()
            && p.get("config", "svc-list").is_none()
            && p.get("rt", "svc-list").is_none()
            && p.get("rev", "svc-list-00001").is_none())
        .then_some(())
    });
    assert!(!names(&p.list("ksvc")).contains(&"svc-list".to_string()));
    eventually("no longer served", PATIENCE, || {
        (t.get("/").ok()?.status == 404).then_some(())
    });
}

#[test]
fn TestServiceCreateAndUpdate() {
    let Some(p) = crate::platform("svcupdate", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = hello("svc-upd").deploy(p);
    assert_eq!(t.get("/").unwrap().body.trim(), HELLO);
    // An image/env change makes a new revision that takes the traffic.
    hello("svc-upd").env("MESSAGE", "updated").deploy(p);
    eventually("the new revision serves", PATIENCE, || {
        (t.get("/").ok()?.body.trim() == "updated").then_some(())
    });
    let svc = p.get("ksvc", "svc-upd").unwrap();
    assert_eq!(svc["status"]["latestReadyRevisionName"], "svc-upd-00002");
    // A metadata-only change of the Service makes no revision.
    let yaml = hello("svc-upd").env("MESSAGE", "updated").yaml(p).replace(
        "  name: svc-upd\n",
        "  name: svc-upd\n  annotations:\n    note: \"metadata only\"\n",
    );
    p.apply_ready(&yaml);
    let svc = p.get("ksvc", "svc-upd").unwrap();
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "svc-upd-00002");
    // A template annotation change does make one.
    hello("svc-upd")
        .env("MESSAGE", "updated")
        .annotation("autoscaling.knative.dev/window", "61s")
        .deploy(p);
    let svc = p.get("ksvc", "svc-upd").unwrap();
    assert_eq!(svc["status"]["latestReadyRevisionName"], "svc-upd-00003");
}

#[test]
fn TestServiceBYOName() {
    let Some(p) = crate::platform("byoname", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = hello("byo").revision_name("byo-first").deploy(p);
    assert_eq!(t.get("/").unwrap().body.trim(), HELLO);
    let svc = p.get("ksvc", "byo").unwrap();
    assert_eq!(svc["status"]["latestReadyRevisionName"], "byo-first");
    // Changing the template without a new name is refused, and nothing changes.
    let err = p
        .apply(
            &hello("byo")
                .revision_name("byo-first")
                .env("MESSAGE", "x")
                .yaml(p),
        )
        .expect_err("a change without a new name is refused");
    assert!(
        err.contains("Saw the following changes without a name change"),
        "{err}"
    );
    assert_eq!(t.get("/").unwrap().body.trim(), HELLO);
    // A new name is accepted.
    hello("byo")
        .revision_name("byo-second")
        .env("MESSAGE", "second")
        .deploy(p);
    eventually("the new revision serves", PATIENCE, || {
        (t.get("/").ok()?.body.trim() == "second").then_some(())
    });
}

#[test]
fn TestServiceWithTrafficSplit() {
    let Some(p) = crate::platform("svcsplit", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = |msg: &str| hello("split").env("MESSAGE", msg);
    svc("one").deploy(p);
    svc("two").deploy(p);
    // 50 % to the first revision, 50 % to @latest, with tags.
    let t = svc("two")
        .traffic("  traffic:\n    - {revisionName: split-00001, percent: 50, tag: one}\n    - {latestRevision: true, percent: 50, tag: latest}\n")
        .deploy(p);
    let seen = bodies(&t, CONCURRENT_REQUESTS);
    for msg in ["one", "two"] {
        let n = seen.get(msg).copied().unwrap_or(0);
        assert!(
            n as f64 >= MIN_SPLIT_PERCENTAGE * CONCURRENT_REQUESTS as f64,
            "{seen:?}"
        );
    }
    let status = p.get("ksvc", "split").unwrap();
    let traffic = status["status"]["traffic"].as_array().unwrap().clone();
    let latest = traffic.iter().find(|t| t["tag"] == "latest").unwrap();
    assert_eq!(latest["revisionName"], "split-00002", "{traffic:?}");
    assert_eq!(latest["latestRevision"], true);
    for entry in &traffic {
        let tag = entry["tag"].as_str().unwrap();
        let want = if tag == "one" { "one" } else { "two" };
        let tt = p.target(entry["url"].as_str().unwrap());
        let seen = bodies(&tt, 20);
        assert_eq!(seen.get(want), Some(&20), "{tag}: {seen:?}");
    }
    // @latest follows a new revision; the pinned half stays.
    svc("three")
        .traffic("  traffic:\n    - {revisionName: split-00001, percent: 50, tag: one}\n    - {latestRevision: true, percent: 50, tag: latest}\n")
        .deploy(p);
    eventually("@latest moved", PATIENCE, || {
        let seen = bodies(&t, 60);
        (seen.contains_key("three") && seen.contains_key("one") && !seen.contains_key("two"))
            .then_some(())
    });
}

#[test]
fn TestAnnotationPropagation() {
    let Some(p) = crate::platform("annprop", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let yaml = hello("ann")
        .annotation("template-annotation", "on-revision")
        .yaml(p)
        .replace(
            "  name: ann\n",
            "  name: ann\n  annotations:\n    service-annotation: \"on-service\"\n",
        );
    p.apply_ready(&yaml);
    let cfg = p.get("config", "ann").unwrap();
    let rt = p.get("rt", "ann").unwrap();
    let rev = p.get("rev", "ann-00001").unwrap();
    assert_eq!(
        cfg["metadata"]["annotations"]["service-annotation"], "on-service",
        "{cfg}"
    );
    assert_eq!(
        rt["metadata"]["annotations"]["service-annotation"], "on-service",
        "{rt}"
    );
    assert_eq!(
        rev["metadata"]["annotations"]["template-annotation"], "on-revision",
        "{rev}"
    );
    // Removing the service annotation removes it from what the service owns.
    p.apply_ready(
        &hello("ann")
            .annotation("template-annotation", "on-revision")
            .yaml(p),
    );
    eventually(
        "the annotation is gone from config and route",
        PATIENCE,
        || {
            let cfg = p.get("config", "ann")?;
            let rt = p.get("rt", "ann")?;
            (cfg["metadata"]["annotations"]["service-annotation"].is_null()
                && rt["metadata"]["annotations"]["service-annotation"].is_null())
            .then_some(())
        },
    );
}

#[test]
fn TestLabelPropagation() {
    let Some(p) = crate::platform("labelprop", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let mut svc = hello("lbl");
    svc.labels
        .push(("template-label".into(), "on-revision".into()));
    let yaml = svc.yaml(p).replace(
        "  name: lbl\n",
        "  name: lbl\n  labels:\n    service-label: \"on-service\"\n",
    );
    p.apply_ready(&yaml);
    let cfg = p.get("config", "lbl").unwrap();
    let rt = p.get("rt", "lbl").unwrap();
    let rev = p.get("rev", "lbl-00001").unwrap();
    assert_eq!(
        cfg["metadata"]["labels"]["service-label"], "on-service",
        "{cfg}"
    );
    assert_eq!(
        rt["metadata"]["labels"]["service-label"], "on-service",
        "{rt}"
    );
    assert_eq!(
        rev["metadata"]["labels"]["template-label"], "on-revision",
        "{rev}"
    );
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/service"],
        "lbl"
    );
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/configuration"],
        "lbl"
    );
    assert_eq!(
        rt["metadata"]["labels"]["serving.knative.dev/service"],
        "lbl"
    );
    assert_eq!(
        cfg["metadata"]["labels"]["serving.knative.dev/service"],
        "lbl"
    );
}

#[test]
fn TestSingleConcurrency() {
    let Some(p) = crate::platform("singleconc", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("single", Image::SingleThreaded)
        .env("FAIL_ON_CONCURRENCY", "1")
        .spec("      containerConcurrency: 1\n")
        .deploy(p);
    // Knative: 5 clients for 20 s against an image that sleeps 500 ms and fails on overlap.
    let results = load_for(&t, "/?sleep=500", 5, Duration::from_secs(20));
    let bad: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} failed: {:?}",
        bad.len(),
        results.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(results.len() >= 20, "only {} requests", results.len());
}
