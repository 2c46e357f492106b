//! Knative's `test/e2e` cases that apply to one machine (reference §8.3).

use std::time::{Duration, Instant};

use crate::platform::*;

const HELLO: &str = "Hello World! How about some tasty noodles?";
/// Knative's success-rate SLO while autoscaling (`test/e2e/autoscale.go`).
const SLO: f64 = 0.999;

fn actual_scale(p: &dyn Platform, rev: &str) -> i64 {
    p.get("kpa", rev)
        .map(|pa| pa["status"]["actualScale"].as_i64().unwrap_or(-1))
        .unwrap_or(-1)
}

fn sks_mode(p: &dyn Platform, rev: &str) -> String {
    p.get("sks", rev)
        .and_then(|s| s["spec"]["mode"].as_str().map(String::from))
        .unwrap_or_default()
}

#[test]
fn TestHelloWorld() {
    let Some(p) = crate::platform("helloworld", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("helloworld", Image::HelloWorld).deploy(p);
    let r = t.get("/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO));
}

#[test]
fn TestActivatorOverload() {
    let Some(p) = crate::platform("overload", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // CC 1, max-scale 10, TBC -1 (activator always in the path); 100 concurrent 300 ms
    // requests must all succeed.
    let t = Svc::new("overload", Image::Autoscale)
        .annotation("autoscaling.knative.dev/max-scale", "10")
        .annotation("autoscaling.knative.dev/target-burst-capacity", "-1")
        .spec("      containerConcurrency: 1\n")
        .deploy(p);
    let results = load(&t, "/?sleep=300", 100, 100, PATIENCE);
    assert_eq!(results.len(), 100);
    assert_success_rate(&results, 1.0);
}

#[test]
fn TestTargetBurstCapacityMinusOne() {
    let Some(p) = crate::platform("tbcminusone", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    Svc::new("tbc-minus-one", Image::Autoscale)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "-1")
        .annotation("autoscaling.knative.dev/min-scale", "1")
        .deploy(p);
    // With ready instances the activator stays in the path.
    let sks = p.get("sks", "tbc-minus-one-00001").unwrap();
    assert_eq!(sks["spec"]["mode"], "Proxy", "{sks}");
    assert_eq!(sks["status"]["endpoints"][0], "activator", "{sks}");
}

#[test]
fn TestTargetBurstCapacity() {
    let Some(p) = crate::platform("tbc", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // CC 10, TBC 7: the activator is in the path while the spare capacity is short.
    let t = Svc::new("tbc", Image::Autoscale)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "7")
        .spec("      containerConcurrency: 10\n")
        .deploy(p);
    assert_eq!(sks_mode(p, "tbc-00001"), "Proxy");
    assert_eq!(t.get("/").unwrap().status, 200);
    // With a lower TBC than one instance's spare capacity, the instances take the traffic.
    Svc::new("tbc", Image::Autoscale)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "0")
        .annotation("autoscaling.knative.dev/min-scale", "2")
        .spec("      containerConcurrency: 10\n")
        .deploy(p);
    eventually("Serve with 2 instances as the endpoints", PATIENCE, || {
        let sks = p.get("sks", "tbc-00002")?;
        (sks["spec"]["mode"] == "Serve" && sks["status"]["endpoints"].as_array()?.len() == 2)
            .then_some(())
    });
}

#[test]
fn TestTargetBurstCapacityZero() {
    let Some(p) = crate::platform("tbczero", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("tbc-zero", Image::Autoscale)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "0")
        .annotation("autoscaling.knative.dev/window", "10s")
        .deploy(p);
    assert_eq!(t.get("/").unwrap().status, 200);
    eventually(
        "scaled to zero within a minute",
        Duration::from_secs(60),
        || {
            (actual_scale(p, "tbc-zero-00001") == 0 && p.live_instances("tbc-zero-00001") == 0)
                .then_some(())
        },
    );
}

#[test]
fn TestFastScaleToZero() {
    let Some(p) = crate::platform("fastzero", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let started = Instant::now();
    let t = Svc::new("fast-zero", Image::Autoscale)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "-1")
        .annotation("autoscaling.knative.dev/window", "6s")
        .deploy(p);
    assert_eq!(t.get("/").unwrap().status, 200);
    // Grace (1 s) + 15 s after the window.
    eventually(
        "no instance left",
        Duration::from_secs(6 + 1 + 15 + 10),
        || (p.live_instances("fast-zero-00001") == 0).then_some(()),
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Knative's up/down/up: 1 → 2 instances, scale to zero, 0 → 2, holding the SLO.
fn up_down_up(test: &str, algorithm: Option<&str>) {
    let Some(p) = crate::platform(test, Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    // Knative's setup: target 6 concurrent, utilisation 0.7, 500 ms per request.
    let mut svc = Svc::new(test, Image::Autoscale)
        .annotation("autoscaling.knative.dev/target", "6")
        .annotation(
            "autoscaling.knative.dev/target-utilization-percentage",
            "70",
        );
    if let Some(a) = algorithm {
        // Knative runs this case with a 30 s window. With the 6 s one a weighted average has
        // α = 0.78, so a decider tick that reads the window before the current second's stat
        // landed sees about a fifth of the load and may never scale up; 12 s (α = 0.54) keeps
        // the case within a minute and the read-before-stat tick still above one instance.
        svc = svc
            .annotation("autoscaling.knative.dev/metric-aggregation-algorithm", a)
            .annotation("autoscaling.knative.dev/window", "12s");
    }
    let t = svc.deploy(p);
    let rev = &format!("{test}-00001");
    let up = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut results = Vec::new();
        // At least one round of load, then until 2 instances are up.
        loop {
            results.extend(load_for(&t, "/?sleep=500", 12, Duration::from_secs(2)));
            if actual_scale(p, rev) >= 2 || Instant::now() >= deadline {
                break;
            }
        }
        assert!(
            actual_scale(p, rev) >= 2,
            "{what}: did not reach 2 instances: {}",
            p.get("kpa", rev).unwrap_or_default()
        );
        assert_success_rate(&results, SLO);
    };
    up("1 → 2");
    eventually("scaled to zero", Duration::from_secs(45), || {
        (actual_scale(p, rev) == 0).then_some(())
    });
    up("0 → 2");
}

#[test]
fn TestAutoscaleUpDownUp() {
    up_down_up("updownup", None);
}

#[test]
fn TestAutoscaleUpDownUp_WeightedExponential() {
    up_down_up("updownup-wexp", Some("weightedExponential"));
}

#[test]
fn TestDestroyPodWithRequests() {
    let Some(p) = crate::platform("destroyreqs", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("destroy-reqs", Image::Autoscale).deploy(p);
    std::thread::scope(|s| {
        let inflight: Vec<_> = (0..5)
            .map(|_| s.spawn(|| t.get("/?sleep=3000").unwrap()))
            .collect();
        // Once the requests reach the app, delete the service.
        eventually("requests in flight", PATIENCE, || {
            (t.get("/in-flight").ok()?.body.trim() == "5").then_some(())
        });
        p.delete("ksvc", "destroy-reqs").unwrap();
        for h in inflight {
            let r = h.join().unwrap();
            assert_eq!((r.status, r.body.trim()), (200, HELLO));
        }
    });
}

#[test]
fn TestDestroyPodTimely() {
    let Some(p) = crate::platform("destroytimely", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    Svc::new("destroy-timely", Image::Autoscale)
        .spec("      timeoutSeconds: 300\n")
        .deploy(p);
    assert_eq!(p.live_instances("destroy-timely-00001"), 1);
    let started = Instant::now();
    p.delete("ksvc", "destroy-timely").unwrap();
    // Gone well before the 5-minute revision timeout (Knative: < timeout − 30 s).
    eventually("the instance is gone", Duration::from_secs(60), || {
        (p.live_instances("destroy-timely-00001") == 0).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(270 - 210),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn TestDestroyPodInflight() {
    let Some(p) = crate::platform("destroyinflight", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("destroy-inflight", Image::Timeout)
        .spec("      timeoutSeconds: 45\n")
        .deploy(p);
    std::thread::scope(|s| {
        // A 35 s request (Knative's numbers), deleted while in flight (Knative deletes at
        // about half of it; here as soon as the request reached the app, so more is left).
        let req = s.spawn(|| t.get_raw("/timeout?initialTimeout=35000"));
        eventually("the request reached the app", PATIENCE, || {
            (t.get("/in-flight").ok()?.body.trim() == "1").then_some(())
        });
        p.delete("config", "destroy-inflight").unwrap();
        let (status, raw) = req.join().unwrap();
        assert_eq!(status, 200, "{raw}");
        assert!(raw.contains("Slept for 35000 milliseconds"), "{raw}");
    });
}

#[test]
fn TestRevisionTimeout() {
    let Some(p) = crate::platform("e2etimeouts", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let rst = Svc::new("rst", Image::Timeout)
        .spec("      timeoutSeconds: 30\n      responseStartTimeoutSeconds: 7\n")
        .deploy(p);
    let idle = Svc::new("idle", Image::Timeout)
        .spec("      timeoutSeconds: 30\n      idleTimeoutSeconds: 5\n")
        .deploy(p);
    std::thread::scope(|s| {
        let a = s.spawn(|| rst.get("/timeout?initialTimeout=4000").unwrap());
        let b = s.spawn(|| rst.get("/timeout?initialTimeout=15000").unwrap());
        // Writes every 2 s keep a 5 s idle timeout from firing.
        let c = s.spawn(|| idle.get("/stream?chunks=4&interval=2000").unwrap());
        // 7 s idle with a 20 s silence before the head: 504.
        let d = s.spawn(|| idle.get("/timeout?initialTimeout=20000").unwrap());
        assert_eq!(a.join().unwrap().status, 200);
        assert_eq!(b.join().unwrap().status, 504);
        let c = c.join().unwrap();
        assert_eq!(c.status, 200);
        assert!(c.body.contains("chunk 3"), "{c:?}");
        assert_eq!(d.join().unwrap().status, 504);
    });
}

#[test]
fn TestHelloHTTP2WithPortNameH2C() {
    let Some(p) = crate::platform("h2c", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("hello-h2c", Image::HelloHttp2)
        .args(&["--h2c"])
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n")
        .deploy(p);
    // An HTTP/1.1 client reaches an h2c-only app: the platform speaks h2c to it.
    let r = t.get("/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO));
}

#[test]
fn TestReadinessPathAndQuery() {
    let Some(p) = crate::platform("readypath", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ready-path", Image::Readiness)
        .container_fields(
            "          readinessProbe:\n            httpGet: {path: \"/readyz?probe=1\"}\n",
        )
        .deploy(p);
    assert_eq!(t.get("/").unwrap().status, 200);
}

#[test]
fn TestReadinessGRPCProbe() {
    let Some(p) = crate::platform("readygrpc", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ready-grpc", Image::GrpcPing)
        .args(&["--h2c"])
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n          readinessProbe:\n            grpc: {port: 8080}\n")
        .deploy(p);
    assert_eq!(t.get("/").unwrap().status, 200);
}

#[test]
fn TestMinScale() {
    let Some(p) = crate::platform("minscale", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("min-scale", Image::Autoscale)
        .annotation("autoscaling.knative.dev/min-scale", "3")
        .deploy(p);
    // Ready only with min-scale instances.
    assert!(actual_scale(p, "min-scale-00001") >= 3);
    assert_eq!(p.live_instances("min-scale-00001"), 3);
    assert_eq!(t.get("/").unwrap().status, 200);
    // Replaced: the old revision scales below its min-scale.
    Svc::new("min-scale", Image::Autoscale)
        .annotation("autoscaling.knative.dev/min-scale", "3")
        .env("MESSAGE", "second")
        .deploy(p);
    assert_eq!(p.live_instances("min-scale-00002"), 3);
    eventually(
        "the old revision scales down",
        Duration::from_secs(60),
        || (p.live_instances("min-scale-00001") < 3).then_some(()),
    );
}

#[test]
fn TestInitScalePositive() {
    let Some(p) = crate::platform("initscale", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    // Once initialized, an idle revision may scale down at the next decision, which on a busy
    // cluster came between its turning Ready and a look afterwards: so the scale is watched
    // from the apply until Ready, and Ready must not come before the initial scale.
    let svc = Svc::new("init-scale", Image::Autoscale)
        .annotation("autoscaling.knative.dev/initial-scale", "3");
    p.apply(&svc.yaml(p)).expect("applied");
    let rev = "init-scale-00001";
    let mut highest = -1;
    eventually("ready", Duration::from_secs(120), || {
        // The scale is read before the Service, so a Ready seen was preceded by this read.
        highest = highest.max(actual_scale(p, rev));
        let ready = p
            .get("ksvc", "init-scale")
            .is_some_and(|s| condition(&s, "Ready")["status"] == "True");
        ready.then_some(())
    });
    assert!(
        highest >= 3,
        "ready with its initial scale (at most {highest} seen)"
    );
    eventually("scales back down", Duration::from_secs(45), || {
        (actual_scale(p, rev) < 3).then_some(())
    });
}

#[test]
fn TestInitScaleZero() {
    let Some(p) = crate::platform("initzero", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("init-zero", Image::Autoscale)
        .annotation("autoscaling.knative.dev/initial-scale", "0")
        .deploy(p);
    assert_eq!(
        p.live_instances("init-zero-00001"),
        0,
        "ready without instances"
    );
    assert_eq!(t.get("/").unwrap().status, 200);
}

// --- websocket_test.go ---

use crate::clients::{WebSocket, hold_streams, stream_ping, unary_ping};

#[test]
fn TestWebSocket() {
    let Some(p) = crate::platform("websocket", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ws-echo", Image::WsServer).deploy(p);
    let mut ws = WebSocket::connect(&t, "").unwrap();
    for i in 0..10 {
        ws.echo(&format!("Hello, websocket {i}"));
    }
    ws.close();
}

#[test]
fn TestWebSocketViaActivator() {
    let Some(p) = crate::platform("wsactivator", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ws-activator", Image::WsServer)
        .annotation("autoscaling.knative.dev/target-burst-capacity", "-1")
        .deploy(p);
    assert_eq!(sks_mode(p, "ws-activator-00001"), "Proxy");
    let mut ws = WebSocket::connect(&t, "").unwrap();
    ws.echo("Hello, activator");
    ws.close();
}

#[test]
fn TestWebSocketBlueGreenRoute() {
    let Some(p) = crate::platform("wsbluegreen", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = |rev: &str, msg: &str| {
        Svc::new("ws-bg", Image::WsServer)
            .revision_name(rev)
            .env("MESSAGE", msg)
    };
    svc("ws-bg-blue", "blue").deploy(p);
    let main = svc("ws-bg-green", "green")
        .traffic("  traffic:\n    - {revisionName: ws-bg-blue, percent: 50}\n    - {revisionName: ws-bg-green, percent: 50}\n")
        .deploy(p);
    // Each connection lands on one of the two revisions and echoes there; both are reached.
    let mut revisions = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut ws = WebSocket::connect(&main, "").unwrap();
        ws.echo("split");
        let message =
            ws.1.lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("x-message:")
                        .map(|v| v.trim().to_string())
                })
                .expect("the 101 names its revision");
        ws.close();
        revisions.insert(message);
        if revisions.len() == 2 {
            break;
        }
    }
    assert_eq!(revisions.len(), 2, "{revisions:?}");
}

#[test]
fn TestWebSocketGracefulShutdown() {
    let Some(p) = crate::platform("wsshutdown", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ws-shutdown", Image::WsServer).deploy(p);
    let mut ws = WebSocket::connect(&t, "").unwrap();
    ws.echo("before");
    // The service is deleted while the socket is open: it keeps working, then closes normally.
    p.delete("ksvc", "ws-shutdown").unwrap();
    eventually("the route is gone", PATIENCE, || {
        (t.get("/").ok()?.status == 404).then_some(())
    });
    ws.echo("after the delete");
    ws.close();
    eventually(
        "the instance is gone once the socket closed",
        PATIENCE,
        || (p.live_instances("ws-shutdown-00001") == 0).then_some(()),
    );
}

#[test]
fn TestWebSocketWithTimeout() {
    let Some(p) = crate::platform("wstimeout", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("ws-timeout", Image::WsServer)
        .spec("      timeoutSeconds: 2\n")
        .deploy(p);
    // A handshake answered within the timeout connects, and the socket outlives the timeout.
    let mut ws = WebSocket::connect(&t, "?sleep=500").unwrap();
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_secs(3) {
        ws.echo("still open");
    }
    ws.close();
    // A handshake slower than the timeout does not.
    let err = WebSocket::connect(&t, "?sleep=4000")
        .err()
        .expect("refused");
    assert!(err.contains("504"), "{err}");
}

// --- grpc_test.go ---

fn grpc(p: &dyn Platform, name: &str, from_zero: bool) -> Target {
    let mut svc = Svc::new(name, Image::GrpcPing)
        .args(&["--h2c"])
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n");
    if from_zero {
        svc = svc
            .annotation("autoscaling.knative.dev/initial-scale", "0")
            .annotation("autoscaling.knative.dev/target-burst-capacity", "-1");
    }
    svc.deploy(p)
}

#[test]
fn TestGRPCUnaryPing() {
    let Some(p) = crate::platform("grpcunary", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = grpc(p, "grpc-unary", false);
    for _ in 0..5 {
        assert!(unary_ping(&t, PATIENCE));
    }
}

#[test]
fn TestGRPCStreamingPing() {
    let Some(p) = crate::platform("grpcstream", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = grpc(p, "grpc-stream", false);
    assert!(stream_ping(&t, 10, PATIENCE));
}

#[test]
fn TestGRPCUnaryPingViaActivator() {
    let Some(p) = crate::platform("grpcunaryzero", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let t = grpc(p, "grpc-unary-zero", true);
    assert_eq!(p.live_instances("grpc-unary-zero-00001"), 0);
    assert!(unary_ping(&t, PATIENCE));
}

#[test]
fn TestGRPCStreamingPingViaActivator() {
    let Some(p) = crate::platform("grpcstreamzero", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let t = grpc(p, "grpc-stream-zero", true);
    assert_eq!(p.live_instances("grpc-stream-zero-00001"), 0);
    assert!(stream_ping(&t, 10, PATIENCE));
}

#[test]
fn TestGRPCAutoscaleUpDownUp() {
    let Some(p) = crate::platform("grpcupdownup", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    // Open streams are requests in flight: 12 of them against a target of 6 at 70 %.
    let t = Svc::new("grpc-updownup", Image::GrpcPing)
        .args(&["--h2c"])
        .annotation("autoscaling.knative.dev/target", "6")
        .annotation(
            "autoscaling.knative.dev/target-utilization-percentage",
            "70",
        )
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n")
        .deploy(p);
    let rev = "grpc-updownup-00001";
    let up = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(40);
        let (mut ok, mut total) = (0, 0);
        loop {
            ok += hold_streams(&t, 12, Duration::from_secs(3));
            total += 12;
            if actual_scale(p, rev) >= 2 || Instant::now() >= deadline {
                break;
            }
        }
        assert!(
            actual_scale(p, rev) >= 2,
            "{what}: did not reach 2 instances"
        );
        assert!(
            ok as f64 / total as f64 >= SLO,
            "{what}: {ok} of {total} streams worked"
        );
    };
    up("1 → 2");
    eventually("scaled to zero", Duration::from_secs(45), || {
        (actual_scale(p, rev) == 0).then_some(())
    });
    up("0 → 2");
}

#[test]
fn TestGRPCLoadBalancing() {
    let Some(p) = crate::platform("grpclb", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("grpc-lb", Image::GrpcPing)
        .args(&["--h2c"])
        .annotation("autoscaling.knative.dev/min-scale", "3")
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n")
        .deploy(p);
    assert_eq!(p.live_instances("grpc-lb-00001"), 3);
    // Streams opened on separate connections are served (and spread by the balancer).
    std::thread::scope(|s| {
        let streams: Vec<_> = (0..6)
            .map(|_| s.spawn(|| stream_ping(&t, 5, PATIENCE)))
            .collect();
        for h in streams {
            assert!(h.join().unwrap());
        }
    });
}

// --- autoscale_test.go: activation scale ---

#[test]
fn TestActivationScale() {
    let Some(p) = crate::platform("activationscale", Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("activation", Image::Autoscale)
        .annotation("autoscaling.knative.dev/initial-scale", "0")
        .annotation("autoscaling.knative.dev/activation-scale", "5")
        .deploy(p);
    assert_eq!(p.live_instances("activation-00001"), 0);
    assert_eq!(t.get("/").unwrap().status, 200);
    // One request from zero brings up activation-scale instances.
    eventually("5 instances", PATIENCE, || {
        (actual_scale(p, "activation-00001") >= 5).then_some(())
    });
}

// --- namespace_test.go, rollback_byo_test.go ---

#[test]
fn TestMultipleNamespace() {
    let Some(p) = crate::platform("namespaces", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // The same name in two namespaces: two services, each served under its own host.
    let (ns1, ns2) = (p.namespace(), p.other_namespace());
    let host = |ns: &str| format!("http://same-name.{ns}.{}", p.domain());
    for (ns, msg) in [(&ns1, "in default"), (&ns2, "in alternate")] {
        let yaml = Svc::new("same-name", Image::HelloWorld)
            .env("MESSAGE", msg)
            .yaml(p)
            .replace(
                "  name: same-name\n",
                &format!("  name: same-name\n  namespace: {ns}\n"),
            );
        p.apply_ready(&yaml);
        let t = p.target(&host(ns));
        let r = eventually("served", PATIENCE, || {
            t.get("/").ok().filter(|r| r.status == 200)
        });
        assert_eq!(r.body.trim(), msg);
    }
    let t = p.target(&host(&ns1));
    assert_eq!(t.get("/").unwrap().body.trim(), "in default");
}

#[test]
fn TestRollbackBYOName() {
    let Some(p) = crate::platform("rollbackbyo", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = |rev: &str, msg: &str| {
        Svc::new("byo-rollback", Image::HelloWorld)
            .revision_name(rev)
            .env("MESSAGE", msg)
    };
    let t = svc("byo-rollback-v1", "v1").deploy(p);
    svc("byo-rollback-v2", "v2").deploy(p);
    eventually("v2 serves", PATIENCE, || {
        (t.get("/").ok()?.body.trim() == "v2").then_some(())
    });
    // Rolling back: the v1 template under its own name again, pinned by traffic.
    svc("byo-rollback-v1", "v1")
        .traffic("  traffic:\n    - {revisionName: byo-rollback-v1, percent: 100}\n")
        .deploy(p);
    eventually("v1 serves again", PATIENCE, || {
        (t.get("/").ok()?.body.trim() == "v1").then_some(())
    });
    let svc = p.get("ksvc", "byo-rollback").unwrap();
    assert_eq!(
        svc["status"]["traffic"][0]["revisionName"],
        "byo-rollback-v1"
    );
}

// --- rollout_test.go ---

/// The shares of a status' traffic, `(revision, percent)`.
fn shares(obj: &serde_json::Value) -> Vec<(String, i64)> {
    obj["status"]["traffic"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["revisionName"].as_str().unwrap_or_default().to_string(),
                        t["percent"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn TestGradualRollout() {
    // Knative's case with a 12 s rollout instead of 1 min: the first 1 % takes about a
    // second, then 11 steps of 9 % a second apart.
    const ROLLOUT: Duration = Duration::from_secs(12);
    let Some(p) = crate::platform("gradualrollout", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let svc = |msg: &str| {
        Svc::new("gradual", Image::PizzaPlanet)
            .env("MESSAGE", msg)
            .yaml(p)
            .replace(
                "  name: gradual\n",
                "  name: gradual\n  annotations:\n    serving.knative.dev/rollout-duration: 12s\n",
            )
    };
    p.apply_ready(&svc("v1"));
    let first = p.get("ksvc", "gradual").unwrap()["status"]["latestReadyRevisionName"]
        .as_str()
        .unwrap()
        .to_string();
    let t = p.target(
        p.get("ksvc", "gradual").unwrap()["status"]["url"]
            .as_str()
            .unwrap(),
    );

    p.apply(&svc("v2")).expect("update accepted");
    let updated = Instant::now();
    let second = eventually("SecondRevision", PATIENCE, || {
        let s = p.get("ksvc", "gradual")?;
        let latest = s["status"]["latestCreatedRevisionName"].as_str()?;
        (latest != first).then(|| latest.to_string())
    });
    eventually("RolloutStarted", PATIENCE, || {
        let s = p.get("ksvc", "gradual")?;
        (condition(&s, "RoutesReady")["reason"] == "RolloutInProgress").then_some(())
    });
    eventually("TrafficSplit", PATIENCE, || {
        (shares(&p.get("ksvc", "gradual")?).len() == 2).then_some(())
    });

    // Until Ready: two targets (old, new) summing to 100 with the new one's share growing, or
    // the new one alone at 100 % just before Ready. The gateway serves both meanwhile.
    let mut new_shares = Vec::new();
    let mut bodies = std::collections::BTreeSet::new();
    let done = eventually("RolloutFinished", PATIENCE, || {
        let s = p.get("ksvc", "gradual")?;
        let traffic = shares(&s);
        if condition(&s, "Ready")["status"] == "True" {
            return Some(traffic);
        }
        match traffic.as_slice() {
            [(old, a), (new, b)] => {
                assert_eq!((old, new), (&first, &second), "{traffic:?}");
                assert_eq!(a + b, 100, "{traffic:?}");
                new_shares.push(*b);
            }
            [(only, 100)] => assert_eq!(only, &second, "{traffic:?}"),
            other => panic!("expected two items in traffic but got {other:?}"),
        }
        if let Ok(r) = t.get("/") {
            bodies.insert(r.body.trim().to_string());
        }
        None
    });
    let took = updated.elapsed();
    assert_eq!(done, vec![(second.clone(), 100)], "final traffic");
    assert!(
        new_shares.windows(2).all(|w| w[0] <= w[1]) && new_shares.len() > 3,
        "the new revision's share grows step by step: {new_shares:?}"
    );
    assert!(
        new_shares.iter().any(|b| (20..=80).contains(b)),
        "a share mid-way was seen: {new_shares:?}"
    );
    assert!(
        took >= ROLLOUT - Duration::from_secs(3),
        "the rollout took {took:?}, not about {ROLLOUT:?}"
    );
    assert!(bodies.contains("v1") && bodies.contains("v2"), "{bodies:?}");
    let r = t.get("/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, "v2"));
}

// --- logging_test.go ---

/// Knative's test template (`test/e2e/logging_test.go`, also its default).
const REQUEST_LOG_TEMPLATE: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

/// The revision's request-log lines (JSON objects with `httpRequest`).
fn request_log_lines(p: &dyn Platform, rev: &str) -> Vec<serde_json::Value> {
    p.logs(rev)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("httpRequest").is_some())
        .collect()
}

#[test]
fn TestRequestLogs() {
    let Some(p) = crate::platform("requestlogs", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    p.configure(
        "config-observability",
        &[
            ("logging.enable-request-log", "true"),
            ("logging.request-log-template", REQUEST_LOG_TEMPLATE),
        ],
    )
    .expect("config-observability accepted");
    let t = Svc::new("requestlogs", Image::HelloWorld)
        .annotation("autoscaling.knative.dev/min-scale", "1")
        .annotation("autoscaling.knative.dev/max-scale", "1")
        .deploy(p);
    let rev = p.get("ksvc", "requestlogs").unwrap()["status"]["latestReadyRevisionName"]
        .as_str()
        .unwrap()
        .to_string();
    p.await_request_log(&rev, true);
    let r = t.get("/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO));

    // A request was sent to /: its line, with Knative's fields.
    let line = eventually("the request's log line", PATIENCE, || {
        request_log_lines(p, &rev)
            .into_iter()
            .find(|l| l["httpRequest"]["requestUrl"] == "/")
    });
    let req = &line["httpRequest"];
    assert_eq!(req["requestMethod"], "GET", "{line}");
    assert_eq!(req["status"], 200, "{line}");
    assert_eq!(req["responseSize"], r.body.len().to_string(), "{line}");
    assert_eq!(req["userAgent"], "rouse-e2e", "{line}");
    assert_eq!(req["protocol"], "HTTP/1.1", "{line}");
    assert_eq!(req["requestSize"], "0", "{line}");
    let latency = req["latency"].as_str().unwrap_or_default();
    assert!(
        latency
            .strip_suffix('s')
            .and_then(|l| l.parse::<f64>().ok())
            .is_some_and(|l| l > 0.0 && l < 30.0),
        "{line}"
    );
    assert_eq!(line["traceId"].as_str().map(str::len), Some(32), "{line}");

    // Switched off while running: no line; on again: lines again.
    p.configure(
        "config-observability",
        &[("logging.enable-request-log", "false")],
    )
    .unwrap();
    p.await_request_log(&rev, false);
    assert_eq!(t.get("/?while=off").unwrap().status, 200);
    p.configure(
        "config-observability",
        &[("logging.enable-request-log", "true")],
    )
    .unwrap();
    p.await_request_log(&rev, true);
    assert_eq!(t.get("/?while=on").unwrap().status, 200);
    eventually(
        "the line of the request after switching on",
        PATIENCE,
        || {
            request_log_lines(p, &rev)
                .iter()
                .any(|l| l["httpRequest"]["requestUrl"] == "/?while=on")
                .then_some(())
        },
    );
    let urls: Vec<String> = request_log_lines(p, &rev)
        .iter()
        .map(|l| {
            l["httpRequest"]["requestUrl"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(!urls.iter().any(|u| u.contains("off")), "{urls:?}");

    // A template Knative's language cannot run here is refused, with the reason.
    let err = p
        .configure(
            "config-observability",
            &[(
                "logging.request-log-template",
                "{{if .Request.Method}}x{{end}}",
            )],
        )
        .unwrap_err();
    assert!(
        err.contains("logging.request-log-template") && err.contains("is not supported"),
        "{err}"
    );
}

// --- autoscale_test.go: stepping up one instance at a time ---

/// Knative's upper bound on the instances for `want` instances' worth of load:
/// ⌈⌈want / TU⌉ × 1.1⌉.
fn max_instances(want: usize, tu: f64) -> i64 {
    (((want as f64 / tu).ceil()) * 1.1).ceil() as i64
}

/// Steps the load so the revision needs 1, 2, then 3 instances; each step must be reached in
/// time, never overshoot Knative's bound, and hold the SLO. `client_load(n)` gives the clients
/// and the pause between each client's requests for n instances' worth.
fn step_up(test: &str, metric: &[(&str, &str)], client_load: impl Fn(usize) -> (usize, Duration)) {
    let Some(p) = crate::platform(test, Needs::FastAutoscaler) else {
        return;
    };
    let p = &*p;
    let mut svc = Svc::new(test, Image::Autoscale)
        .annotation(
            "autoscaling.knative.dev/target-utilization-percentage",
            "70",
        )
        .annotation("autoscaling.knative.dev/min-scale", "1");
    for (k, v) in metric {
        svc = svc.annotation(k, v);
    }
    let t = svc.deploy(p);
    let rev = format!("{test}-00001");
    for want in 2..=3usize {
        let (clients, pause) = client_load(want);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut results = Vec::new();
        let mut peak = 0;
        // At least one round of load per step, then until the step is reached.
        loop {
            results.extend(paced(&t, clients, pause, Duration::from_secs(2)));
            peak = peak.max(actual_scale(p, &rev));
            if actual_scale(p, &rev) >= want as i64 || Instant::now() >= deadline {
                break;
            }
        }
        let now = actual_scale(p, &rev);
        assert!(
            now >= want as i64,
            "{want} instances not reached in 30 s (at {now})"
        );
        assert!(
            peak <= max_instances(want, 0.7),
            "{peak} instances for {want}"
        );
        assert_success_rate(&results, SLO);
    }
}

/// `clients` threads each sending `/?sleep=500` then pausing `pause`, for `duration`.
fn paced(t: &Target, clients: usize, pause: Duration, duration: Duration) -> Vec<(u16, String)> {
    let deadline = Instant::now() + duration;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let r = t.get("/?sleep=500");
                        out.push(r.map(|r| (r.status, r.body)).unwrap_or((0, String::new())));
                        // Pacing the request rate, not waiting for a condition.
                        std::thread::sleep(pause);
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn TestAutoscaleUpCountPods() {
    // Target 6 concurrent requests per instance at 70 %: n instances' worth is ⌈n × 4.2⌉ + 1.
    step_up(
        "count-pods",
        &[("autoscaling.knative.dev/target", "6")],
        |n| ((n as f64 * 4.2).ceil() as usize + 1, Duration::ZERO),
    );
}

#[test]
fn TestRPSBasedAutoscaleUpCountPods() {
    // Target 10 requests/s per instance at 70 %: n instances' worth is n × 7 + 3 req/s; each
    // client sends about one per second (500 ms answer + 500 ms pause).
    step_up(
        "rps-count-pods",
        &[
            ("autoscaling.knative.dev/metric", "rps"),
            ("autoscaling.knative.dev/target", "10"),
        ],
        |n| (n * 7 + 3, Duration::from_millis(500)),
    );
}

// --- test/scale: many services at once ---

#[test]
fn TestScaleToN_10() {
    let Some(p) = crate::platform("scaleton", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let names: Vec<String> = (0..10).map(|i| format!("scale-{i}")).collect();
    // Created together, then each must become Ready and serve (local SLO 1.0).
    for n in &names {
        p.apply(&Svc::new(n, Image::HelloWorld).yaml(p)).unwrap();
    }
    for n in &names {
        let svc = eventually("ready", PATIENCE, || {
            let s = p.get("ksvc", n)?;
            (condition(&s, "Ready")["status"] == "True").then_some(s)
        });
        let t = p.target(svc["status"]["url"].as_str().unwrap());
        let results = load(&t, "/", 2, 10, PATIENCE);
        assert_success_rate(&results, 1.0);
    }
}

// --- test/e2e/domainmapping ---

fn domain_mapping(domain: &str, kind: &str, name: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1beta1\nkind: DomainMapping\nmetadata:\n  name: {domain}\nspec:\n  ref:\n    kind: {kind}\n    name: {name}\n    apiVersion: serving.knative.dev/v1\n"
    )
}

#[test]
fn TestDomainMapping() {
    let Some(p) = crate::platform("domainmapping", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    Svc::new("dm-target", Image::HelloWorld).deploy(p);
    let domain = "dm-target.example.org";
    p.apply_ready(&domain_mapping(domain, "Service", "dm-target"));
    let dm = p.get("dm", domain).unwrap();
    let url = dm["status"]["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("http://{domain}"));
    assert_eq!(condition(&dm, "DomainClaimed")["status"], "True", "{dm}");
    let t = p.target(&url);
    let r = eventually("the domain served", PATIENCE, || {
        t.get("/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.body.trim(), HELLO);

    // The Service's Route is an Addressable as well.
    p.apply_ready(&domain_mapping(domain, "Route", "dm-target"));
    assert_eq!(t.get("/").unwrap().body.trim(), HELLO);

    p.delete("dm", domain).unwrap();
    eventually("the domain unknown", PATIENCE, || {
        (t.get("/").ok()?.status == 404).then_some(())
    });
}

/// Knative's `isTrafficClusterLocal`: the URL of the Route's traffic target `tag` is in the
/// cluster domain.
fn tag_is_cluster_local(route: &serde_json::Value, tag: &str) -> bool {
    let target = route["status"]["traffic"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["tag"] == tag).cloned())
        .unwrap_or_else(|| panic!("no traffic target tagged {tag}: {route}"));
    target["url"]
        .as_str()
        .is_some_and(|u| u.ends_with(".svc.cluster.local"))
}

/// Knative's `isRouteClusterLocal`: the Route's URL is in the cluster domain.
fn route_is_cluster_local(route: &serde_json::Value) -> bool {
    route["status"]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with(".svc.cluster.local"))
}

/// A Service `name` with `traffic`, labelled `networking.knative.dev/visibility:
/// cluster-local` when `local`.
fn subroute_service(p: &dyn Platform, name: &str, traffic: &str, local: bool) -> String {
    let yaml = Svc::new(name, Image::HelloWorld).traffic(traffic).yaml(p);
    if !local {
        return yaml;
    }
    yaml.replacen(
        &format!("metadata:\n  name: {name}\n"),
        &format!(
            "metadata:\n  name: {name}\n  labels:\n    networking.knative.dev/visibility: cluster-local\n"
        ),
        1,
    )
}

/// Labels the Kubernetes Service of Route `route`'s tag `tag` cluster-local, as a user would.
fn label_tag_cluster_local(p: &dyn Platform, tag: &str, route: &str) {
    p.label_service(
        &format!("{tag}-{route}"),
        "networking.knative.dev/visibility",
        Some("cluster-local"),
    )
    .unwrap();
}

/// Sets (or removes) the visibility label of Knative Service `name` (copied to its Route).
fn set_service_visibility(p: &dyn Platform, name: &str, local: bool) {
    let value = local.then_some("cluster-local");
    let patch = serde_json::json!({"metadata": {"labels": {
        "networking.knative.dev/visibility": value}}});
    p.write("PATCH", Some(name), &patch, false)
        .unwrap_or_else(|e| panic!("labelling {name}: {e:?}"));
}

#[test]
fn TestSubrouteVisibilityPublicToPrivate() {
    let Some(p) = crate::platform("subroute-pub-priv", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let name = "subroute-pp";
    p.apply_ready(&subroute_service(
        p,
        name,
        "  traffic:\n    - {tag: my-tag, percent: 100}\n",
        false,
    ));
    let route = p.get("rt", name).unwrap();
    assert!(!tag_is_cluster_local(&route, "my-tag"), "{route}");
    assert!(!route_is_cluster_local(&route), "{route}");

    // The tag's Service labelled cluster-local, and a second tag added.
    label_tag_cluster_local(p, "my-tag", name);
    p.apply(&subroute_service(
        p,
        name,
        "  traffic:\n    - {tag: my-tag, percent: 100}\n    - {tag: my-tag2, latestRevision: true}\n",
        false,
    ))
    .unwrap();
    eventually("my-tag cluster-local, my-tag2 public", PATIENCE, || {
        let r = p.get("rt", name)?;
        let has_both = r["status"]["traffic"]
            .as_array()
            .is_some_and(|t| t.len() == 2);
        (has_both && tag_is_cluster_local(&r, "my-tag") && !tag_is_cluster_local(&r, "my-tag2"))
            .then_some(())
    });

    // The whole Service made cluster-local: the Route and every tag follow.
    set_service_visibility(p, name, true);
    let route = eventually("the Route cluster-local", PATIENCE, || {
        p.get("rt", name).filter(route_is_cluster_local)
    });
    for tag in ["my-tag", "my-tag2"] {
        assert!(tag_is_cluster_local(&route, tag), "{tag}: {route}");
    }
}

#[test]
fn TestSubrouteVisibilityPrivateToPublic() {
    let Some(p) = crate::platform("subroute-priv-pub", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let name = "subroute-ppub";
    p.apply_ready(&subroute_service(
        p,
        name,
        "  traffic:\n    - {tag: my-tag, percent: 50}\n    - {tag: my-tag2, percent: 50}\n",
        true,
    ));
    let route = p.get("rt", name).unwrap();
    for tag in ["my-tag", "my-tag2"] {
        assert!(tag_is_cluster_local(&route, tag), "{tag}: {route}");
    }
    assert!(route_is_cluster_local(&route), "{route}");

    // my-tag's Service labelled too: both tags stay cluster-local (checked for 5 s).
    label_tag_cluster_local(p, "my-tag", name);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let r = p.get("rt", name).unwrap();
        for tag in ["my-tag", "my-tag2"] {
            assert!(tag_is_cluster_local(&r, tag), "{tag}: {r}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // The Service made public: the Route and my-tag2 follow, my-tag stays cluster-local
    // (its own Service's label).
    set_service_visibility(p, name, false);
    // (The URLs are written together: one status shows both.)
    let route = eventually("the Route and my-tag2 public", PATIENCE, || {
        p.get("rt", name)
            .filter(|r| !route_is_cluster_local(r) && !tag_is_cluster_local(r, "my-tag2"))
    });
    assert!(tag_is_cluster_local(&route, "my-tag"), "{route}");
}

/// Knative's TestSubrouteLocalSTS: a cluster-local Service's tag is served at its
/// cluster-local host (`{tag}-{route}.{ns}.svc.cluster.local`, the tag prefixed to the Route's
/// address) and not at the external one. Knative calls it from a pod, also by the shorter
/// `.svc` and `{ns}` forms; here the request goes to the gateway with that Host (the shorter
/// forms are the Ingress rule's on Kubernetes, see rouse-kube's tests).
#[test]
fn TestSubrouteLocalSTS() {
    let Some(p) = crate::platform("subroute-local-sts", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let name = "subroute-sts";
    p.apply_ready(&subroute_service(
        p,
        name,
        "  traffic:\n    - {tag: current, percent: 100}\n",
        true,
    ));
    let route = p.get("rt", name).unwrap();
    let address = route["status"]["address"]["url"].as_str().unwrap();
    let ns = p.namespace();
    assert_eq!(address, format!("http://{name}.{ns}.svc.cluster.local"));
    assert!(route_is_cluster_local(&route), "{route}");
    let local = address.replacen("http://", "http://current-", 1);
    let t = p.target(&local);
    let r = eventually("the tag at its cluster-local host", PATIENCE, || {
        t.get("/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.body.trim(), HELLO);
    let external = p.target(&format!("http://current-{name}.{ns}.{}", p.domain()));
    assert_eq!(external.get("/").unwrap().status, 404);
}
