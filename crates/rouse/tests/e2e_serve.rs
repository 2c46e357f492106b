//! Deploy and serve, end to end: the real `rouse serve`, the real CLI, real processes.

mod common;

use common::*;
use std::time::Duration;

const HELLO: &str = "Hello World! How about some tasty noodles?";

#[test]
fn service_lifecycle_revisions_env_and_cascade() {
    let p = Platform::start();
    let marker = unique_marker("lifecycle");
    p.apply_wait(&service_yaml("hello", &marker, &[]));

    // Served by Host at once after --wait.
    let r = p.http_get("hello.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), HELLO);
    // The port is ignored when matching the Host.
    let r = p.http_get("Hello.Default.Localhost:8080", "/").unwrap();
    assert_eq!(r.status, 200);

    // The app sees PORT and the K_* variables.
    let r = p.http_get("hello.default.localhost", "/env").unwrap();
    let env: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(env["K_SERVICE"], "hello");
    assert_eq!(env["K_CONFIGURATION"], "hello");
    assert_eq!(env["K_REVISION"], "hello-00001");
    assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());

    let svc = p.get_json("ksvc", "hello").unwrap();
    assert_eq!(svc["status"]["url"], "http://hello.default.localhost");
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    assert_eq!(svc["status"]["traffic"][0]["revisionName"], "hello-00001");
    assert_eq!(svc["status"]["traffic"][0]["percent"], 100);

    // An update makes revision 2 and moves the traffic.
    p.apply_wait(&service_yaml("hello", &marker, &[("MESSAGE", "second")]));
    let r = eventually("traffic on revision 2", PATIENCE, || {
        let r = p.http_get("hello.default.localhost", "/").ok()?;
        (r.body.trim() == "second").then_some(r)
    });
    assert_eq!(r.status, 200);
    let svc = p.get_json("ksvc", "hello").unwrap();
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "hello-00002");
    assert_eq!(svc["status"]["observedGeneration"], 2);
    let revs = p.cli_ok(&["get", "revisions"]);
    assert!(
        revs.contains("hello-00001") && revs.contains("hello-00002"),
        "{revs}"
    );
    let table = p.cli_ok(&["get", "ksvc"]);
    assert!(table.contains("http://hello.default.localhost"), "{table}");

    // Applying the same manifest again changes nothing.
    p.apply_wait(&service_yaml("hello", &marker, &[("MESSAGE", "second")]));
    let svc = p.get_json("ksvc", "hello").unwrap();
    assert_eq!(svc["metadata"]["generation"], 2);

    // Delete cascades: children gone, host unknown, processes gone.
    assert!(!pids_with_env(&marker).is_empty());
    p.cli_ok(&["delete", "ksvc", "hello"]);
    for kind in ["configuration", "route", "revision", "kpa", "sks"] {
        eventually(&format!("{kind} deleted"), PATIENCE, || {
            p.get_json(kind, "hello").is_none().then_some(())
        });
    }
    assert!(p.get_json("revision", "hello-00001").is_none());
    eventually("host unknown", PATIENCE, || {
        (p.http_get("hello.default.localhost", "/").ok()?.status == 404).then_some(())
    });
    eventually("instances stopped", PATIENCE, || {
        pids_with_env(&marker).is_empty().then_some(())
    });
    let r = p.http_get("nothing.default.localhost", "/").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn byo_names_and_split_with_tags() {
    let p = Platform::start();
    let marker = unique_marker("split");
    let app = testapp_bin();
    let (mk, mv) = marker.split_once('=').unwrap();
    let manifest = |rev: &str, msg: &str, traffic: &str| {
        format!(
            r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: blue-green
spec:
  template:
    metadata:
      name: {rev}
    spec:
      containers:
        - command: ["{app}"]
          env:
            - {{name: MESSAGE, value: "{msg}"}}
            - {{name: {mk}, value: "{mv}"}}
{traffic}"#,
            app = app.display()
        )
    };
    p.apply_wait(&manifest("blue-green-blue", "blue", ""));
    let svc = p.get_json("ksvc", "blue-green").unwrap();
    assert_eq!(svc["status"]["latestReadyRevisionName"], "blue-green-blue");

    let traffic = r#"  traffic:
    - revisionName: blue-green-blue
      percent: 50
      tag: blue
    - revisionName: blue-green-green
      percent: 50
      tag: green
"#;
    p.apply_wait(&manifest("blue-green-green", "green", traffic));

    let svc = p.get_json("ksvc", "blue-green").unwrap();
    let urls: Vec<String> = svc["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        urls.contains(&"http://blue-blue-green.default.localhost".to_string()),
        "{urls:?}"
    );
    assert!(
        urls.contains(&"http://green-blue-green.default.localhost".to_string()),
        "{urls:?}"
    );

    // Each side gets a fair share on the main host (Knative's MinSplitPercentage 0.25).
    let (mut blue, mut green) = (0, 0);
    for _ in 0..200 {
        let r = p.http_get("blue-green.default.localhost", "/").unwrap();
        assert_eq!(r.status, 200);
        match r.body.trim() {
            "blue" => blue += 1,
            "green" => green += 1,
            other => panic!("unexpected body {other}"),
        }
    }
    assert!(blue >= 50 && green >= 50, "blue {blue} green {green}");
    // Each tag host reaches only its revision.
    for _ in 0..20 {
        let r = p
            .http_get("blue-blue-green.default.localhost", "/")
            .unwrap();
        assert_eq!(r.body.trim(), "blue");
        let r = p
            .http_get("green-blue-green.default.localhost", "/")
            .unwrap();
        assert_eq!(r.body.trim(), "green");
    }
    // The address is the cluster-local host (as Knative's), which the gateway serves too, as
    // it does each tag's.
    assert_eq!(
        svc["status"]["address"]["url"],
        "http://blue-green.default.svc.cluster.local"
    );
    assert_eq!(svc["status"]["url"], "http://blue-green.default.localhost");
    let r = p
        .http_get("blue-green.default.svc.cluster.local", "/")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = p
        .http_get("green-blue-green.default.svc.cluster.local", "/")
        .unwrap();
    assert_eq!(r.body.trim(), "green");

    // Changing the template without changing its BYO name is refused.
    let out = p.apply(&manifest("blue-green-green", "changed", traffic), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Saw the following changes without a name change"),
        "{err}"
    );
}

