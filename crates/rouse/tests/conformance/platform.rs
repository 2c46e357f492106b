//! What a conformance case needs from a platform, and its local implementation.
//!
//! The cases are written against [`Platform`] only: apply a manifest, read and delete objects,
//! turn a status URL into an address and Host to send requests to, and describe a container
//! playing one of Knative's test images. [`Local`] runs them against a real `rouse serve`
//! (ephemeral ports, its own data dir); a Kubernetes e2e suite implements the same trait
//! (kubectl/the API server, the ingress address, the test images by name) and reuses the cases:
//! its test target includes the same case files (`api_v1.rs`, `runtime.rs`, `e2e.rs`) and
//! defines the crate-level `platform(test, needs)` they call for its cluster, which answers
//! `None` for a case that does not apply there (the case then passes without running).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;

/// How long a case waits for a condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Where to send requests for a URL: the address to connect to and the Host to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    /// One GET (HTTP/1.1, Connection: close).
    pub fn get(&self, path: &str) -> std::io::Result<common::HttpResponse> {
        common::http_get(self.addr, &self.host, path)
    }

    /// One GET (HTTP/1.1, Connection: close) with extra request headers.
    pub fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<common::HttpResponse> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: rouse-e2e\r\n",
            self.host
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        common::raw_exchange(self.addr, req.as_bytes())
    }

    /// One GET read as raw bytes until the server closes (a body cut off mid-way is kept as
    /// received); the status and the raw text.
    pub fn get_raw(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}

/// Knative's test images (reference §8.4); one workload plays all of them, a Kubernetes
/// platform maps each to its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Image {
    HelloWorld,
    Autoscale,
    Timeout,
    WsServer,
    GrpcPing,
    Runtime,
    SingleThreaded,
    Readiness,
    Failing,
    SlowStart,
    HelloHttp2,
    PizzaPlanet,
}

/// What a case needs of the platform's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Knative's defaults.
    Defaults,
    /// Knative's shortest autoscaler windows (stable window 6 s, scale-to-zero grace 1 s,
    /// zero initial scale allowed), so scaling cases finish in seconds.
    FastAutoscaler,
}

/// The platform a conformance case runs on.
pub trait Platform {
    /// Applies a manifest (create or update); the CLI's output, or its error.
    fn apply(&self, manifest: &str) -> Result<String, String>;
    /// Applies a manifest and waits until its objects are Ready.
    fn apply_ready(&self, manifest: &str) -> String;
    /// One object as JSON (`kind` as the CLI names it: ksvc, config, rev, rt, kpa, sks).
    fn get(&self, kind: &str, name: &str) -> Option<Value>;
    /// The namespace's objects of a kind.
    fn list(&self, kind: &str) -> Vec<Value>;
    /// Deletes an object (and what it owns).
    fn delete(&self, kind: &str, name: &str) -> Result<(), String>;
    /// Where requests for a route's URL (`http://host`) go.
    fn target(&self, url: &str) -> Target;
    /// The container (a `- ` list item, 8 spaces in) running `image` with `args`, ending with
    /// an `env:` list (the case's variables follow at 12 spaces, then other container fields
    /// at 10).
    fn container(&self, image: Image, args: &[&str]) -> String;
    /// Instances of a revision whose process is alive now (pods on Kubernetes).
    fn live_instances(&self, revision: &str) -> usize;
    /// Sets keys of one of Knative's ConfigMaps (`config-features`, ...) while running,
    /// failing the test when the platform refuses them.
    fn set_config(&self, configmap: &str, data: &[(&str, &str)]) {
        if let Err(e) = self.configure(configmap, data) {
            panic!("setting {configmap}: {e}");
        }
    }
    /// One write through the API as a client sends it, for a Knative Service: `POST`
    /// (create; `name` None), `PUT` (replace) or `PATCH` (a JSON merge patch); `dry_run` asks
    /// the server to admit it and answer without storing anything. The object the server
    /// answered, or its status code and message.
    fn write(
        &self,
        method: &str,
        name: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, (u16, String)>;
    /// Sets keys of one of Knative's ConfigMaps in `knative-serving`, taking effect while
    /// the platform runs.
    fn configure(&self, configmap: &str, data: &[(&str, &str)]) -> Result<(), String>;
    /// What a revision's instances logged, the queue-proxy's lines included (the pods'
    /// `queue-proxy` containers on Kubernetes).
    fn logs(&self, revision: &str) -> String;
    /// Waits until every instance of the revision logs requests (`on`) or does not. Locally
    /// the queue-proxies follow `config-observability` live, so nothing to wait for; on
    /// Kubernetes the sidecar reads it at start (`OBSERVABILITY_CONFIG`), so a change rolls
    /// the revision's pods.
    fn await_request_log(&self, _revision: &str, _on: bool) {}
    /// A container (a `- ` list item, 8 spaces in) that cannot start, its problem named
    /// `/nonexistent/program`: locally a program that does not exist; on Kubernetes, as in
    /// Knative's case, an image that cannot be pulled.
    fn unstartable_container(&self) -> String {
        "        - command: [\"/nonexistent/program\"]\n".into()
    }
    /// Sets (`Some`) or removes (`None`) label `key` of the Kubernetes Service `name` in the
    /// case's namespace (a Route's cluster-local Service); local mode has no such Services.
    fn label_service(&self, name: &str, key: &str, _value: Option<&str>) -> Result<(), String> {
        Err(format!(
            "no Kubernetes Service {name:?} to label {key:?} here"
        ))
    }
    /// The namespace a manifest without one goes to.
    fn namespace(&self) -> String {
        "default".into()
    }
    /// A second namespace, for the cases that need two.
    fn other_namespace(&self) -> String {
        "alternate".into()
    }
    /// The domain Routes are served under (`{name}.{namespace}.{domain}`).
    fn domain(&self) -> String {
        "localhost".into()
    }
}

/// `rouse serve` on this machine.
pub struct Local {
    pub serve: common::Platform,
    /// Every container gets this variable, so its processes can be found.
    marker: String,
    _dir: tempfile::TempDir,
}

impl Local {
    /// A platform with Knative's defaults.
    pub fn start(test: &str) -> Local {
        Local {
            serve: common::Platform::start(),
            marker: common::unique_marker(test),
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A platform with Knative's shortest autoscaler windows (stable window 6 s, grace 1 s,
    /// zero initial scale allowed) plus `extra` config-autoscaler keys.
    pub fn fast(test: &str, extra: &[(&str, &str)]) -> Local {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = common::fast_config(dir.path(), extra);
        let serve = common::Platform::start_with(&["--config", &cfg]);
        Local {
            serve,
            marker: common::unique_marker(test),
            _dir: dir,
        }
    }
}

impl Platform for Local {
    fn apply(&self, manifest: &str) -> Result<String, String> {
        let out = self.serve.apply(manifest, &[]);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("{}{}", text(&out.stderr), text(&out.stdout)))
        }
    }

