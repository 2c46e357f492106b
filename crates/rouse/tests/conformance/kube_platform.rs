//! The conformance cases' platform on a real Kubernetes API server: Rouse installed with
//! `rouse install`, its roles (`rouse controller`, `rouse activator`, `rouse gateway`) as
//! processes out of the cluster acting as the install's ServiceAccounts, and the test kubelet
//! running the pods on this machine. Set up once per test process ([`Cluster`]); each case gets
//! its own namespace ([`Kube`]), deleted when the case ends.
//!
//! Cluster-wide configuration: the autoscaler's short windows ([`Needs::FastAutoscaler`]) are
//! set once for every case (stable window 6 s, scale-to-zero grace 1 s, zero initial scale
//! allowed), since the cases with Knative's defaults do not depend on the longer ones; a case
//! that changes another of Knative's ConfigMaps holds [`CONFIG`] until it ends and its changes
//! are undone then.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::kubectl::{impersonating, kubectl, patch_config};
use crate::kubelet::{ImageBinary, Images, Kubelet};
use crate::platform::{Image, Platform, Target, data_patch, host_of};

/// The image `rouse install` and the controller name for the queue-proxy sidecar; the test
/// kubelet runs the built `rouse` for it.
const ROUSE_IMAGE: &str = "rouse:dev";
/// The test images' prefix; the test kubelet runs `rouse-testapp` for each.
const TEST_IMAGES: &str = "rouse-test/";
/// Labels every namespace the cases make, so a later run removes what this one left.
const CASE_LABEL: &str = "conformance.rouse.dev/case";
/// The host's address on the test kubelet's pod network: where pods and the activator meet.
const HOST_IP: &str = "10.244.0.1";
/// The domain Routes are served under (the controller's default, Knative's `example.com`).
const DOMAIN: &str = "example.com";

/// The kubeconfig of the cluster to run on, if the run asks for one.
pub fn kubeconfig() -> Option<PathBuf> {
    std::env::var("ROUSE_E2E_KUBECONFIG")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

fn rouse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rouse"))
}

/// Knative's kinds by the names the cases use: their API path prefix and plural.
fn resource(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "ksvc" | "service" | "services" => ("apis/serving.knative.dev/v1", "services"),
        "config" | "configuration" => ("apis/serving.knative.dev/v1", "configurations"),
        "rev" | "revision" => ("apis/serving.knative.dev/v1", "revisions"),
        "rt" | "route" => ("apis/serving.knative.dev/v1", "routes"),
        "dm" | "domainmapping" => ("apis/serving.knative.dev/v1beta1", "domainmappings"),
        "kpa" | "pa" => (
            "apis/autoscaling.internal.knative.dev/v1alpha1",
            "podautoscalers",
        ),
        "sks" => (
            "apis/networking.internal.knative.dev/v1alpha1",
            "serverlessservices",
        ),
        "pod" | "pods" => ("api/v1", "pods"),
        other => panic!("the Kubernetes platform does not know the kind {other:?}"),
    }
}