#[test]
fn failing_workloads_get_conditions_and_others_keep_serving() {
    let p = Platform::start();
    let marker = unique_marker("failing");
    p.apply_wait(&service_yaml("good", &marker, &[]));

    // A program that does not exist.
    let missing = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: missing
spec:
  template:
    spec:
      containers:
        - command: ["/nonexistent/program"]
"#;
    let out = p.apply(missing, &["--wait", "--timeout", "60s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/program"), "{err}");
    let rev = p.get_json("revision", "missing-00001").unwrap();
    let cond = find_condition(&rev, "ContainerHealthy");
    assert_eq!(cond["status"], "False", "{rev}");

    // An app that exits at once with code 3.
    let exiting = format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: exiting
spec:
  template:
    spec:
      containers:
        - command: ["{}"]
          args: ["--print", "boom: cannot start", "--exit-immediately", "3"]
"#,
        testapp_bin().display()
    );
    let out = p.apply(&exiting, &["--wait", "--timeout", "60s"]);
    assert!(!out.status.success());
    let rev = eventually("exit code surfaced", PATIENCE, || {
        let rev = p.get_json("revision", "exiting-00001")?;
        (find_condition(&rev, "ContainerHealthy")["reason"] == "ExitCode3").then_some(rev)
    });
    let msg = find_condition(&rev, "ContainerHealthy")["message"].to_string();
    assert!(msg.contains("boom: cannot start"), "{msg}");
    let svc = p.get_json("ksvc", "exiting").unwrap();
    assert_eq!(find_condition(&svc, "Ready")["status"], "False", "{svc}");

    // An image-only container runs as a Docker container; one that cannot be found or
    // pulled (no registry here, or no Docker) fails with Knative's message.
    let image_only = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: image-only
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
"#;
    let out = p.apply(image_only, &["--wait", "--timeout", "90s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unable to fetch image"), "{err}");

    // The good service is unaffected.
    let r = p.http_get("good.default.localhost", "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), HELLO);
}

