//! Knative's `test/e2e` cases for features behind a flag or a field (reference §8.3):
//! tag-header-based routing, the startup probe, validation of a pod spec (and server-side dry
//! run), revision garbage collection, and min-scale across a configuration change and a
//! route's deletion.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::platform::*;

/// Knative's `pizzaplanetv1` and `pizzaplanetv2` texts.
const PIZZA_1: &str = "What a spaceport!";
const PIZZA_2: &str = "Re-energize yourself with a slice of pepperoni!";
const TAG_HEADER: &str = "Knative-Serving-Tag";

/// The body of a GET that names `tag` in `Knative-Serving-Tag` (none: no header), once it
/// answers 200.
fn body_for_tag(t: &Target, tag: Option<&str>, path: &str) -> String {
    let headers: Vec<(&str, &str)> = tag.map(|v| (TAG_HEADER, v)).into_iter().collect();
    let r = t.get_with(path, &headers).expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.trim().to_string()
}

/// Polls until a request naming `tag` is answered with `want` (routes change asynchronously,
/// as Knative's `RetryingRouteInconsistency` allows for).
fn until_tag_answers(t: &Target, tag: Option<&str>, want: &str) {
    eventually(&format!("tag {tag:?} answers {want:?}"), PATIENCE, || {
        (body_for_tag(t, tag, "/") == want).then_some(())
    });
}

#[test]
fn TestTagHeaderBasedRouting() {
    let Some(p) = crate::platform("tagheader", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    p.set_config(
        "config-features",
        &[("tag-header-based-routing", "Enabled")],
    );
    let v1 = Svc::new("tag-header", Image::PizzaPlanet).env("MESSAGE", PIZZA_1);
    let t = v1.deploy(p);
    let v2 = Svc::new("tag-header", Image::PizzaPlanet).env("MESSAGE", PIZZA_2);
    v2.deploy(p);
    // Revision 1 keeps a tag and no share; revision 2 takes all the traffic.
    v2.traffic(
        "  traffic:\n    - {tag: rev1, revisionName: tag-header-00001, percent: 0}\n    - {revisionName: tag-header-00002, percent: 100}\n",
    )
    .deploy(p);

    until_tag_answers(&t, Some("rev1"), PIZZA_1);
    for _ in 0..10 {
        assert_eq!(body_for_tag(&t, Some("rev1"), "/"), PIZZA_1);
        // A tag the route does not have, and no header, take the default route.
        assert_eq!(body_for_tag(&t, Some("rev-wrong"), "/"), PIZZA_2);
        assert_eq!(body_for_tag(&t, None, "/"), PIZZA_2);
    }
    // The header is the platform's: the app never sees it.
    let seen = body_for_tag(&t, Some("rev1"), "/headers").to_ascii_lowercase();
    assert!(!seen.contains("knative-serving-tag"), "{seen}");

    // The flag takes effect live: off, the header is ignored (and still dropped); on again,
    // it routes again.
    p.set_config(
        "config-features",
        &[("tag-header-based-routing", "Disabled")],
    );
    until_tag_answers(&t, Some("rev1"), PIZZA_2);
    let seen = body_for_tag(&t, Some("rev1"), "/headers").to_ascii_lowercase();
    assert!(!seen.contains("knative-serving-tag"), "{seen}");
    p.set_config(
        "config-features",
        &[("tag-header-based-routing", "Enabled")],
    );
    until_tag_answers(&t, Some("rev1"), PIZZA_1);
}

#[test]
fn TestLivenessProbeAwareOfStartupProbe() {
    let Some(p) = crate::platform("startupprobe", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // The health routes fail for the first 10 s. The startup probe allows 20 s; liveness
    // alone would restart the app after 3 s, and every restart starts the 10 s again, so
    // the service could never become Ready if liveness ran before the startup probe passed.
    let started = Instant::now();
    let t = Svc::new("startup-liveness", Image::Readiness)
        .env("READY_DELAY", "10s")
        .container_fields(concat!(
            "          startupProbe:\n",
            "            httpGet: {path: /healthz/readiness, port: 8080}\n",
            "            periodSeconds: 1\n",
            "            failureThreshold: 20\n",
            "          livenessProbe:\n",
            "            httpGet: {path: /healthz/liveness, port: 8080}\n",
            "            periodSeconds: 1\n",
            "            failureThreshold: 3\n",
        ))
        .deploy(p);
    // Not Ready (its readiness was not probed) before the startup probe passed.
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "Ready after {:?}, before the startup probe could pass",
        started.elapsed()
    );
    let r = t.get("/").unwrap();
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "Hello World! How about some tasty noodles?")
    );
    assert_eq!(p.live_instances("startup-liveness-00001"), 1);
}