/// Rouse on the cluster, once per test process.
pub struct Cluster {
    admin: PathBuf,
    dir: PathBuf,
    run: String,
    gateway: SocketAddr,
    /// The gateway's cluster-local listener: what callers inside the cluster reach.
    gateway_local: SocketAddr,
    kubelet: Kubelet,
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

/// Serializes the cases that change Knative's ConfigMaps beyond the shared settings.
static CONFIG: Mutex<()> = Mutex::new(());

impl Cluster {
    /// The cluster, set up by the first case that asks (failing every case if that failed).
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        let c = CLUSTER.get_or_init(|| {
            let kc = kubeconfig().expect("ROUSE_E2E_KUBECONFIG is set");
            // The roles die with the thread that started them (PR_SET_PDEATHSIG): this one
            // parks for the rest of the test process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Cluster::set_up(&kc));
                loop {
                    std::thread::park();
                }
            });
            rx.recv()
                .unwrap_or_else(|_| Err("the set-up thread died".into()))
        });
        match c {
            Ok(c) => c,
            Err(e) => panic!("setting up Rouse on the cluster: {e}"),
        }
    }

    fn set_up(admin: &Path) -> Result<Cluster, String> {
        let started = Instant::now();
        let dir = std::env::temp_dir().join("rouse-conformance-kube");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let run = format!(
            "{:04x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 0x10000)
                .unwrap_or(0)
        );
        eprintln!(
            "conformance on Kubernetes: run {run}, logs in {}",
            dir.display()
        );
        // What an earlier run left: its case namespaces (their pods' node is gone).
        let _ = kubectl(
            admin,
            &["delete", "namespace", "-l", CASE_LABEL, "--wait=false"],
            None,
        );
        let kubelet = Kubelet::start(
            admin,
            Images(vec![
                (
                    ROUSE_IMAGE.into(),
                    ImageBinary {
                        binary: rouse_bin(),
                        env: vec![],
                    },
                ),
                (
                    TEST_IMAGES.into(),
                    ImageBinary {
                        binary: crate::common::testapp_bin(),
                        // The test app's image setting: listen on every address, as in a
                        // container.
                        env: vec![("LISTEN_HOST".into(), "0.0.0.0".into())],
                    },
                ),
            ]),
            &dir,
        )?;

        // Install: the configurations a controller pointed at its URL go first (apply
        // cannot merge them back into a Service reference).
        let _ = kubectl(
            admin,
            &[
                "delete",
                "--ignore-not-found",
                "mutatingwebhookconfiguration/webhook.serving.knative.dev",
                "validatingwebhookconfiguration/validation.webhook.serving.knative.dev",
                "validatingwebhookconfiguration/config.webhook.serving.knative.dev",
            ],
            None,
        );
        let install = Command::new(rouse_bin())
            .args(["install", "--image", ROUSE_IMAGE])
            .output()
            .map_err(|e| e.to_string())?;
        let (ok, out) = kubectl(
            admin,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&install.stdout),
        );
        if !ok {
            return Err(format!("rouse install | kubectl apply: {out}"));
        }
        let (ok, out) = kubectl(
            admin,
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/services.serving.knative.dev",
                "crd/configurations.serving.knative.dev",
                "crd/revisions.serving.knative.dev",
                "crd/routes.serving.knative.dev",
                "crd/domainmappings.serving.knative.dev",
                "crd/podautoscalers.autoscaling.internal.knative.dev",
                "crd/serverlessservices.networking.internal.knative.dev",
                "crd/ingresses.networking.internal.knative.dev",
            ],
            None,
        );
        if !ok {
            return Err(format!("CRDs established: {out}"));
        }
        // Knative's shortest autoscaler windows, for every case. The test images
        // (`rouse-test/*`, Docker Hub names) are in no registry: they run by tag, as images of
        // `kind.local` do; other images are resolved to digests.
        for (configmap, data) in [
            (
                "config-autoscaler",
                r#"{"stable-window":"6s","scale-to-zero-grace-period":"1s","allow-zero-initial-scale":"true"}"#,
            ),
            (
                "config-deployment",
                r#"{"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local,index.docker.io"}"#,
            ),
        ] {
            let (ok, out) = patch_config(admin, configmap, data);
            if !ok {
                return Err(format!("{configmap}: {out}"));
            }
        }

        // The controller, as its ServiceAccount; its webhooks on loopback.
        let webhook = free_port();
        let health = free_port();
        let controller_kc = impersonating(admin, "rouse-controller", &dir)?;
        let mut controller = role(
            "controller",
            &dir,
            &[
                "controller",
                "--identity",
                "conformance",
                "--queue-image",
                ROUSE_IMAGE,
                "--autoscaler-listen",
                &format!("{HOST_IP}:0"),
                "--webhook-listen",
                &format!("127.0.0.1:{webhook}"),
                "--webhook-url",
                &format!("https://127.0.0.1:{webhook}"),
                "--health-listen",
                &format!("127.0.0.1:{health}"),
            ],
            &controller_kc,
        )?;
        // "rouse controller: autoscaler stream on ADDR"
        let line = first_line(&mut controller)?;
        let autoscaler = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        until("the controller ready", Duration::from_secs(90), || {
            crate::common::http_get(
                SocketAddr::from(([127, 0, 0, 1], health)),
                "localhost",
                "/readyz",
            )
            .is_ok_and(|r| r.status == 200)
        })?;

        // The activator on the pod network's host address, listed as activator-service's
        // endpoint so revisions in Proxy mode are sent to it.
        let token = until_some(
            "the autoscaler token Secret",
            Duration::from_secs(60),
            || {
                let (ok, out) = kubectl(
                    admin,
                    &[
                        "get",
                        "secret",
                        "-n",
                        "knative-serving",
                        "autoscaler-token",
                        "-o",
                        "jsonpath={.data.token}",
                    ],
                    None,
                );
                use base64::Engine as _;
                ok.then(|| {
                    base64::engine::general_purpose::STANDARD
                        .decode(out.trim())
                        .ok()
                })
                .flatten()
                .filter(|t| !t.is_empty())
            },
        )?;
        let token_file = dir.join("autoscaler-token");
        std::fs::write(&token_file, token).map_err(|e| e.to_string())?;
        let activator_kc = impersonating(admin, "rouse-activator", &dir)?;
        let mut activator = role(
            "activator",
            &dir,
            &[
                "activator",
                "--listen",
                &format!("{HOST_IP}:8012"),
                "--listen-h2c",
                &format!("{HOST_IP}:8013"),
                "--pod-ip",
                HOST_IP,
                "--admin",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--autoscaler",
                &format!("http://{autoscaler}"),
                "--autoscaler-token-file",
                &token_file.to_string_lossy(),
            ],
            &activator_kc,
        )?;
        let activator_admin = addr_in(&first_line(&mut activator)?, "admin=")?;
        let slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: activator-service-conformance\n  namespace: knative-serving\n  labels:\n    kubernetes.io/service-name: activator-service\n    endpointslice.kubernetes.io/managed-by: rouse-conformance\naddressType: IPv4\nendpoints:\n  - addresses: [\"{HOST_IP}\"]\n    conditions: {{ready: true}}\nports:\n  - {{name: http, port: 8012, protocol: TCP}}\n  - {{name: http2, port: 8013, protocol: TCP}}\n"
        );
        let (ok, out) = kubectl(admin, &["apply", "-f", "-"], Some(slice.as_bytes()));
        if !ok {
            return Err(format!("the activator's EndpointSlice: {out}"));
        }

        let gateway_kc = impersonating(admin, "rouse-gateway", &dir)?;
        let mut gateway = role(
            "gateway",
            &dir,
            &[
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--listen-local",
                "127.0.0.1:0",
            ],
            &gateway_kc,
        )?;
        let line = first_line(&mut gateway)?;
        let gateway_addr = addr_in(&line, "listening=")?;
        let gateway_local = addr_in(&line, "local=")?;
        let gateway_admin = addr_in(&line, "admin=")?;
        for admin_addr in [gateway_admin, activator_admin] {
            until("the hops ready", Duration::from_secs(60), || {
                crate::common::http_get(admin_addr, "localhost", "/readyz")
                    .is_ok_and(|r| r.status == 200)
            })?;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let client = rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(admin).map_err(|e| e.to_string())?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            kube::Client::try_from(config).map_err(|e| e.to_string())
        })?;
        eprintln!(
            "conformance on Kubernetes: Rouse set up in {:?}",
            started.elapsed()
        );
        // The processes' handles are not kept: they end with this thread, which parks.
        std::mem::forget((controller, activator, gateway));
        Ok(Cluster {
            admin: admin.to_path_buf(),
            dir,
            run,
            gateway: gateway_addr,
            gateway_local,
            kubelet,
            rt,
            client,
        })
    }

    /// One request to the API server; the answer, or its status code and message.
    fn api(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, (u16, String)> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", content_type)
            .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
            .map_err(|e| (0, e.to_string()))?;
        let answer = self
            .rt
            .block_on(self.client.request_text(req))
            .map_err(|e| match e {
                kube::Error::Api(s) => (s.code, s.message),
                e => (0, e.to_string()),
            })?;
        serde_json::from_str(&answer).map_err(|e| (0, e.to_string()))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    until_some(what, bound, || f().then_some(()))
}