#[test]
fn restart_keeps_state_and_kill9_loses_nothing_acknowledged() {
    let mut p = Platform::start();
    let marker = unique_marker("restart");
    p.apply_wait(&service_yaml("keep", &marker, &[]));

    // Graceful stop: exit 0 and no instance left.
    let st = p.stop();
    assert!(st.success(), "{st:?}");
    eventually("instances gone after stop", PATIENCE, || {
        pids_with_env(&marker).is_empty().then_some(())
    });
    p.restart();
    eventually("served again after restart", PATIENCE, || {
        let r = p.http_get("keep.default.localhost", "/").ok()?;
        (r.status == 200).then_some(())
    });

    // A burst of applies, then kill -9: everything acknowledged survives, no orphans.
    let mut acknowledged = Vec::new();
    for i in 0..8 {
        let name = format!("burst-{i}");
        let out = p.apply(&service_yaml(&name, &marker, &[]), &[]);
        if out.status.success() {
            acknowledged.push(name);
        }
    }
    assert_eq!(acknowledged.len(), 8);
    eventually("some burst instance running", PATIENCE, || {
        (pids_with_env(&marker).len() > 1).then_some(())
    });
    p.kill9();
    eventually("no orphan after kill -9", PATIENCE, || {
        pids_with_env(&marker).is_empty().then_some(())
    });
    p.restart();
    for name in &acknowledged {
        assert!(p.get_json("ksvc", name).is_some(), "{name} lost");
    }
    eventually(
        "burst-7 served after restart",
        Duration::from_secs(90),
        || {
            let r = p.http_get("burst-7.default.localhost", "/").ok()?;
            (r.status == 200).then_some(())
        },
    );
}

fn find_condition(obj: &serde_json::Value, type_: &str) -> serde_json::Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn invalid_config_stops_startup_with_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("autoscaler.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\ndata:\n  stable-window: \"banana\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(rouse_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stable-window"), "{err}");
    assert!(err.contains("config-autoscaler"), "{err}");

    // A valid Knative ConfigMap file is accepted unchanged (with its _example block).
    std::fs::write(
        &cfg,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\ndata:\n  _example: |\n    stable-window: \"60s\"\n  stable-window: \"30s\"\n  container-concurrency-target-default: \"50\"\n",
    )
    .unwrap();
    let p = Platform::start_with(&["--config", cfg.to_str().unwrap()]);
    let out = p.cli_ok(&["get", "ksvc"]);
    assert!(
        out.contains("No") || out.is_empty() || out.contains("NAME"),
        "{out}"
    );
}

/// The new revision's share of a gradual rollout in a service's status (None: not two
/// targets, i.e. not mid-rollout).
fn rollout_share(p: &Platform, name: &str) -> Option<i64> {
    let s = p.get_json("ksvc", name)?;
    match s["status"]["traffic"].as_array()?.as_slice() {
        [_, new] => new["percent"].as_i64(),
        _ => None,
    }
}