/// The service as JSON, for writes through the API.
fn service_json(p: &dyn Platform, svc: &Svc) -> Value {
    let docs = rouse_api::decode::parse_documents(&svc.yaml(p)).expect("manifest");
    docs.into_iter().next().expect("one document")
}

#[test]
fn TestServiceValidationWithInvalidPodSpec() {
    let Some(p) = crate::platform("dryrun", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = Svc::new("dry-run", Image::PizzaPlanet).env("MESSAGE", PIZZA_1);
    let mut body = service_json(p, &svc);

    // A server-side dry run of a create answers the defaulted object and stores nothing.
    let would_be = p.write("POST", None, &body, true).expect("dry-run create");
    assert_eq!(would_be["metadata"]["name"], "dry-run");
    assert_eq!(would_be["spec"]["template"]["spec"]["timeoutSeconds"], 300);
    assert!(p.get("ksvc", "dry-run").is_none(), "a dry run stored it");

    // A container name a pod cannot have is refused, dry run or not, naming the field.
    let mut bad = body.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["name"] = json!("&InvalidValue");
    for dry_run in [true, false] {
        let (status, msg) = p.write("POST", None, &bad, dry_run).unwrap_err();
        assert!((400..500).contains(&status), "{status} {msg}");
        assert!(
            msg.contains("spec.template.spec.containers[0].name"),
            "{msg}"
        );
    }
    assert!(p.get("ksvc", "dry-run").is_none());

    // Knative's case: a created service patched with the invalid name is refused.
    p.apply_ready(&svc.yaml(p));
    let stored = p.get("ksvc", "dry-run").expect("created");
    let mut containers = stored["spec"]["template"]["spec"]["containers"].clone();
    containers[0]["name"] = json!("&InvalidValue");
    let patch = json!({"spec": {"template": {"spec": {"containers": containers}}}});
    let (status, msg) = p
        .write("PATCH", Some("dry-run"), &patch, false)
        .unwrap_err();
    assert!((400..500).contains(&status), "{status} {msg}");
    assert!(
        msg.contains("spec.template.spec.containers[0].name"),
        "{msg}"
    );

    // Dry runs of a valid patch and a valid replace answer the change and store nothing.
    let mut changed = stored["spec"]["template"]["spec"]["containers"].clone();
    changed[0]["env"]
        .as_array_mut()
        .expect("env")
        .push(json!({"name": "FOO", "value": "BAR"}));
    let patch = json!({"spec": {"template": {"spec": {"containers": changed}}}});
    let answered = p
        .write("PATCH", Some("dry-run"), &patch, true)
        .expect("dry-run patch");
    let env = &answered["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .is_some_and(|e| e.contains(&json!({"name": "FOO", "value": "BAR"}))),
        "{answered}"
    );
    // A replace sends the object as read (Knative's case updates what it got): its version
    // and the annotations the server set, such as the immutable creator.
    body["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
    if let Some(a) = stored["metadata"]["annotations"].as_object() {
        body["metadata"]["annotations"] = Value::Object(a.clone());
    }
    body["spec"]["template"]["spec"]["containers"] = changed;
    p.write("PUT", Some("dry-run"), &body, true)
        .expect("dry-run replace");
    let after = p.get("ksvc", "dry-run").unwrap();
    assert_eq!(
        after["metadata"]["generation"],
        stored["metadata"]["generation"]
    );
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"],
        stored["spec"]["template"]["spec"]["containers"]
    );
    assert_eq!(p.list("rev").len(), 1, "a dry run made a revision");
}

#[test]
fn TestRevisionGC() {
    let Some(p) = crate::platform("revisiongc", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // Keep at most one non-active revision, whatever its age (set live, as an operator
    // would edit config-gc).
    p.set_config(
        "config-gc",
        &[
            ("min-non-active-revisions", "0"),
            ("max-non-active-revisions", "1"),
            ("retain-since-create-time", "disabled"),
            ("retain-since-last-active-time", "disabled"),
        ],
    );
    let routing_state = |rev: &str| -> Option<String> {
        p.get("rev", rev)?["metadata"]["labels"]["serving.knative.dev/routingState"]
            .as_str()
            .map(String::from)
    };
    let t = Svc::new("gc", Image::HelloWorld).deploy(p);
    // Knative's case: the serving revision is labelled active.
    eventually("gc-00001 active", PATIENCE, || {
        (routing_state("gc-00001").as_deref() == Some("active")).then_some(())
    });
    for round in 2..=3 {
        Svc::new("gc", Image::HelloWorld)
            .env("ROUND", &round.to_string())
            .deploy(p);
    }
    // The first is collected; the second, no longer routed, is kept in reserve.
    eventually("gc-00001 collected", PATIENCE, || {
        p.get("rev", "gc-00001").is_none().then_some(())
    });
    eventually("gc-00002 reserve, gc-00003 active", PATIENCE, || {
        (routing_state("gc-00002").as_deref() == Some("reserve")
            && routing_state("gc-00003").as_deref() == Some("active"))
        .then_some(())
    });
    let r = t.get("/").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn TestMinScale_ConfigurationAndRoute() {
    let Some(p) = crate::platform("minscaleroute", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    const MIN_SCALE: usize = 3;
    // Knative's setup: a Route and a Configuration of different names.
    let cfg = |round: &str| {
        let svc = Svc::new("minscale-cfg", Image::HelloWorld)
            .annotation("autoscaling.knative.dev/min-scale", &MIN_SCALE.to_string())
            .env("ROUND", round);
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Configuration\nmetadata:\n  name: minscale-cfg\nspec:\n  template:\n{}",
            svc.template(p)
        )
    };
    p.apply(
        "apiVersion: serving.knative.dev/v1\nkind: Route\nmetadata:\n  name: minscale-route\nspec:\n  traffic:\n    - {configurationName: minscale-cfg, percent: 100}\n",
    )
    .expect("route");
    p.apply_ready(&cfg("1"));
    assert_eq!(p.live_instances("minscale-cfg-00001"), MIN_SCALE);

    // The configuration changes: the new revision holds min-scale, the old one, no longer
    // routed, scales below it.
    p.apply_ready(&cfg("2"));
    eventually("the new revision at min-scale", PATIENCE, || {
        (p.live_instances("minscale-cfg-00002") == MIN_SCALE).then_some(())
    });
    eventually("the old revision below min-scale", PATIENCE, || {
        (p.live_instances("minscale-cfg-00001") < MIN_SCALE).then_some(())
    });
    assert_eq!(p.live_instances("minscale-cfg-00002"), MIN_SCALE);

    // Without a route, min-scale no longer holds.
    p.delete("rt", "minscale-route").expect("delete route");
    eventually("the new revision below min-scale", PATIENCE, || {
        (p.live_instances("minscale-cfg-00002") < MIN_SCALE).then_some(())
    });
    // No longer routed: in reserve.
    eventually("the new revision in reserve", PATIENCE, || {
        let rev = p.get("rev", "minscale-cfg-00002")?;
        (rev["metadata"]["labels"]["serving.knative.dev/routingState"] == "reserve").then_some(())
    });
}