    fn apply_ready(&self, manifest: &str) -> String {
        self.serve.apply_wait(manifest)
    }

    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.serve.get_json(kind, name)
    }

    fn list(&self, kind: &str) -> Vec<Value> {
        let out = self.serve.cli(&["get", kind, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        match v {
            Value::Array(items) => items,
            v => v["items"].as_array().cloned().unwrap_or_default(),
        }
    }

    fn delete(&self, kind: &str, name: &str) -> Result<(), String> {
        let out = self.serve.cli(&["delete", kind, name]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn target(&self, url: &str) -> Target {
        Target {
            addr: self.serve.gateway,
            host: host_of(url),
        }
    }

    fn container(&self, _image: Image, args: &[&str]) -> String {
        // One program plays every image; the args and routes pick the role.
        let (mk, mv) = self.marker.split_once('=').expect("marker is K=V");
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "        - image: rouse/testapp\n          command: [{app:?}]\n          args: [{args}]\n          env:\n            - {{name: {mk}, value: {mv:?}}}\n",
            app = common::testapp_bin().display().to_string(),
            args = args.join(", "),
        )
    }

    fn write(
        &self,
        method: &str,
        name: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, (u16, String)> {
        let mut path = "/apis/serving.knative.dev/v1/namespaces/default/services".to_string();
        if let Some(n) = name {
            path.push_str(&format!("/{n}"));
        }
        if dry_run {
            path.push_str("?dryRun=All");
        }
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let r = common::api_request(
            &self.serve,
            method,
            &path,
            &[("Content-Type", ct)],
            &body.to_string(),
        )
        .map_err(|e| (0, e.to_string()))?;
        let answer: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        if (200..300).contains(&r.status) {
            Ok(answer)
        } else {
            let message = answer["message"].as_str().unwrap_or(&r.body).to_string();
            Err((r.status, message))
        }
    }

    fn configure(&self, configmap: &str, data: &[(&str, &str)]) -> Result<(), String> {
        let body = data_patch(data).to_string();
        let path = format!("/api/v1/namespaces/knative-serving/configmaps/{configmap}");
        let r = common::api_request(
            &self.serve,
            "PATCH",
            &path,
            &[("Content-Type", "application/merge-patch+json")],
            &body,
        )
        .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{}: {}", r.status, r.body))
        }
    }

    fn logs(&self, revision: &str) -> String {
        let dir = self
            .serve
            .data_dir
            .join("logs")
            .join("default")
            .join(revision);
        common::concat_files(&dir)
    }

    fn live_instances(&self, revision: &str) -> usize {
        let rev = format!("K_REVISION={revision}");
        common::pids_with_env(&self.marker)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == rev.as_bytes()))
            })
            .count()
    }
}