#[test]
fn gradual_rollout_from_config_network_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config-network.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-network\n  namespace: knative-serving\ndata:\n  rollout-duration: \"40\"\n",
    )
    .unwrap();
    let mut p = Platform::start_with(&["--config", cfg.to_str().unwrap()]);
    let marker = unique_marker("rollout-restart");
    p.apply_wait(&service_yaml("roll", &marker, &[("MESSAGE", "v1")]));
    let out = p.apply(&service_yaml("roll", &marker, &[("MESSAGE", "v2")]), &[]);
    assert!(out.status.success(), "{out:?}");

    // Mid-way (40 s in steps of about 3 % a second), stop, and start again on the same data.
    let before = eventually("the rollout under way", PATIENCE, || {
        rollout_share(&p, "roll").filter(|b| *b >= 10)
    });
    assert!(before < 60, "{before}");
    assert!(p.stop().success());
    p.restart();

    // The rollout goes on from where it was: neither back to 1 % nor straight to 100 % (a
    // step written just before the stop may be lost: the platform's own writes are relaxed).
    let after = eventually("the split after restart", PATIENCE, || {
        let s = p.get_json("ksvc", "roll")?;
        let n = s["status"]["traffic"].as_array()?.len();
        Some((n, rollout_share(&p, "roll")))
    });
    assert!(
        after.0 == 2 && after.1.is_some_and(|a| a > 1 && a < 100),
        "before the restart the new revision had {before} %, after: {after:?}"
    );
    eventually("the rollout finishes", Duration::from_secs(90), || {
        let s = p.get_json("ksvc", "roll")?;
        (find_condition(&s, "Ready")["status"] == "True").then_some(())?;
        let traffic = s["status"]["traffic"].as_array()?.clone();
        assert_eq!(traffic.len(), 1, "{traffic:?}");
        assert_eq!(traffic[0]["percent"], 100);
        Some(())
    });
    let r = p.http_get("roll.default.localhost", "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, "v2"));
}

/// A Service manifest labelled `labels` (the Route gets them too).
fn labelled(manifest: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let mut meta = format!("metadata:\n  name: {name}\n  labels:\n");
    for (k, v) in labels {
        meta.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    manifest.replacen(&format!("metadata:\n  name: {name}\n"), &meta, 1)
}

/// Writes config-domain through the API; returns the response.
fn put_config_domain(p: &Platform, data: serde_json::Value) -> HttpResponse {
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "config-domain", "namespace": "knative-serving"},
        "data": data,
    });
    api_request(
        p,
        "PUT",
        "/api/v1/namespaces/knative-serving/configmaps/config-domain",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
    .unwrap()
}

#[test]
fn config_domain_chooses_a_routes_domain_by_its_labels_live() {
    // config-domain names a domain for `app: prod` only: other routes are cluster-local (no
    // key has an empty value: Knative's default, `svc.cluster.local`), served at that host.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config-domain.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-domain\n  namespace: knative-serving\ndata:\n  prod.example.org: |\n    selector:\n      app: prod\n",
    )
    .unwrap();
    let p = Platform::start_with(&["--config", cfg.to_str().unwrap()]);
    let marker = unique_marker("config-domain");
    p.apply_wait(&service_yaml("plain", &marker, &[]));
    p.apply_wait(&labelled(
        &service_yaml("shop", &marker, &[]),
        "shop",
        &[("app", "prod")],
    ));
    let url = |name: &str| p.get_json("ksvc", name).unwrap()["status"]["url"].clone();
    assert_eq!(url("plain"), "http://plain.default.svc.cluster.local");
    assert_eq!(url("shop"), "http://shop.default.prod.example.org");
    let r = p.http_get("shop.default.prod.example.org", "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO), "{r:?}");
    assert_eq!(
        p.http_get("shop.default.localhost", "/").unwrap().status,
        404
    );
    let r = p.http_get("plain.default.svc.cluster.local", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        p.http_get("plain.default.localhost", "/").unwrap().status,
        404
    );

    // An invalid change is refused, naming the key; the running config stays.
    let r = put_config_domain(&p, serde_json::json!({"Shop.Example.org": ""}));
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("config-domain: Shop.Example.org:"), "{r:?}");

    // A new default for every route, and the prod routes moved: in effect without a restart.
    let r = put_config_domain(
        &p,
        serde_json::json!({
            "example.net": "",
            "live.example.org": "selector:\n  app: prod\n",
        }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    eventually("the routes' new URLs", PATIENCE, || {
        (url("shop") == "http://shop.default.live.example.org"
            && url("plain") == "http://plain.default.example.net")
            .then_some(())
    });
    let r = p.http_get("shop.default.live.example.org", "/").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, HELLO), "{r:?}");
    let r = p.http_get("plain.default.example.net", "/").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        p.http_get("shop.default.prod.example.org", "/")
            .unwrap()
            .status,
        404
    );
}
