//! Knative's `test/conformance/runtime` cases (reference §8.2).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::platform::*;

fn runtime_info(t: &Target) -> Value {
    let r = t.get("/runtime").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn TestCmdArgsService() {
    let Some(p) = crate::platform("cmdargs", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // The command is the test program; args are honoured verbatim.
    let t = Svc::new("cmd-args", Image::Runtime)
        .args(&["--print", "arg with spaces", "--print", "$(NOT_EXPANDED_X)"])
        .deploy(p);
    let info = runtime_info(&t);
    let args: Vec<&str> = info["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(
        &args[1..],
        ["--print", "arg with spaces", "--print", "$(NOT_EXPANDED_X)"],
        "{info}"
    );
}

#[test]
fn TestMustEnvVars() {
    let Some(p) = crate::platform("mustenvvars", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("must-env-vars", Image::Runtime).deploy(p);
    let env = &runtime_info(&t)["env"];
    // MUST: PORT, the port the app listens on (requests reach it there).
    assert!(
        env["PORT"].as_str().unwrap().parse::<u16>().is_ok(),
        "{env}"
    );
}

#[test]
fn TestShouldEnvVars() {
    let Some(p) = crate::platform("envvars", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("env-vars", Image::Runtime).deploy(p);
    let env = &runtime_info(&t)["env"];
    // MUST: PORT. SHOULD: K_SERVICE, K_CONFIGURATION, K_REVISION.
    assert!(
        env["PORT"].as_str().unwrap().parse::<u16>().is_ok(),
        "{env}"
    );
    assert_eq!(env["K_SERVICE"], "env-vars");
    assert_eq!(env["K_CONFIGURATION"], "env-vars");
    assert_eq!(env["K_REVISION"], "env-vars-00001");
}

#[test]
fn TestShouldHaveStdinEOF() {
    let Some(p) = crate::platform("stdin", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("stdin-eof", Image::Runtime).deploy(p);
    assert_eq!(runtime_info(&t)["stdin"], "eof");
}

#[test]
fn TestMustHaveFiles() {
    let Some(p) = crate::platform("files", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("files", Image::Runtime).deploy(p);
    let info = runtime_info(&t);
    for dir in ["/tmp", "/dev/fd", "/proc", "/proc/self"] {
        assert_eq!(info["paths"][dir]["dir"], true, "{dir}: {info}");
    }
    for file in ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"] {
        assert_eq!(info["paths"][file]["exists"], true, "{file}: {info}");
    }
    assert_eq!(info["tmp_writable"], true, "/tmp is writable");
}

#[test]
fn TestMustHaveHeaders() {
    let Some(p) = crate::platform("headers", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("headers", Image::Runtime).deploy(p);
    let mut s = std::net::TcpStream::connect(t.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /headers HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-User-Header: kept\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
        t.host
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    let json_start = body.find('{').unwrap();
    let json_end = body.rfind('}').unwrap();
    let v: Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    let h = &v["headers"];
    // MUST: Host as sent, RFC 7239 Forwarded.
    assert_eq!(v["host"], t.host.as_str(), "{v}");
    let fwd = h["forwarded"].as_str().unwrap_or("");
    assert!(fwd.contains("for=") && fwd.contains("proto=http"), "{v}");
    // SHOULD: user headers, X-Forwarded-Proto, X-Forwarded-For (an IP list), traceparent.
    assert_eq!(h["x-user-header"], "kept");
    assert_eq!(h["x-forwarded-proto"], "http");
    let xff = h["x-forwarded-for"].as_str().unwrap_or("");
    assert!(
        xff.split(',')
            .all(|ip| ip.trim().parse::<std::net::IpAddr>().is_ok()),
        "{xff}"
    );
    assert!(
        h["traceparent"]
            .as_str()
            .unwrap_or("")
            .contains("0af7651916cd43dd8448eb211c80319c"),
        "{v}"
    );
}

#[test]
fn TestLivenessWithFail() {
    let Some(p) = crate::platform("liveness", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let t = Svc::new("liveness", Image::Readiness)
        .container_fields("          livenessProbe:\n            httpGet: {path: /readyz}\n            initialDelaySeconds: 1\n            periodSeconds: 1\n            failureThreshold: 3\n")
        .deploy(p);
    let pid = t.get("/whoami").unwrap().body.trim().to_string();
    // The probe starts failing: the container is restarted (a new process serves).
    let r = t.get("/start-failing").unwrap();
    assert_eq!(r.status, 200);
    eventually("restarted after liveness failed", PATIENCE, || {
        let r = t.get("/whoami").ok()?;
        (r.status == 200 && r.body.trim() != pid).then_some(())
    });
}

#[test]
fn TestProtocols() {
    let Some(p) = crate::platform("protocols", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // Port name h2c: the app gets HTTP/2.
    let t = Svc::new("proto-h2c", Image::HelloHttp2)
        .args(&["--h2c"])
        .container_fields("          ports:\n            - {name: h2c, containerPort: 8080}\n")
        .deploy(p);
    let v: Value = serde_json::from_str(&t.get("/headers").unwrap().body).unwrap();
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    // http1 or no name: HTTP/1.1.
    for (name, ports) in [
        (
            "proto-http1",
            "          ports:\n            - {name: http1, containerPort: 8080}\n",
        ),
        ("proto-empty", ""),
    ] {
        let t = Svc::new(name, Image::Runtime)
            .container_fields(ports)
            .deploy(p);
        let v: Value = serde_json::from_str(&t.get("/headers").unwrap().body).unwrap();
        assert_eq!(v["version"], "HTTP/1.1", "{name}: {v}");
    }
}

#[test]
fn TestProbeRuntime() {
    let Some(p) = crate::platform("proberuntime", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let probes = [
        ("httpget", "httpGet: {path: /readyz}"),
        ("tcp", "tcpSocket: {port: 8080}"),
        ("exec", "exec: {command: [\"/bin/true\"]}"),
    ];
    for (kind, handler) in probes {
        for period in [0, 1] {
            let name = format!("probe-{kind}-{period}");
            let t = Svc::new(&name, Image::Readiness)
                .container_fields(&format!(
                    "          readinessProbe:\n            {handler}\n            periodSeconds: {period}\n"
                ))
                .deploy(p);
            let r = t.get("/").unwrap();
            assert_eq!(r.status, 200, "{name}: {r:?}");
        }
    }
}

/// Which instances answer the next `n` requests (their process ids).
fn answering(t: &Target, n: usize) -> Vec<String> {
    (0..n)
        .filter_map(|_| t.get("/whoami").ok().filter(|r| r.status == 200))
        .map(|r| r.body.trim().to_string())
        .collect()
}

/// Knative's TestProbeRuntimeAfterStartup in one SKS mode (`target-burst-capacity` 0 keeps
/// the revision in Serve, -1 in Proxy).
fn probe_after_startup(test: &str, tbc: &str, mode: &str) {
    let Some(p) = crate::platform(test, Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let name = format!("after-startup-{}", mode.to_lowercase());
    let t = Svc::new(&name, Image::Readiness)
        .annotation("autoscaling.knative.dev/min-scale", "2")
        .annotation("autoscaling.knative.dev/target-burst-capacity", tbc)
        .container_fields("          readinessProbe:\n            httpGet: {path: \"/readyz?probe=1\"}\n            periodSeconds: 1\n            failureThreshold: 1\n")
        .deploy(p);
    let rev = format!("{name}-00001");
    eventually("both instances serve", PATIENCE, || {
        let seen: BTreeSet<_> = answering(&t, 20).into_iter().collect();
        (seen.len() == 2).then_some(())
    });
    eventually(&format!("the SKS in {mode} mode"), PATIENCE, || {
        (p.get("sks", &rev)?["spec"]["mode"] == mode).then_some(())
    });

    // One instance's readiness starts failing (for 20 s, then it passes again by itself).
    let started = Instant::now();
    let r = t.get("/start-failing?restore-after=20000").unwrap();
    let failing = r
        .body
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("pid=")
        .to_string();
    // Within periodSeconds × failureThreshold (1 s; 6 s allowed on a loaded machine) no new
    // request reaches it.
    eventually(
        "the failing instance is out of the endpoints",
        Duration::from_secs(15),
        || {
            answering(&t, 20)
                .iter()
                .all(|pid| *pid != failing)
                .then_some(())
        },
    );
    let took = started.elapsed();
    println!("{mode}: the failing instance left the endpoints within {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let after = answering(&t, 60);
    assert_eq!(
        after.len(),
        60,
        "every request is served by the other instance"
    );
    assert!(after.iter().all(|pid| *pid != failing), "{after:?}");
    // It passes again: it gets requests again.
    eventually("the instance is back", Duration::from_secs(45), || {
        answering(&t, 20).contains(&failing).then_some(())
    });
}

#[test]
fn TestProbeRuntimeAfterStartup_Serve() {
    probe_after_startup("afterstartup-serve", "0", "Serve");
}

#[test]
fn TestProbeRuntimeAfterStartup_Proxy() {
    probe_after_startup("afterstartup-proxy", "-1", "Proxy");
}

#[test]
fn TestWorkingDirService() {
    let Some(p) = crate::platform("workingdir", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // A directory every platform's workload has.
    let wd = "/tmp";
    let t = Svc::new("working-dir", Image::Runtime)
        .container_fields(&format!("          workingDir: {wd:?}\n"))
        .deploy(p);
    assert_eq!(runtime_info(&t)["cwd"], wd);
}

#[test]
fn TestMustNotContainerConstraints() {
    let Some(p) = crate::platform("mustnot", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // Fields a Knative container MUST NOT set are refused with the field named.
    let cases = [
        (
            "lifecycle",
            "          lifecycle:\n            preStop:\n              exec: {command: [\"/bin/true\"]}\n",
            "lifecycle",
        ),
        (
            "two-ports",
            "          ports:\n            - {containerPort: 8080}\n            - {containerPort: 8081}\n",
            "ports",
        ),
        ("stdin", "          stdin: true\n", "stdin"),
    ];
    for (name, fields, path) in cases {
        let yaml = Svc::new(&format!("mustnot-{name}"), Image::Runtime)
            .container_fields(fields)
            .yaml(p);
        let err = p.apply(&yaml).expect_err(name);
        assert!(err.contains(path), "{name}: {err}");
    }
}

#[test]
fn TestShouldNotContainerConstraints() {
    let Some(p) = crate::platform("shouldnot", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // Fields a Knative container SHOULD NOT set are refused too, each with its reason.
    let cases = [
        (
            "hostport",
            "          ports:\n            - {containerPort: 8080, hostPort: 80}\n",
            "hostPort",
        ),
        (
            "reserved",
            "          ports:\n            - {containerPort: 8012}\n",
            "reserved port",
        ),
        (
            "portname",
            "          ports:\n            - {name: grpc, containerPort: 8080}\n",
            "Port name grpc is not allowed",
        ),
        (
            "udp",
            "          ports:\n            - {containerPort: 8080, protocol: UDP}\n",
            "protocol",
        ),
    ];
    for (name, fields, reason) in cases {
        let yaml = Svc::new(&format!("shouldnot-{name}"), Image::Runtime)
            .container_fields(fields)
            .yaml(p);
        let err = p.apply(&yaml).expect_err(name);
        assert!(err.contains(reason), "{name}: {err}");
    }
}

// --- envpropagation_test.go, user_test.go: cases that need pods (Kubernetes only) ---

/// Knative's envpropagation cases: one key of a ConfigMap (or Secret) through `valueFrom`,
/// all of it through `envFrom`.
fn env_propagation(test: &str, object: &str) {
    let Some(p) = crate::platform(test, Needs::Defaults) else {
        return;
    };
    let p = &*p;
    let (data, key_ref, from_ref) = match object {
        "ConfigMap" => ("data", "configMapKeyRef", "configMapRef"),
        _ => ("stringData", "secretKeyRef", "secretRef"),
    };
    p.apply(&format!(
        "apiVersion: v1\nkind: {object}\nmetadata:\n  name: conformance-env\n{data}:\n  ENV_KEY: env-value\n  OTHER_KEY: other-value\n"
    ))
    .expect("the object");
    let t = Svc::new(test, Image::Runtime)
        .container_fields(&format!(
            "            - name: FROM_KEY\n              valueFrom:\n                {key_ref}: {{name: conformance-env, key: ENV_KEY}}\n          envFrom:\n            - {from_ref}: {{name: conformance-env}}\n"
        ))
        .deploy(p);
    let env = &runtime_info(&t)["env"];
    assert_eq!(env["FROM_KEY"], "env-value", "{env}");
    assert_eq!(env["OTHER_KEY"], "other-value", "{env}");
}

#[test]
fn TestConfigsViaEnv() {
    env_propagation("configs-via-env", "ConfigMap");
}

#[test]
fn TestSecretsViaEnv() {
    env_propagation("secrets-via-env", "Secret");
}

#[test]
fn TestMustRunAsUser() {
    let Some(p) = crate::platform("runasuser", Needs::Defaults) else {
        return;
    };
    let p = &*p;
    // Knative's user_test: the container's securityContext runAsUser is the process' uid.
    let t = Svc::new("run-as-user", Image::Runtime)
        .container_fields("          securityContext:\n            runAsUser: 2020\n")
        .deploy(p);
    assert_eq!(runtime_info(&t)["uid"], 2020);
}