/// The Host a route's URL (`http://host`) is served under.
pub fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A merge patch setting keys of a ConfigMap's `data`.
pub fn data_patch(data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    serde_json::json!({ "data": data })
}

/// Polls `f` until it returns `Some`, failing after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    common::eventually(what, limit, f)
}

/// A condition of an object's status (`Value::Null` when absent).
pub fn condition(obj: &Value, type_: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// A Knative Service, built up by a case and rendered for a platform.
#[derive(Clone)]
pub struct Svc {
    pub name: String,
    pub image: Image,
    pub args: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub template_name: Option<String>,
    pub env: Vec<(String, String)>,
    /// Container fields, 10 spaces in (probes, ports, workingDir, …).
    pub container_extra: String,
    /// Template spec fields, 6 spaces in (timeoutSeconds, containerConcurrency, …).
    pub spec_extra: String,
    /// Service spec fields after the template, 2 spaces in (traffic).
    pub traffic: String,
}

impl Svc {
    pub fn new(name: &str, image: Image) -> Svc {
        Svc {
            name: name.into(),
            image,
            args: Vec::new(),
            labels: Vec::new(),
            annotations: Vec::new(),
            template_name: None,
            env: Vec::new(),
            container_extra: String::new(),
            spec_extra: String::new(),
            traffic: String::new(),
        }
    }
    pub fn args(mut self, args: &[&str]) -> Svc {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Svc {
        self.annotations.push((k.into(), v.into()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Svc {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn spec(mut self, lines: &str) -> Svc {
        self.spec_extra.push_str(lines);
        self
    }
    pub fn container_fields(mut self, lines: &str) -> Svc {
        self.container_extra.push_str(lines);
        self
    }
    pub fn revision_name(mut self, name: &str) -> Svc {
        self.template_name = Some(name.into());
        self
    }
    pub fn traffic(mut self, lines: &str) -> Svc {
        self.traffic = lines.into();
        self
    }

    /// The template (`metadata` and `spec`), 4 spaces in, for a Service or a Configuration.
    pub fn template(&self, p: &dyn Platform) -> String {
        let mut t = String::from("    metadata:\n");
        if let Some(n) = &self.template_name {
            t.push_str(&format!("      name: {n}\n"));
        }
        t.push_str("      annotations:\n        conformance.rouse.dev/case: \"x\"\n");
        for (k, v) in &self.annotations {
            t.push_str(&format!("        {k}: {v:?}\n"));
        }
        if !self.labels.is_empty() {
            t.push_str("      labels:\n");
            for (k, v) in &self.labels {
                t.push_str(&format!("        {k}: {v:?}\n"));
            }
        }
        t.push_str("    spec:\n");
        t.push_str(&self.spec_extra);
        t.push_str("      containers:\n");
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        t.push_str(&p.container(self.image, &args));
        for (k, v) in &self.env {
            t.push_str(&format!("            - {{name: {k}, value: {v:?}}}\n"));
        }
        t.push_str(&self.container_extra);
        t
    }

    pub fn yaml(&self, p: &dyn Platform) -> String {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {}\nspec:\n  template:\n{}{}",
            self.name,
            self.template(p),
            self.traffic
        )
    }

    /// Applies it, waits for Ready, and returns where its URL is served.
    pub fn deploy(&self, p: &dyn Platform) -> Target {
        p.apply_ready(&self.yaml(p));
        let svc = p.get("ksvc", &self.name).expect("service exists");
        p.target(svc["status"]["url"].as_str().expect("service URL"))
    }
}

/// Sends `total` GETs from `clients` threads (bounded by `limit` overall); the statuses and
/// bodies (status 0 = transport error).
pub fn load(
    t: &Target,
    path: &str,
    clients: usize,
    total: usize,
    limit: Duration,
) -> Vec<(u16, String)> {
    let deadline = Instant::now() + limit;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (t, path, next) = (t.clone(), path.to_string(), next.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total
                    && Instant::now() < deadline
                {
                    match t.get(&path) {
                        Ok(r) => out.push((r.status, r.body)),
                        Err(e) => out.push((0, e.to_string())),
                    }
                }
                out
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Sends GETs from `clients` threads for `duration`; the statuses and bodies.
pub fn load_for(t: &Target, path: &str, clients: usize, duration: Duration) -> Vec<(u16, String)> {
    load(t, path, clients, usize::MAX, duration)
}

/// Fails unless at least `slo` of the responses are 200.
pub fn assert_success_rate(results: &[(u16, String)], slo: f64) {
    assert!(!results.is_empty(), "no requests were sent");
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let rate = ok as f64 / results.len() as f64;
    let bad: Vec<_> = results.iter().filter(|(s, _)| *s != 200).take(5).collect();
    assert!(
        rate >= slo,
        "success rate {rate:.4} < {slo} ({ok}/{}); e.g. {bad:?}",
        results.len()
    );
}
