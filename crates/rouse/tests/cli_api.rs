//! End to end: the real API server (in process, on an embedded store in a temp dir) driven by
//! the real `rouse` binary and by raw HTTP. No controller runs here, so status is written by the
//! tests themselves when they need it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rouse::api::{ApiState, serve_api};
use rouse::cli::client::ApiClient;
use rouse_api::Kind;
use rouse_api::config::Config;
use rouse_store::{EmbeddedStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

struct Api {
    addr: SocketAddr,
    url: String,
    token: String,
    data_dir: std::path::PathBuf,
    store: Arc<EmbeddedStore>,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        Self::start_with(dir, Config::default()).await
    }

    async fn start_with(dir: tempfile::TempDir, config: Config) -> Api {
        let data_dir = dir.path().join("data");
        let store = Arc::new(EmbeddedStore::open(&data_dir).unwrap());
        let token = rouse::api::auth::load_or_create_token(&data_dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let state = ApiState {
            store: store.clone(),
            config: rouse_api::config::SharedConfig::new(config),
            configmaps: Default::default(),
            namespaces: Arc::new(
                rouse::api::namespaces::Namespaces::persisted_in(&data_dir.join("namespaces.json"))
                    .unwrap(),
            ),
            token: token.clone().into(),
        };
        let metrics: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(|| "rouse_test_metric 1\n".to_string());
        let task = tokio::spawn(serve_api(listener, state, metrics, async {
            let _ = rx.await;
        }));
        Api {
            addr,
            url: format!("http://{addr}"),
            token,
            data_dir,
            store,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(&self.url)
            .unwrap()
            .with_token(self.token.clone())
    }

    /// Writes a manifest file into the test's temp dir.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    async fn rouse(&self, args: &[&str]) -> Out {
        run_rouse(&self.url, Some(&self.data_dir), args, None).await
    }

    async fn rouse_stdin(&self, args: &[&str], stdin: &str) -> Out {
        run_rouse(&self.url, Some(&self.data_dir), args, Some(stdin)).await
    }

    fn count(&self, kind: Kind) -> usize {
        self.store.list(kind, None).unwrap().0.len()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task.take().unwrap())
            .await
            .expect("serve_api returns after shutdown")
            .unwrap();
    }
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run_rouse(
    api: &str,
    data_dir: Option<&std::path::Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rouse"));
    cmd.arg("--api")
        .arg(api)
        .args(args)
        .env_remove("ROUSE_API")
        .env_remove("ROUSE_TOKEN")
        .env_remove("ROUSE_DATA_DIR")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = data_dir {
        cmd.env("ROUSE_DATA_DIR", dir);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(text.as_bytes()).await.unwrap();
        drop(w);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rouse finishes within 60s")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn service_yaml(name: &str, target: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
        - command: ["/bin/sleep", "1000"]
          env:
            - name: TARGET
              value: {target}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_describe_delete_round_trip() {
    let api = Api::start().await;
    let f = api.file("hello.yaml", &service_yaml("hello", "World"));

    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "service.serving.knative.dev/hello created\n");

    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "service.serving.knative.dev/hello unchanged\n");

    let f2 = api.file("hello2.yaml", &service_yaml("hello", "Rouse"));
    let out = api.rouse(&["apply", "-f", &f2]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "service.serving.knative.dev/hello configured\n");

    // The table, kn-style; no controller runs, so there is no status yet.
    let out = api.rouse(&["get", "ksvc"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
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
    assert!(lines[1].starts_with("hello "), "{}", out.stdout);
    assert!(lines[1].contains("<unknown>"), "{}", out.stdout);

    // JSON carries what the API defaulted and the store stamped.
    let out = api.rouse(&["get", "ksvc", "hello", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let obj: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(obj["metadata"]["generation"], 2);
    assert_eq!(obj["metadata"]["namespace"], "default");
    let spec = &obj["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["env"][0]["value"], "Rouse");
    assert_eq!(spec["containers"][0]["name"], "user-container");
    assert_eq!(spec["timeoutSeconds"], 300);
    assert_eq!(obj["spec"]["traffic"][0]["percent"], 100);

    // YAML says the same, and applying it back changes nothing.
    let out = api.rouse(&["get", "service", "hello", "-o", "yaml"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let from_yaml: Value = rouse_api::decode::parse_documents(&out.stdout)
        .unwrap()
        .remove(0);
    assert_eq!(from_yaml, obj);
    let out = api.rouse_stdin(&["apply", "-f", "-"], &out.stdout).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "service.serving.knative.dev/hello unchanged\n");

    // A list prints as a Kubernetes List.
    let out = api.rouse(&["get", "ksvc", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(list["items"][0]["metadata"]["name"], "hello");
    assert!(list["metadata"]["resourceVersion"].as_str().is_some());

    let out = api.rouse(&["describe", "ksvc", "hello"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "Name:         hello",
        "Namespace:    default",
        "Kind:         Service (serving.knative.dev/v1)",
        "Generation:   2 (observed: none)",
        "Container:    user-container",
        "Command:    /bin/sleep 1000",
        "Env:        TARGET=Rouse",
        "Traffic:",
        "100%  @latest",
    ] {
        assert!(
            out.stdout.contains(want),
            "missing {want:?}:\n{}",
            out.stdout
        );
    }

    let out = api.rouse(&["delete", "ksvc", "hello"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "service.serving.knative.dev \"hello\" deleted\n"
    );
    assert_eq!(api.count(Kind::Service), 0);

    let out = api.rouse(&["get", "ksvc", "hello"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (NotFound): services.serving.knative.dev \"hello\" not found"
    );
    let out = api.rouse(&["delete", "ksvc", "hello"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");

    let out = api.rouse(&["get", "ksvc"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "No services found in default namespace.\n");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_directories_and_multi_document() {
    let api = Api::start().await;
    let dir = api.dir.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("b.yaml"), service_yaml("bravo", "b")).unwrap();
    std::fs::write(
        dir.join("a.yml"),
        format!(
            "{}---\n{}",
            service_yaml("alpha", "a"),
            r#"{"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "r1"},
  "spec": {"traffic": [{"revisionName": "alpha-00001", "percent": 100}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "not a manifest").unwrap();
    let out = api
        .rouse(&["apply", "-f", dir.to_str().unwrap(), "-n", "team-a"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "service.serving.knative.dev/alpha created\nroute.serving.knative.dev/r1 created\nservice.serving.knative.dev/bravo created\n"
    );

    let out = api.rouse(&["get", "ksvc"]).await;
    assert_eq!(out.stderr, "No services found in default namespace.\n");
    let out = api.rouse(&["get", "ksvc", "-n", "team-a"]).await;
    assert_eq!(out.stdout.lines().count(), 3, "{out:?}");
    let out = api.rouse(&["get", "rt", "-A"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAMESPACE", "NAME", "URL", "READY"]
    );
    assert!(lines[1].starts_with("team-a "), "{out:?}");

    // Revisions show the traffic the routes resolved (written here as the controller would).
    let rev = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "alpha-00001", "labels": {"serving.knative.dev/service": "alpha",
            "serving.knative.dev/configurationGeneration": "1"}},
        "spec": {"containers": [{"command": ["/bin/true"]}]}});
    let out = api
        .rouse_stdin(&["apply", "-f", "-", "-n", "team-a"], &rev.to_string())
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut route = api.store.get(Kind::Route, "team-a", "r1").unwrap();
    route["status"] =
        json!({"traffic": [{"revisionName": "alpha-00001", "percent": 100, "tag": "v1"}]});
    api.store.update_status(Kind::Route, route).unwrap();
    let out = api.rouse(&["get", "rev", "-n", "team-a"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["alpha-00001", "alpha", "100%", "v1", "1"],
        "{out:?}"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_manifests_store_nothing() {
    let api = Api::start().await;

    // Malformed YAML: refused before anything is sent.
    let f = api.file(
        "bad.yaml",
        "apiVersion: serving.knative.dev/v1\nkind: [Service\n",
    );
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("bad.yaml") && out.stderr.contains("malformed"),
        "{out:?}"
    );

    // Wrong apiVersion, and a kind Rouse does not serve.
    let f = api.file(
        "v1alpha1.yaml",
        &service_yaml("a", "x").replace("serving.knative.dev/v1", "serving.knative.dev/v1alpha1"),
    );
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("use apiVersion serving.knative.dev/v1"),
        "{out:?}"
    );
    let f = api.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n",
    );
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no kind \"Pod\""), "{out:?}");

    // An unknown field, named by its path; a good document before it is not applied either.
    let text = format!(
        "{}---\n{}",
        service_yaml("good", "x"),
        service_yaml("typo", "x").replace("env:", "envv:")
    );
    let f = api.file("typo.yaml", &text);
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("unknown field `envv`")
            && out.stderr.contains("spec.template.spec.containers[0].envv"),
        "{out:?}"
    );

    // Validation: Knative's webhook text with the field path.
    let bad_traffic =
        service_yaml("split", "x") + "  traffic:\n    - latestRevision: true\n      percent: 90\n";
    let f = api.file("split.yaml", &bad_traffic);
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("validation failed: Traffic targets sum to 90, want 100: spec.traffic"),
        "{out:?}"
    );
    assert!(
        out.stderr.starts_with("Error from server (Invalid)"),
        "{out:?}"
    );
    assert_eq!(api.count(Kind::Service), 0);
    assert_eq!(api.count(Kind::Route), 0);

    // A refusal by the server does not stop the other objects, but the exit code says so.
    let text = format!("{bad_traffic}---\n{}", service_yaml("fine", "x"));
    let out = api.rouse_stdin(&["apply", "-f", "-"], &text).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stdout, "service.serving.knative.dev/fine created\n");
    assert!(out.stderr.contains("from \"STDIN\""), "{out:?}");
    assert_eq!(api.count(Kind::Service), 1);

    // The internal kinds are read-only through the API.
    let out = api.rouse(&["delete", "kpa", "fine-00001"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("MethodNotAllowed"), "{out:?}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_api_statuses() {
    let api = Api::start().await;
    let c = api.client();
    let svc_path = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let send = |m: Method, p: &str, ct: Option<&str>, body: String| {
        let c = c.clone();
        let (p, ct) = (p.to_string(), ct.map(str::to_string));
        async move {
            let (code, bytes) = c
                .raw(m, &p, ct.as_deref(), Bytes::from(body))
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (code.as_u16(), v, bytes)
        }
    };

    let (code, _, body) = send(Method::GET, "/healthz", None, String::new()).await;
    assert_eq!((code, &body[..]), (200, &b"ok"[..]));
    let (code, _, body) = send(Method::GET, "/metrics", None, String::new()).await;
    assert_eq!((code, &body[..]), (200, &b"rouse_test_metric 1\n"[..]));

    // YAML body by content type, then JSON sniffed without one.
    let (code, v, _) = send(
        Method::POST,
        svc_path,
        Some("application/yaml"),
        service_yaml("y", "x"),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["metadata"]["generation"], 1);
    let as_json = serde_json::to_string(
        &rouse_api::decode::parse_documents(&service_yaml("j", "x")).unwrap()[0],
    )
    .unwrap();
    let (code, v, _) = send(Method::POST, svc_path, None, as_json.clone()).await;
    assert_eq!(code, 201, "{v}");

    // Creating it again: 409 AlreadyExists.
    let (code, v, _) = send(Method::POST, svc_path, None, as_json.clone()).await;
    assert_eq!(code, 409);
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "AlreadyExists");

    // Unknown field: 400 with the path.
    let (code, v, _) = send(
        Method::POST,
        svc_path,
        None,
        service_yaml("u", "x").replace("command:", "comand:"),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("spec.template.spec.containers[0].comand"),
        "{v}"
    );

    // Malformed JSON and a body naming another namespace: 400.
    let (code, v, _) = send(Method::POST, svc_path, Some("application/json"), "{".into()).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (400, Some("BadRequest")),
        "{v}"
    );
    let other_ns = service_yaml("n", "x").replace("name: n", "name: n\n  namespace: other");
    let (code, v, _) = send(Method::POST, svc_path, None, other_ns).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("does not match the namespace"),
        "{v}"
    );

    // Validation: 422 Invalid with the webhook's text.
    let bad =
        service_yaml("v", "x") + "  traffic:\n    - latestRevision: true\n      percent: 90\n";
    let (code, v, _) = send(Method::POST, svc_path, None, bad).await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("Traffic targets sum to 90, want 100: spec.traffic"),
        "{v}"
    );

    // Replace with a stale resourceVersion: 409 Conflict; with the current one: 200.
    let (_, current, _) = send(Method::GET, &format!("{svc_path}/j"), None, String::new()).await;
    let mut stale = current.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["spec"]["template"]["spec"]["containerConcurrency"] = json!(5);
    let (code, v, _) = send(
        Method::PUT,
        &format!("{svc_path}/j"),
        None,
        stale.to_string(),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")), "{v}");
    let mut fresh = current.clone();
    fresh["spec"]["template"]["spec"]["containerConcurrency"] = json!(5);
    let (code, v, _) = send(
        Method::PUT,
        &format!("{svc_path}/j"),
        None,
        fresh.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["generation"], 2);
    // A body naming another object than the URL: 400. A missing object: 404.
    let (code, _, _) = send(
        Method::PUT,
        &format!("{svc_path}/y"),
        None,
        fresh.to_string(),
    )
    .await;
    assert_eq!(code, 400);
    let (code, v, _) = send(
        Method::PUT,
        &format!("{svc_path}/nope"),
        None,
        service_yaml("nope", "x"),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")), "{v}");

    // Paths and methods.
    let (code, v, _) = send(
        Method::GET,
        "/apis/serving.knative.dev/v1/namespaces/default/pods",
        None,
        String::new(),
    )
    .await;
    assert_eq!((code, v["kind"].as_str()), (404, Some("Status")));
    // Knative's kinds have a status subresource and no scale subresource.
    let (code, _, _) = send(
        Method::GET,
        &format!("{svc_path}/j/scale"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(code, 404);
    // A PATCH needs a patch media type.
    let (code, _, _) = send(Method::PATCH, &format!("{svc_path}/j"), None, "{}".into()).await;
    assert_eq!(code, 415);
    let (code, _, _) = send(
        Method::POST,
        "/apis/serving.knative.dev/v1/services",
        None,
        as_json.clone(),
    )
    .await;
    assert_eq!(code, 405);
    let kpa = json!({"apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
        "metadata": {"name": "k"}, "spec": {}});
    let (code, v, _) = send(
        Method::POST,
        "/apis/autoscaling.internal.knative.dev/v1alpha1/namespaces/default/podautoscalers",
        None,
        kpa.to_string(),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed")),
        "{v}"
    );
    let (code, v, _) = send(
        Method::GET,
        "/apis/autoscaling.internal.knative.dev/v1alpha1/podautoscalers",
        None,
        String::new(),
    )
    .await;
    assert_eq!((code, v["kind"].as_str()), (200, Some("PodAutoscalerList")));
    let (code, _, _) = send(Method::POST, svc_path, Some("text/html"), as_json).await;
    assert_eq!(code, 415);

    assert_eq!(api.count(Kind::Service), 2);
    assert_eq!(api.count(Kind::PodAutoscaler), 0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let api = Api::start().await;
    let svc_path = "/apis/serving.knative.dev/v1/namespaces/default/services";
    // 2 MiB of padding in an annotation: well-formed, just too big.
    let big = service_yaml("big", "x").replace(
        "name: big",
        &format!(
            "name: big\n  annotations:\n    pad: \"{}\"",
            "x".repeat(2 << 20)
        ),
    );
    let (code, bytes) = api
        .client()
        .raw(
            Method::POST,
            svc_path,
            Some("application/yaml"),
            Bytes::from(big.clone()),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(code.as_u16(), 413, "{v}");
    assert_eq!(v["reason"], "RequestEntityTooLarge");

    // Without a Content-Length (chunked), the limit holds while reading.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST {svc_path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Type: application/yaml\r\nTransfer-Encoding: chunked\r\n\r\n",
        api.addr, api.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.as_bytes().chunks(64 << 10) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and stop reading before the end.
        if s.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // The CLI reports it too; nothing was stored.
    let f = api.file("big.yaml", &big);
    let out = api.rouse(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("RequestEntityTooLarge"), "{out:?}");
    assert_eq!(api.count(Kind::Service), 0);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_says_so() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let out = run_rouse(&url, None, &["get", "ksvc"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!("cannot reach the Rouse API at {url}: is `rouse serve` running?")
    );
    let out = run_rouse(&url, None, &["get", "pods"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: the server doesn't have a resource type \"pods\""),
        "{out:?}"
    );
}

/// Polls, bounded, for an object to exist in the store.
async fn wait_stored(store: &EmbeddedStore, kind: Kind, name: &str) -> Value {
    for _ in 0..200 {
        if let Ok(v) = store.get(kind, "default", name) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} was never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_the_ready_condition() {
    let api = Api::start().await;

    // Nothing reconciles: --wait times out with a clear message.
    let f = api.file("w.yaml", &service_yaml("w", "x"));
    let out = api
        .rouse(&["apply", "-f", &f, "--wait", "--timeout", "1s"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("service.serving.knative.dev/w created"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "service.serving.knative.dev/w: waiting for the controller to observe generation 1"
        ),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(
            "timed out after 1s waiting for service.serving.knative.dev/w to become Ready"
        ),
        "{out:?}"
    );

    // Playing the controller: progress, then Ready for the current generation.
    let f = api.file("ok.yaml", &service_yaml("ok", "x"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rouse"))
        .args([
            "--api",
            &api.url,
            "apply",
            "-f",
            &f,
            "--wait",
            "--timeout",
            "30s",
        ])
        .env("ROUSE_DATA_DIR", &api.data_dir)
        .env_remove("ROUSE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20s")
            .unwrap()
            .expect("rouse still running")
    };
    assert_eq!(next().await, "service.serving.knative.dev/ok created");
    assert_eq!(
        next().await,
        "service.serving.knative.dev/ok: waiting for the controller to observe generation 1"
    );
    let mut obj = api.store.get(Kind::Service, "default", "ok").unwrap();
    obj["status"] = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "Unknown",
        "reason": "RevisionMissing", "message": "Configuration \"ok\" is waiting for a Revision to become ready."}]});
    let mut obj = api.store.update_status(Kind::Service, obj).unwrap();
    assert_eq!(
        next().await,
        "service.serving.knative.dev/ok: Ready=Unknown RevisionMissing: Configuration \"ok\" is waiting for a Revision to become ready."
    );
    obj["status"] = json!({"observedGeneration": 1, "url": "http://ok.default.localhost",
        "conditions": [{"type": "Ready", "status": "True"}]});
    api.store.update_status(Kind::Service, obj).unwrap();
    assert_eq!(
        next().await,
        "service.serving.knative.dev/ok is Ready at http://ok.default.localhost"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // Ready=False fails with the condition's reason and message.
    let f = api.file("fail.yaml", &service_yaml("fail", "x"));
    let url = api.url.clone();
    let data_dir = api.data_dir.clone();
    let child = tokio::spawn(async move {
        run_rouse(
            &url,
            Some(&data_dir),
            &["apply", "-f", &f, "--wait", "--timeout", "30s"],
            None,
        )
        .await
    });
    let mut obj = wait_stored(&api.store, Kind::Service, "fail").await;
    obj["status"] = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False",
        "reason": "RevisionFailed", "message": "Revision \"fail-00001\" failed with message: exit status 3."}]});
    api.store.update_status(Kind::Service, obj).unwrap();
    let out = child.await.unwrap();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("service.serving.knative.dev/fail failed: RevisionFailed: Revision \"fail-00001\" failed with message: exit status 3."),
        "{out:?}"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_deletecollection_and_discovery() {
    let api = Api::start().await;
    let c = api.client();
    let svc_path = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let send = |m: Method, p: &str, ct: Option<&str>, body: String| {
        let c = c.clone();
        let (p, ct) = (p.to_string(), ct.map(str::to_string));
        async move {
            let (code, bytes) = c
                .raw(m, &p, ct.as_deref(), Bytes::from(body))
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (code.as_u16(), v)
        }
    };
    let merge = Some("application/merge-patch+json");
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let yaml = service_yaml(name, "x").replace(
            &format!("name: {name}\n"),
            &format!("name: {name}\n  labels:\n    tier: {tier}\n"),
        );
        let (code, v) = send(Method::POST, svc_path, Some("application/yaml"), yaml).await;
        assert_eq!(code, 201, "{v}");
    }

    // PUT .../status writes the status alone: spec and labels in the body are ignored.
    let (_, current) = send(Method::GET, &format!("{svc_path}/a"), None, String::new()).await;
    let mut body = current.clone();
    body["status"] = json!({"observedGeneration": 1, "url": "http://a.example"});
    body["metadata"]["labels"]["tier"] = json!("changed");
    body["spec"]["template"]["spec"]["containerConcurrency"] = json!(3);
    let (code, v) = send(
        Method::PUT,
        &format!("{svc_path}/a/status"),
        None,
        body.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["url"], "http://a.example");
    let stored = api.store.get(Kind::Service, "default", "a").unwrap();
    assert_eq!(stored["status"]["url"], "http://a.example");
    assert_eq!(stored["metadata"]["labels"]["tier"], "web");
    assert_eq!(stored["metadata"]["generation"], 1);
    assert_eq!(stored["spec"], current["spec"]);
    // The stale resourceVersion of that PUT is now a conflict.
    let (code, v) = send(
        Method::PUT,
        &format!("{svc_path}/a/status"),
        None,
        body.to_string(),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")), "{v}");
    // A dry run answers without storing; unknown status fields are pruned.
    let (code, v) = send(
        Method::PATCH,
        &format!("{svc_path}/a/status?dryRun=All"),
        merge,
        r#"{"status":{"url":"http://dry.example","madeUp":1}}"#.into(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["url"], "http://dry.example");
    assert!(v["status"].get("madeUp").is_none(), "{v}");
    let stored = api.store.get(Kind::Service, "default", "a").unwrap();
    assert_eq!(stored["status"]["url"], "http://a.example");
    // A write to the object ignores status.
    let (code, v) = send(
        Method::PATCH,
        &format!("{svc_path}/a"),
        merge,
        r#"{"status":{"url":"http://ignored.example"}}"#.into(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["url"], "http://a.example");
    // Verbs the subresource lacks; the controller's kinds are read-only there too.
    let (code, v) = send(
        Method::DELETE,
        &format!("{svc_path}/a/status"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed")),
        "{v}"
    );
    let (code, _) = send(
        Method::PATCH,
        "/apis/autoscaling.internal.knative.dev/v1alpha1/namespaces/default/podautoscalers/a/status",
        merge,
        "{}".into(),
    )
    .await;
    assert_eq!(code, 405);

    // deletecollection: set-based and field selectors choose; the answer lists the deleted.
    let (code, v) = send(
        Method::DELETE,
        &format!("{svc_path}?labelSelector=tier%20notin%20(web)&fieldSelector=metadata.name!=c"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(
        (code, v["kind"].as_str()),
        (200, Some("ServiceList")),
        "{v}"
    );
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b"]);
    assert_eq!(api.count(Kind::Service), 2);
    let (code, v) = send(
        Method::DELETE,
        &format!("{svc_path}?labelSelector=tier%20in%20(web"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (400, Some("BadRequest")),
        "{v}"
    );
    let (code, _) = send(
        Method::DELETE,
        "/apis/serving.knative.dev/v1/services",
        None,
        String::new(),
    )
    .await;
    assert_eq!(code, 405);
    // A dry-run deletecollection removes nothing; a bad policy is 422.
    let (code, v) = send(
        Method::DELETE,
        &format!("{svc_path}?dryRun=All"),
        None,
        String::new(),
    )
    .await;
    assert_eq!(
        (code, v["items"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{v}"
    );
    assert_eq!(api.count(Kind::Service), 2);
    let (code, _) = send(
        Method::DELETE,
        &format!("{svc_path}/a"),
        Some("application/json"),
        r#"{"propagationPolicy":"Sideways"}"#.into(),
    )
    .await;
    assert_eq!(code, 422);

    // Aggregated discovery when asked for, with its media type; the legacy form otherwise.
    for (accept, kind) in [
        (
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
            "APIGroupDiscoveryList",
        ),
        ("application/json", "APIGroupList"),
    ] {
        let (head, body) = raw_get(api.addr, &api.token, "/apis", accept).await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["kind"], kind, "{body}");
        if kind == "APIGroupDiscoveryList" {
            assert!(
                head.to_ascii_lowercase().contains(
                    "content-type: application/json;g=apidiscovery.k8s.io;v=v2;as=apigroupdiscoverylist"
                ),
                "{head}"
            );
        }
    }
    api.shutdown().await;
}

/// A GET with an `Accept` header; returns the response head and body.
async fn raw_get(addr: SocketAddr, token: &str, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_namespaces_outlive_a_restart() {
    let api = Api::start().await;
    let c = api.client();
    let send = |c: ApiClient, m: Method, p: &'static str, body: Value| async move {
        let (code, bytes) = c
            .raw(
                m,
                p,
                Some("application/json"),
                Bytes::from(body.to_string()),
            )
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (code.as_u16(), v)
    };
    let ns = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {"team": "a"}}})
    };
    let (code, v) = send(c.clone(), Method::POST, "/api/v1/namespaces", ns("kept")).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = send(c.clone(), Method::POST, "/api/v1/namespaces", ns("kept")).await;
    assert_eq!((code, v["reason"].as_str()), (409, Some("AlreadyExists")));
    let (code, v) = send(
        c.clone(),
        Method::POST,
        "/api/v1/namespaces",
        ns("Bad_Name"),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    let (code, v) = send(
        c.clone(),
        Method::POST,
        "/api/v1/namespaces",
        json!({"kind": "Pod"}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, _) = send(c.clone(), Method::POST, "/api/v1/namespaces", ns("gone")).await;
    assert_eq!(code, 201);
    let (code, v) = send(
        c.clone(),
        Method::DELETE,
        "/api/v1/namespaces/gone",
        Value::Null,
    )
    .await;
    assert_eq!(
        (code, v["status"]["phase"].as_str()),
        (200, Some("Terminating")),
        "{v}"
    );
    let (code, v) = send(
        c.clone(),
        Method::DELETE,
        "/api/v1/namespaces/default",
        Value::Null,
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (403, Some("Forbidden")),
        "{v}"
    );
    let (code, v) = send(c.clone(), Method::PUT, "/api/v1/namespaces", Value::Null).await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed")),
        "{v}"
    );

    // The next run (a fresh store) reads the namespaces kept in the data dir.
    let kept = std::fs::read(api.data_dir.join("namespaces.json")).unwrap();
    api.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/namespaces.json"), kept).unwrap();
    let api = Api::start_with(dir, Config::default()).await;
    let c = api.client();
    let (code, v) = send(
        c.clone(),
        Method::GET,
        "/api/v1/namespaces/kept",
        Value::Null,
    )
    .await;
    assert_eq!(
        (code, v["metadata"]["labels"]["team"].as_str()),
        (200, Some("a")),
        "{v}"
    );
    let (code, _) = send(
        c.clone(),
        Method::GET,
        "/api/v1/namespaces/gone",
        Value::Null,
    )
    .await;
    assert_eq!(code, 404);
    api.shutdown().await;
}
