//! The API as a hostile client meets it: the real API server (in process, on an embedded store
//! in a temp dir) spoken to with raw bytes, the real `rouse` binary and, when installed, kubectl.
//! Token, Host check (DNS rebinding), parser budgets, duplicate keys, body deadlines and the
//! create limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse::api::{ApiState, serve_api_tls};
use rouse_api::Kind;
use rouse_api::config::Config;
use rouse_store::{EmbeddedStore, Store};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const SVC_PATH: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

struct Api {
    addr: SocketAddr,
    url: String,
    token: String,
    data_dir: PathBuf,
    store: Arc<EmbeddedStore>,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Api {
    async fn start() -> Api {
        Self::start_with(Config::default()).await
    }

    async fn start_with(config: Config) -> Api {
        Self::start_full(config, &[]).await
    }

    async fn start_full(config: Config, extra_hosts: &[String]) -> Api {
        let dir = tempfile::tempdir().unwrap();
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
            namespaces: Default::default(),
            token: token.clone().into(),
        };
        let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(|| "m 1\n".to_string());
        let extra_hosts = extra_hosts.to_vec();
        tokio::spawn(async move {
            serve_api_tls(listener, state, metrics, None, &extra_hosts, async {
                let _ = rx.await;
            })
            .await
        });
        Api {
            addr,
            url: format!("http://{addr}"),
            token,
            data_dir,
            store,
            dir,
            stop: Some(tx),
        }
    }

    fn count(&self, kind: Kind) -> usize {
        self.store.list(kind, None).unwrap().0.len()
    }

    /// One raw request (Connection: close); the status code and the body as JSON (or Null).
    async fn raw(&self, request: &str) -> (u16, Value, String) {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply))
            .await
            .expect("the API answers and closes within 30s")
            .unwrap();
        parse_reply(&reply)
    }

    /// A request with this API's Host and `auth` as the Authorization header (if any).
    async fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (u16, Value, String) {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        self.raw(&format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        ))
        .await
    }

    async fn post(&self, content_type: &str, body: &str) -> (u16, Value, String) {
        let bearer = format!("Bearer {}", self.token);
        self.request("POST", SVC_PATH, Some(&bearer), content_type, body)
            .await
    }

    async fn post_ns(&self, ns: &str, body: &str) -> (u16, Value, String) {
        let bearer = format!("Bearer {}", self.token);
        let path = format!("/apis/serving.knative.dev/v1/namespaces/{ns}/services");
        self.request("POST", &path, Some(&bearer), "application/yaml", body)
            .await
    }

    /// Runs `rouse` with `env` (ROUSE_* cleared first) against this API.
    async fn rouse(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rouse"));
        cmd.arg("--api")
            .arg(&self.url)
            .args(args)
            .env_remove("ROUSE_API")
            .env_remove("ROUSE_TOKEN")
            .env_remove("ROUSE_DATA_DIR")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("rouse finishes within 60s")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn parse_reply(reply: &[u8]) -> (u16, Value, String) {
    let text = String::from_utf8_lossy(reply).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        code,
        serde_json::from_str(body).unwrap_or(Value::Null),
        text,
    )
}