fn until_some<T>(
    what: &str,
    bound: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {bound:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `rouse ARGS --kubeconfig KC`, its log in `dir/NAME.log`; it dies with the calling
/// thread.
#[allow(unsafe_code)]
fn role(name: &str, dir: &Path, args: &[&str], kc: &Path) -> Result<std::process::Child, String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(rouse_bin());
    cmd.args(args)
        .arg("--kubeconfig")
        .arg(kc)
        .env_remove("POD_IP")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("starting rouse {name}: {e}"))
}

/// The first line a role prints (its addresses); the rest of its stdout is drained.
fn first_line(child: &mut std::process::Child) -> Result<String, String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut out = std::io::BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("the role exited before printing its address".into());
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Ok(line)
}

fn addr_in(line: &str, key: &str) -> Result<SocketAddr, String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
        .ok_or_else(|| format!("no {key} in {line:?}"))
}

/// One case's view of the cluster: its own namespace (and a second one when asked).
pub struct Kube {
    cluster: &'static Cluster,
    ns: String,
    other: OnceLock<String>,
    test: String,
    kubeconfig: PathBuf,
    /// Held while the case has changed Knative's ConfigMaps.
    config: Mutex<Option<MutexGuard<'static, ()>>>,
    /// The values before the case changed them (None: the key was not set).
    restore: Mutex<BTreeMap<(String, String), Option<String>>>,
}