fn service_yaml(name: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - command: [\"/bin/sleep\", \"1000\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_are_refused() {
    let api = Api::start().await;
    let (code, v, _) = api
        .request("GET", SVC_PATH, None, "application/json", "")
        .await;
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "Unauthorized");
    assert_eq!(v["code"], 401);
    let wrong = format!("Bearer {}", "0".repeat(api.token.len()));
    let (code, v, _) = api
        .request("GET", SVC_PATH, Some(&wrong), "application/json", "")
        .await;
    assert_eq!((code, v["reason"].as_str()), (401, Some("Unauthorized")));
    let basic = format!("Basic {}", api.token);
    let (code, _, _) = api
        .request("GET", SVC_PATH, Some(&basic), "application/json", "")
        .await;
    assert_eq!(code, 401);
    let (code, _, _) = api.request("GET", "/metrics", None, "text/plain", "").await;
    assert_eq!(code, 401);
    let (code, _, _) = api
        .request(
            "POST",
            SVC_PATH,
            None,
            "application/yaml",
            &service_yaml("a"),
        )
        .await;
    assert_eq!(code, 401);
    // The health checks stay open.
    for path in ["/healthz", "/readyz", "/livez"] {
        let (code, _, text) = api.request("GET", path, None, "text/plain", "").await;
        assert_eq!(code, 200, "{path}: {text}");
        assert!(text.ends_with("ok"), "{text}");
    }
    // With the token, the same list answers.
    let bearer = format!("Bearer {}", api.token);
    let (code, v, _) = api
        .request("GET", SVC_PATH, Some(&bearer), "application/json", "")
        .await;
    assert_eq!((code, v["kind"].as_str()), (200, Some("ServiceList")));
    assert_eq!(api.count(Kind::Service), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_host_is_refused_and_nothing_is_created() {
    let api = Api::start().await;
    let marker = api.dir.path().join("pwned");
    let body = format!(
        r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"pwn"}},"spec":{{"template":{{"spec":{{"containers":[{{"image":"x","command":["sh","-c","id > {}"]}}]}}}}}}}}"#,
        marker.display()
    );
    // The request from the issue, as a rebinding web page sends it (no credential)...
    let port = api.addr.port();
    let request = format!(
        "POST {SVC_PATH} HTTP/1.1\r\nHost: attacker.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, v, text) = api.raw(&request).await;
    assert_eq!(code, 421, "{text}");
    assert_eq!(v["kind"], "Status");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("\"attacker.example:"),
        "{v}"
    );
    // ...and even with the token, a foreign Host is refused.
    let with_token = request.replace(
        "Content-Type:",
        &format!("Authorization: Bearer {}\r\nContent-Type:", api.token),
    );
    let (code, _, _) = api.raw(&with_token).await;
    assert_eq!(code, 421);
    // An absolute-form target naming another host is refused too.
    let absolute = with_token
        .replace(
            &format!("POST {SVC_PATH}"),
            &format!("POST http://attacker.example:{port}{SVC_PATH}"),
        )
        .replace(
            &format!("Host: attacker.example:{port}"),
            &format!("Host: 127.0.0.1:{port}"),
        );
    let (code, _, text) = api.raw(&absolute).await;
    assert_eq!(code, 421, "{text}");
    assert_eq!(api.count(Kind::Service), 0);
    assert!(!marker.exists());
    // The loopback names are accepted.
    for (i, host) in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let req = with_token
            .replace(
                &format!("Host: attacker.example:{port}"),
                &format!("Host: {host}"),
            )
            .replace("\"pwn\"", &format!("\"ok{i}\""));
        let (code, v, _) = api.raw(&req).await;
        assert_eq!(code, 201, "{host}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_host_names_are_answered() {
    let api = Api::start_full(Config::default(), &["rouse.example.com".to_string()]).await;
    let list = |host: &str| {
        format!(
            "GET {SVC_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            api.token
        )
    };
    let (code, _, text) = api.raw(&list("Rouse.Example.Com:8443")).await;
    assert_eq!(code, 200, "{text}");
    let (code, _, _) = api.raw(&list("other.example.com")).await;
    assert_eq!(code, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_finds_the_token_in_the_data_dir_env_or_file() {
    let api = Api::start().await;
    let data_dir = api.data_dir.to_str().unwrap().to_string();
    let (code, _, err) = api
        .rouse(&["get", "ksvc"], &[("ROUSE_DATA_DIR", &data_dir)])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = api
        .rouse(&["--data-dir", &data_dir, "get", "ksvc"], &[])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = api
        .rouse(&["get", "ksvc"], &[("ROUSE_TOKEN", &api.token)])
        .await;
    assert_eq!(code, 0, "{err}");
    let token_file = api.data_dir.join("api-token");
    let (code, _, err) = api
        .rouse(
            &["get", "ksvc", "--token-file", token_file.to_str().unwrap()],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    // ROUSE_TOKEN wins over the file.
    let (code, _, err) = api
        .rouse(
            &["get", "ksvc"],
            &[
                ("ROUSE_DATA_DIR", &data_dir),
                ("ROUSE_TOKEN", "not-the-token"),
            ],
        )
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("Unauthorized"), "{err}");
    // No token anywhere: the server's 401, and where the CLI looked.
    let (code, _, err) = api.rouse(&["get", "ksvc"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("Error from server (Unauthorized)"), "{err}");
    assert!(err.contains(".rouse/api-token does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_works_with_kubectl() {
    let api = Api::start().await;
    let data_dir = api.data_dir.to_str().unwrap().to_string();
    let (code, out, err) = api
        .rouse(&["kubeconfig"], &[("ROUSE_DATA_DIR", &data_dir)])
        .await;
    assert_eq!(code, 0, "{err}");
    let doc = &rouse_api::decode::parse_documents(&out).unwrap()[0];
    assert_eq!(doc["kind"], "Config");
    assert_eq!(doc["clusters"][0]["cluster"]["server"], api.url.as_str());
    assert_eq!(doc["users"][0]["user"]["token"], api.token.as_str());
    assert_eq!(doc["current-context"], "rouse");
    // Without a token there is no kubeconfig to print.
    let (code, _, err) = api.rouse(&["kubeconfig"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no API token"), "{err}");

    let kubectl = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(kubectl) = kubectl else {
        println!("SKIPPED the kubectl check: kubectl is not installed");
        return;
    };
    let file = api.dir.path().join("kubeconfig");
    std::fs::write(&file, &out).unwrap();
    let run = |path: &str| {
        std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&file)
            .args(["get", "--raw", path])
            .env("HOME", api.dir.path())
            .output()
            .unwrap()
    };
    // kubectl reads the file and reaches the API with it. (client-go sends bearer tokens only
    // over https, so the authenticated paths need the API behind TLS; see docs/security.md.)
    let got = tokio::task::block_in_place(|| run("/healthz"));
    assert!(
        got.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "ok");
    let got = tokio::task::block_in_place(|| run(SVC_PATH));
    assert!(!got.status.success(), "a token over plain http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_bomb_duplicates_and_aliases_are_refused_fast() {
    let api = Api::start().await;
    let bomb = format!("x: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let start = Instant::now();
    let (code, v, _) = api.post("application/yaml", &bomb).await;
    let took = start.elapsed();
    assert_eq!(code, 400, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("at most 64 levels"), "{msg}");
    println!("the 200 KB nesting bomb was refused in {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The same depth in JSON.
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, v, _) = api.post("application/json", &deep).await;
    assert_eq!(code, 400, "{v}");
    // Billion laughs.
    let mut laughs = String::from("a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    let start = Instant::now();
    let (code, v, _) = api.post("application/yaml", &laughs).await;
    assert_eq!(code, 400, "{v}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // Duplicate keys, YAML and JSON, with the key's path.
    let dup = service_yaml("dup").replace(
        "        - command:",
        "        - image: a\n          image: b\n          command:",
    );
    let (code, v, _) = api.post("application/yaml", &dup).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(r#"duplicate field "spec.template.spec.containers[0].image""#),
        "{v}"
    );
    let dup_json = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"d","name":"e"},"spec":{}}"#;
    let (code, v, _) = api.post("application/json", dup_json).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(r#"duplicate field "metadata.name""#),
        "{v}"
    );
    assert_eq!(api.count(Kind::Service), 0);
}

fn slow_config() -> Config {
    let mut config = Config::default();
    config.rouse.api_body_timeout = Duration::from_secs(3);
    config.rouse.api_body_idle_timeout = Duration::from_secs(1);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_and_the_connection_closes() {
    let api = Api::start_with(slow_config()).await;
    let body = service_yaml("slow");
    let head = format!(
        "POST {SVC_PATH} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n",
        api.addr,
        api.token,
        body.len()
    );

    // A body that stops: refused once it has been idle for the idle timeout.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body.as_bytes()[..10]).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply))
        .await
        .expect("the API closes the connection")
        .unwrap();
    let took = start.elapsed();
    let (code, v, text) = parse_reply(&reply);
    assert_eq!(code, 408, "{text}");
    assert_eq!(v["reason"], "Timeout");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(took >= Duration::from_secs(1), "answered after {took:?}");

    // A trickle that is never idle long enough: the total deadline ends it.
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            r = s.read_to_end(&mut reply) => { r.unwrap(); break; }
            _ = tick.tick() => {
                assert!(start.elapsed() < Duration::from_secs(20), "no answer to a trickled body");
                if sent < body.len() - 1 {
                    s.write_all(&body.as_bytes()[sent..sent + 1]).await.unwrap();
                    sent += 1;
                }
            }
        }
    }
    let took = start.elapsed();
    let (code, _, text) = parse_reply(&reply);
    assert_eq!(code, 408, "{text}");
    assert!(took >= Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(api.count(Kind::Service), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_past_the_limits_are_forbidden() {
    let mut config = Config::default();
    config.rouse.max_services_per_namespace = Some(2);
    config.rouse.max_services = Some(3);
    let api = Api::start_with(config).await;
    for name in ["a", "b"] {
        let (code, v, _) = api.post_ns("default", &service_yaml(name)).await;
        assert_eq!(code, 201, "{v}");
    }
    let (code, v, _) = api.post_ns("default", &service_yaml("c")).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(
        v["message"],
        "services.serving.knative.dev \"c\" is forbidden: exceeded quota: config-rouse, requested: services=1, used: services=2, limited: max-services-per-namespace=2"
    );
    let (code, v, _) = api.post_ns("other", &service_yaml("c")).await;
    assert_eq!(code, 201, "{v}");
    let (code, v, _) = api.post_ns("third", &service_yaml("d")).await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("used: services=3, limited: max-services=3"),
        "{v}"
    );
    assert_eq!(api.count(Kind::Service), 3);
    // Deleting one makes room again.
    let bearer = format!("Bearer {}", api.token);
    let (code, _, _) = api
        .request(
            "DELETE",
            &format!("{SVC_PATH}/a"),
            Some(&bearer),
            "application/json",
            "",
        )
        .await;
    assert_eq!(code, 200);
    let (code, v, _) = api.post_ns("third", &service_yaml("d")).await;
    assert_eq!(code, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_revision_creates_past_the_limit_are_forbidden() {
    let mut config = Config::default();
    config.rouse.max_revisions = Some(1);
    let api = Api::start_with(config).await;
    let bearer = format!("Bearer {}", api.token);
    let path = "/apis/serving.knative.dev/v1/namespaces/default/revisions";
    let rev = |name: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Revision\nmetadata:\n  name: {name}\nspec:\n  containers:\n    - command: [\"/bin/sleep\", \"1000\"]\n"
        )
    };
    let (code, v, _) = api
        .request("POST", path, Some(&bearer), "application/yaml", &rev("r1"))
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, v, _) = api
        .request("POST", path, Some(&bearer), "application/yaml", &rev("r2"))
        .await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("used: revisions=1, limited: max-revisions=1"),
        "{v}"
    );
    assert_eq!(api.count(Kind::Revision), 1);
}