impl Kube {
    pub fn start(test: &str) -> Kube {
        let cluster = Cluster::get();
        let ns = format!("cf-{test}-{}", cluster.run);
        create_namespace(cluster, &ns, test);
        // kubectl's default namespace is the case's.
        let kubeconfig = cluster.dir.join(format!("{ns}.kubeconfig"));
        std::fs::copy(&cluster.admin, &kubeconfig).expect("kubeconfig copied");
        let (ok, out) = kubectl(
            &kubeconfig,
            &["config", "set-context", "--current", "--namespace", &ns],
            None,
        );
        assert!(ok, "kubectl config set-context: {out}");
        Kube {
            cluster,
            ns,
            other: OnceLock::new(),
            test: test.to_string(),
            kubeconfig,
            config: Mutex::new(None),
            restore: Mutex::new(BTreeMap::new()),
        }
    }

    /// For a Service or Route: its Ingress is Ready for its latest generation and splits the
    /// traffic the Route's status says, so the gateway serves what the Route reports. (The
    /// Route does not wait for its Ingress yet; Knative's does.)
    fn served(&self, kind: &str, ns: &str, name: &str) -> bool {
        if kind != "service" && kind != "route" {
            return true;
        }
        let get = |prefix: &str, plural: &str| {
            let path = format!("/{prefix}/namespaces/{ns}/{plural}/{name}");
            self.cluster.api("GET", &path, "application/json", None)
        };
        let (Ok(route), Ok(ing)) = (
            get("apis/serving.knative.dev/v1", "routes"),
            get("apis/networking.internal.knative.dev/v1alpha1", "ingresses"),
        ) else {
            return false;
        };
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        for t in route["status"]["traffic"].as_array().into_iter().flatten() {
            let percent = t["percent"].as_i64().unwrap_or(0);
            if percent > 0 {
                *want
                    .entry(t["revisionName"].as_str().unwrap_or("").to_string())
                    .or_default() += percent;
            }
        }
        let have: BTreeMap<String, i64> = ing["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(|p| p["splits"].as_array())
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["serviceName"].as_str().unwrap_or("").to_string(),
                    s["percent"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        ready(&ing) && want == have
    }

    fn path(&self, kind: &str, name: Option<&str>) -> String {
        let (prefix, plural) = resource(kind);
        let mut p = format!("/{prefix}/namespaces/{}/{plural}", self.ns);
        if let Some(n) = name {
            p.push('/');
            p.push_str(n);
        }
        p
    }
}

fn create_namespace(cluster: &Cluster, ns: &str, test: &str) {
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    {CASE_LABEL}: {test:?}\n"
    );
    let (ok, out) = kubectl(
        &cluster.admin,
        &["apply", "-f", "-"],
        Some(manifest.as_bytes()),
    );
    assert!(ok, "namespace {ns}: {out}");
}

fn ready(obj: &Value) -> bool {
    let generation = &obj["metadata"]["generation"];
    let observed = &obj["status"]["observedGeneration"];
    (observed == generation || generation.is_null())
        && obj["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl Platform for Kube {
    fn apply(&self, manifest: &str) -> Result<String, String> {
        // kubectl cannot apply a generateName; it creates.
        let verb = if manifest.contains("generateName:") {
            "create"
        } else {
            "apply"
        };
        let (ok, out) = kubectl(
            &self.kubeconfig,
            &[verb, "-f", "-"],
            Some(manifest.as_bytes()),
        );
        if ok { Ok(out) } else { Err(out) }
    }

    fn apply_ready(&self, manifest: &str) -> String {
        let (ok, out) = kubectl(
            &self.kubeconfig,
            &["apply", "-o", "json", "-f", "-"],
            Some(manifest.as_bytes()),
        );
        assert!(ok, "apply failed: {out}");
        let applied: Value = serde_json::from_str(&out).expect("kubectl's JSON");
        let objects = match applied["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![applied],
        };
        // Each object Ready for the generation just written.
        for obj in objects {
            let meta = &obj["metadata"];
            let (name, ns) = (meta["name"].as_str().unwrap(), meta["namespace"].as_str());
            let kind = obj["kind"].as_str().unwrap().to_lowercase();
            let (prefix, plural) = resource(&kind);
            let path = format!(
                "/{prefix}/namespaces/{}/{plural}/{name}",
                ns.unwrap_or(&self.ns)
            );
            let ns = ns.unwrap_or(&self.ns);
            let mut last = Value::Null;
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Ok(v) = self.cluster.api("GET", &path, "application/json", None) {
                    if ready(&v) && self.served(&kind, ns, name) {
                        break;
                    }
                    last = v;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind} {name} not Ready within 90 s: {}",
                    last["status"]
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        out
    }

    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.cluster
            .api(
                "GET",
                &self.path(kind, Some(name)),
                "application/json",
                None,
            )
            .ok()
    }

    fn list(&self, kind: &str) -> Vec<Value> {
        self.cluster
            .api("GET", &self.path(kind, None), "application/json", None)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    fn delete(&self, kind: &str, name: &str) -> Result<(), String> {
        let body = json!({"propagationPolicy": "Background"});
        self.cluster
            .api(
                "DELETE",
                &self.path(kind, Some(name)),
                "application/json",
                Some(&body),
            )
            .map(|_| ())
            .map_err(|(code, m)| format!("{code}: {m}"))
    }

    fn target(&self, url: &str) -> Target {
        let host = host_of(url);
        // A cluster-local URL is called from inside the cluster: through the gateway's
        // cluster-local listener (the external one answers its host 404).
        let addr = if host.ends_with(".svc.cluster.local") {
            self.cluster.gateway_local
        } else {
            self.cluster.gateway
        };
        Target { addr, host }
    }

    fn container(&self, image: Image, args: &[&str]) -> String {
        let name = match image {
            Image::HelloWorld => "helloworld",
            Image::Autoscale => "autoscale",
            Image::Timeout => "timeout",
            Image::WsServer => "wsserver",
            Image::GrpcPing => "grpc-ping",
            Image::Runtime => "runtime",
            Image::SingleThreaded => "singlethreaded",
            Image::Readiness => "readiness",
            Image::Failing => "failing",
            Image::SlowStart => "slowstart",
            Image::HelloHttp2 => "hellohttp2",
            Image::PizzaPlanet => "pizzaplanetv1",
        };
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "        - image: {TEST_IMAGES}{name}\n          args: [{}]\n          env:\n            - {{name: CONFORMANCE_CASE, value: {:?}}}\n",
            args.join(", "),
            self.test
        )
    }

    fn live_instances(&self, revision: &str) -> usize {
        let path = format!(
            "/api/v1/namespaces/{}/pods?labelSelector=serving.knative.dev%2Frevision%3D{revision}",
            self.ns
        );
        let pods = self
            .cluster
            .api("GET", &path, "application/json", None)
            .unwrap_or_default();
        pods["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|p| {
                        p["metadata"]["deletionTimestamp"].is_null()
                            && p["status"]["conditions"].as_array().is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                            })
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn write(
        &self,
        method: &str,
        name: Option<&str>,
        body: &Value,
        dry_run: bool,
    ) -> Result<Value, (u16, String)> {
        let mut path = self.path("ksvc", name);
        if dry_run {
            path.push_str("?dryRun=All");
        }
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        self.cluster.api(method, &path, ct, Some(body))
    }

    fn label_service(&self, name: &str, key: &str, value: Option<&str>) -> Result<(), String> {
        let path = format!("/api/v1/namespaces/{}/services/{name}", self.ns);
        let patch = json!({"metadata": {"labels": {key: value}}});
        self.cluster
            .api("PATCH", &path, "application/merge-patch+json", Some(&patch))
            .map(|_| ())
            .map_err(|(code, m)| format!("{code}: {m}"))
    }

    fn configure(&self, configmap: &str, data: &[(&str, &str)]) -> Result<(), String> {
        {
            let mut held = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() {
                *held = Some(CONFIG.lock().unwrap_or_else(|p| p.into_inner()));
            }
        }
        let path = format!("/api/v1/namespaces/knative-serving/configmaps/{configmap}");
        let before = self
            .cluster
            .api("GET", &path, "application/json", None)
            .unwrap_or_default();
        {
            let mut restore = self.restore.lock().unwrap_or_else(|p| p.into_inner());
            for (k, _) in data {
                restore
                    .entry((configmap.to_string(), k.to_string()))
                    .or_insert_with(|| before["data"][*k].as_str().map(str::to_string));
            }
        }
        self.cluster
            .api(
                "PATCH",
                &path,
                "application/merge-patch+json",
                Some(&data_patch(data)),
            )
            .map(|_| ())
            .map_err(|(code, m)| format!("{code}: {m}"))
    }

    fn logs(&self, revision: &str) -> String {
        self.cluster.kubelet.logs(&self.ns, revision)
    }

    fn await_request_log(&self, revision: &str, on: bool) {
        // Every pod of the revision, terminating ones too (they may still be routed to for
        // a moment), runs a queue-proxy with the request log as asked.
        let path = format!(
            "/api/v1/namespaces/{}/pods?labelSelector=serving.knative.dev%2Frevision%3D{revision}",
            self.ns
        );
        let logs_requests = |pod: &Value| -> Option<bool> {
            let qp = pod["spec"]["containers"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "queue-proxy")?;
            let env = qp["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == "OBSERVABILITY_CONFIG")?;
            let o11y: Value = serde_json::from_str(env["value"].as_str()?).ok()?;
            o11y["enableRequestLog"].as_bool()
        };
        until(
            &format!("{revision}'s pods with the request log {on}"),
            crate::platform::PATIENCE * 2,
            || {
                let pods = self
                    .cluster
                    .api("GET", &path, "application/json", None)
                    .unwrap_or_default();
                let pods = pods["items"].as_array().cloned().unwrap_or_default();
                !pods.is_empty()
                    && pods.iter().all(|p| logs_requests(p) == Some(on))
                    && self.live_instances(revision) > 0
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn unstartable_container(&self) -> String {
        // An image no registry has: its tag cannot be resolved to a digest (ContainerMissing,
        // as Knative reports it).
        "        - image: example.invalid/nonexistent/program\n".into()
    }

    fn namespace(&self) -> String {
        self.ns.clone()
    }

    fn other_namespace(&self) -> String {
        self.other
            .get_or_init(|| {
                let ns = format!("{}-alt", self.ns);
                create_namespace(self.cluster, &ns, &self.test);
                ns
            })
            .clone()
    }

    fn domain(&self) -> String {
        DOMAIN.into()
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Knative's ConfigMaps as they were, then the lock for the next case that changes them.
        let restore = std::mem::take(&mut *self.restore.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_map: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
        for ((cm, k), v) in restore {
            by_map
                .entry(cm)
                .or_default()
                .insert(k, v.map(Value::String).unwrap_or(Value::Null));
        }
        for (cm, data) in by_map {
            let path = format!("/api/v1/namespaces/knative-serving/configmaps/{cm}");
            if let Err(e) = self.cluster.api(
                "PATCH",
                &path,
                "application/merge-patch+json",
                Some(&json!({ "data": data })),
            ) {
                eprintln!("restoring {cm}: {e:?}");
            }
        }
        self.config.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut namespaces = vec![self.ns.clone()];
        namespaces.extend(self.other.get().cloned());
        for ns in namespaces {
            let _ = kubectl(
                &self.cluster.admin,
                &["delete", "namespace", &ns, "--wait=false"],
                None,
            );
        }
    }
}
