//! `rouse serve`: the whole platform in one process — the API, the store, the controller, the
//! gateway and the local process runtime with a queue-proxy per instance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rouse_activator::{Activator, ActivatorConfig};
use rouse_api::Kind;
use rouse_api::config::Config;
use rouse_api::decode::parse_documents;
use rouse_controller::{Controller, Networking};
use rouse_gateway::{Gateway, TrustedProxies};
use rouse_http::{DEFAULT_MIN_BODY_RATE, MinBodyRate, ServerLimits};
use rouse_runtime::{ProcessRuntime, Runtime};
use rouse_store::{EmbeddedStore, Store, StoreError};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admission::{Target, admit};
use crate::api::{ApiState, serve_api_tls};
use crate::cli::gateway::GATEWAY_INFO_METRIC;
use crate::host::{self, DESCRIPTOR_RESERVE, HostArgs};
use crate::local::networking::LocalNetworking;

/// Longest wait for in-flight work at shutdown before giving up on it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `rouse serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Manifests to apply at start (file or directory), repeatable.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Knative ConfigMaps (file or directory), repeatable.
    #[arg(long)]
    pub config: Vec<PathBuf>,
    /// Where the database, logs, instance files and the API token live (the global
    /// `--data-dir`, copied in by the CLI).
    #[arg(skip = PathBuf::from(crate::cli::DEFAULT_DATA_DIR))]
    pub data_dir: PathBuf,
    /// The gateway's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The API's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// The domain routes are served under, `{route}.{namespace}.{domain}`, while
    /// config-domain names no domain (absent, or no keys).
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Workloads and client connections.
    #[command(flatten)]
    pub host: HostArgs,
    /// Serve the API on a non-loopback `--api-listen` over plain HTTP (the token then crosses
    /// the network in the clear).
    #[arg(long)]
    pub insecure: bool,
    /// Serve the API over TLS with a certificate signed by a CA Rouse keeps in
    /// `<data-dir>/tls` (the CLI and `rouse kubeconfig` trust it).
    #[arg(long)]
    pub tls: bool,
    /// Serve the API over TLS with this certificate chain (PEM) instead.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A host name the API also answers to (besides localhost, loopback and the listen
    /// address), e.g. the name in `--tls-cert`; repeatable.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
}

/// Runs the platform until SIGINT or SIGTERM, then drains and stops every instance.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config_texts = load_config_texts(&args.config)?;
    // `--config` must be valid on its own (its errors name its files' documents).
    Config::from_yaml_texts(&config_texts).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let descriptors = host::descriptors(args.host.max_connections);
    let tls_wanted = args.tls || args.tls_cert.is_some();
    check_api_exposure(args.api_listen, args.insecure, tls_wanted)?;
    // Bind first: a port in use fails before anything is written (no stray data dir).
    let gateway_listener = listen(args.listen, GATEWAY_BACKLOG)
        .with_context(|| format!("gateway cannot listen on {}", args.listen))?;
    let api_listener = std::net::TcpListener::bind(args.api_listen)
        .with_context(|| format!("API cannot listen on {}", args.api_listen))?;
    api_listener.set_nonblocking(true)?;
    let gateway_addr = gateway_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let token: Arc<str> = crate::api::auth::load_or_create_token(&args.data_dir)?.into();
    // ConfigMaps written through the API by an earlier run win over `--config`'s.
    let (configmaps, config) = crate::api::configmaps::ConfigMaps::seeded(&config_texts)
        .persisted_in(&args.data_dir.join("configmaps"))?;
    let config = Arc::new(config);
    // What the API and the controller read: ConfigMap writes through the API replace it.
    let shared_config = rouse_api::config::SharedConfig::new((*config).clone());
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&args.data_dir)
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let api_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::api::tls::from_files(cert, key)?),
        _ if args.tls => Some(crate::api::tls::generated(
            &args.data_dir,
            api_addr,
            &args.api_hosts,
        )?),
        _ => None,
    };
    let api_scheme = if api_tls.is_some() { "https" } else { "http" };

    // Every queue-proxy follows config-observability's request log as it is changed.
    let request_log = rouse_queue::RequestLogSwitch::new();
    {
        let switch = request_log.clone();
        shared_config.on_change(move |c| switch.set(&c.observability));
    }
    let runtime = ProcessRuntime::with_options(
        std::fs::canonicalize(&args.data_dir)?,
        rouse_runtime::RuntimeOptions {
            request_log: Some(request_log),
            ..args.host.runtime_options()
        },
    );
    // The store holds the data dir now: what is recorded there is an earlier run's.
    host::clean_leftovers(&runtime);
    host::sweep_logs(runtime.as_ref(), store.as_ref(), &args.data_dir);
    // The activator pokes the autoscaler through this channel on a revision's first request.
    let (poke_tx, poke_rx) = tokio::sync::mpsc::unbounded_channel();
    let activator = Activator::new(
        ActivatorConfig {
            queue_depth: config.autoscaler.activator_queue_depth,
            ..ActivatorConfig::default()
        },
        Arc::new(move |ns: &str, rev: &str| {
            let _ = poke_tx.send((ns.to_string(), rev.to_string()));
        }),
    );
    let gateway = Gateway::new(activator.clone());
    // Followed as ConfigMap writes change them (as `rouse activator` on a cluster does).
    {
        let activator = activator.clone();
        shared_config.on_change(move |c| {
            activator.set_queue_depth(c.autoscaler.activator_queue_depth);
            rouse_http::set_allow_underscores_in_headers(c.network.allow_underscores_in_headers);
        });
    }
    gateway.set_trusted_proxies(
        TrustedProxies::parse(&config.network.trusted_proxies.join(","))
            .context("config-network trusted-proxies")?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let limits = ServerLimits {
        connections: rouse_http::ConnectionLimit {
            max: Some(descriptors.max_connections),
            descriptor_limit: Some(descriptors.limit),
            descriptor_reserve: DESCRIPTOR_RESERVE,
        },
        min_body_rate: (config.network.request_body_min_rate > 0).then_some(MinBodyRate {
            bytes_per_second: config.network.request_body_min_rate,
            ..DEFAULT_MIN_BODY_RATE
        }),
        ..ServerLimits::default()
    };
    let gateway_task = tokio::spawn(gateway.clone().serve_with(
        gateway_listener,
        stopped(),
        limits,
    ));
    let api_state = ApiState {
        store: store.clone(),
        config: shared_config.clone(),
        configmaps: Arc::new(configmaps),
        namespaces: Arc::new(crate::api::namespaces::Namespaces::persisted_in(
            &args.data_dir.join("namespaces.json"),
        )?),
        token,
    };
    let metrics_activator = activator.clone();
    let metrics: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || platform_metrics(&metrics_activator, gateway_addr));
    let api_done = spawn_api_thread(
        api_listener,
        api_state,
        metrics,
        api_tls.map(|t| t.config),
        args.api_hosts.clone(),
        stopped(),
    )?;
    let networking: Arc<dyn Networking> = Arc::new(LocalNetworking {
        gateway: gateway.clone(),
        activator: activator.clone(),
    });
    let runtime_dyn: Arc<dyn Runtime> = runtime.clone();
    let controller = Controller::new(
        store.clone(),
        runtime_dyn,
        networking,
        shared_config.clone(),
        args.domain.clone(),
    )
    .with_pokes(poke_rx);
    let controller_task = tokio::spawn(controller.run(stopped()));
    tokio::spawn(trim_after_bursts(stopped()));

    println!("Rouse is serving.");
    println!("  Gateway: http://{gateway_addr}");
    println!("  API: {api_scheme}://{api_addr}");
    println!(
        "  API token: {} (rouse reads it from there; `rouse kubeconfig` prints a kubeconfig)",
        args.data_dir.join(crate::api::auth::TOKEN_FILE).display()
    );
    println!(
        "  Client connections: at most {} (open-file limit {})",
        descriptors.max_connections, descriptors.limit
    );
    let mut services = Vec::new();
    for path in &args.files {
        for (kind, ns, name, outcome) in apply_path(store.as_ref(), &config, path)? {
            println!(
                "{}/{name} {outcome} (namespace {ns})",
                kind.name().to_lowercase()
            );
            if kind == Kind::Service {
                services.push((ns, name));
            }
        }
    }
    if !services.is_empty() {
        let (store, config, domain) = (store.clone(), config.clone(), args.domain.clone());
        let stopping = stopped();
        tokio::spawn(async move {
            tokio::select! {
                _ = report_services(store, config, domain, gateway_addr, services) => {}
                _ = stopping => {}
            }
        });
    }

    wait_for_signal().await?;
    println!("Shutting down: draining instances.");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE * 20, runtime.shutdown()).await;
    if drained.is_err() {
        tracing::warn!("Instances did not stop in time.");
    }
    for task in [gateway_task, controller_task] {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, api_done).await;
    println!("Stopped.");
    Ok(())
}

/// Refuses a non-loopback API address over plain HTTP unless `--insecure` says so.
fn check_api_exposure(api_listen: SocketAddr, insecure: bool, tls: bool) -> anyhow::Result<()> {
    if api_listen.ip().is_loopback() || tls {
        return Ok(());
    }
    if !insecure {
        bail!(
            "--api-listen {api_listen} is reachable from other machines and the API speaks plain HTTP: \
             its token would cross the network in the clear. Serve it over TLS (--tls, or \
             --tls-cert FILE --tls-key FILE), keep it on loopback (reach it through an SSH \
             tunnel), or pass --insecure to accept the risk"
        );
    }
    eprintln!(
        "WARNING: the API listens on {api_listen} over plain HTTP (--insecure): anyone on the path can read its token"
    );
    Ok(())
}

/// Runs the API on a runtime of its own (one worker on its own OS thread), so parsing or
/// admitting a hostile manifest can never take a thread from the data path. The returned
/// receiver completes when the API has stopped.
fn spawn_api_thread(
    listener: std::net::TcpListener,
    state: ApiState,
    metrics: crate::api::MetricsFn,
    tls: Option<Arc<rustls::ServerConfig>>,
    extra_hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("rouse-api")
        .enable_all()
        .build()
        .context("starting the API's runtime")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rouse-api-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        serve_api_tls(listener, state, metrics, tls, &extra_hosts, shutdown).await
                    }
                    Err(e) => tracing::error!(error = %e, "api: cannot use the listener"),
                }
            });
            let _ = done_tx.send(());
        })
        .context("starting the API's thread")?;
    Ok(done_rx)
}

/// Sets the allocator up for a long-running server whose resident memory matters. Call it
/// first thing, before the async runtime starts its threads.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    malloc::tune();
}

/// How often the allocator's free memory is looked at.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_CHECK: Duration = Duration::from_secs(1);

/// Memory freed since the last trim (bytes) that makes the next check give it back to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_AFTER_FREED: usize = 512 * 1024;

/// Gives memory back to the OS after a burst freed it: glibc keeps freed pages resident inside
/// the heap (only its top is released on its own), so the footprint after a burst of work would
/// otherwise stay at the burst's peak. A check costs a walk of the allocator's free lists; a
/// trim happens only after at least [`TRIM_AFTER_FREED`] more bytes were freed.
async fn trim_after_bursts<F: std::future::Future<Output = ()>>(stopped: F) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut tick = tokio::time::interval(TRIM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trimmer = malloc::Trimmer::default();
        let mut stopped = std::pin::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tick.tick() => {
                    trimmer.check(TRIM_AFTER_FREED);
                }
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    stopped.await;
}

/// glibc malloc's knobs (`mallopt`, `mallinfo2`, `malloc_trim`).
// Why unsafe: these are plain C calls without safe wrappers; they take no pointers.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod malloc {
    /// Allocations from this size up get their own mapping, unmapped when freed. Fixing it
    /// (glibc's initial value) also stops glibc from raising it, and the trim threshold with
    /// it, after a large block is freed: past one such block, megabytes of free heap stayed
    /// resident.
    const MMAP_THRESHOLD: i32 = 128 * 1024;
    /// Free memory at the top of the heap beyond this goes back to the OS at once.
    const TRIM_THRESHOLD: i32 = 128 * 1024;

    /// One arena for every thread (glibc gives each new thread its own, up to 8 per CPU, and
    /// each keeps its free memory to itself; tokio's workers and blocking threads made four or
    /// five), and fixed mmap and trim thresholds.
    pub(super) fn tune() {
        // SAFETY: mallopt only sets allocator parameters; it is called before other threads
        // exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }

    /// Bytes held free inside the heap (resident or already given back by a trim).
    fn free_bytes() -> usize {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        unsafe { libc::mallinfo2() }.fordblks
    }

    /// Trims when the heap's free bytes grew by a threshold since the last trim.
    #[derive(Debug, Default)]
    pub(super) struct Trimmer {
        /// Free bytes right after the last trim, lowered when free memory is reused (those
        /// pages are resident again and count once freed anew).
        baseline: usize,
    }

    impl Trimmer {
        /// Trims if at least `threshold` bytes were freed since the last trim; true if it did.
        pub(super) fn check(&mut self, threshold: usize) -> bool {
            let free = free_bytes();
            if free < self.baseline + threshold {
                self.baseline = self.baseline.min(free);
                return false;
            }
            trim();
            self.baseline = free_bytes();
            true
        }
    }

    /// Gives the heap's free pages back to the OS.
    pub(super) fn trim() {
        // SAFETY: malloc_trim takes a size and only releases free pages.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Gives the allocator's free memory back to the OS now (a sidecar gone idle after serving:
/// the buffers its connections freed stay resident inside the heap otherwise).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    malloc::trim();
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Reads `--config` files and directories into one config (Knative defaults for the rest).
pub fn load_config(paths: &[PathBuf]) -> anyhow::Result<Config> {
    let texts = load_config_texts(paths)?;
    Config::from_yaml_texts(&texts).map_err(|e| anyhow::anyhow!("invalid config: {e}"))
}

/// The texts of the `--config` files, in order.
pub fn load_config_texts(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    for p in paths {
        for file in manifest_files(p)? {
            texts.push(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading config {}", file.display()))?,
            );
        }
    }
    Ok(texts)
}

/// The YAML/JSON files of a path: the file itself, or a directory's files sorted by name.
pub fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            bail!("{} does not exist", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Applies the manifests at `path` straight into the store (the same admission as the API).
fn apply_path(
    store: &dyn Store,
    config: &Config,
    path: &Path,
) -> anyhow::Result<Vec<(Kind, String, String, &'static str)>> {
    let mut out = Vec::new();
    for file in manifest_files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let docs =
            parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for mut doc in docs {
            // Relative command paths resolve against the manifest's directory, as `apply -f`.
            if let Some(dir) = file.parent() {
                crate::cli::manifest::resolve_commands(&mut doc, dir);
            }
            out.push(
                apply_one(store, config, doc)
                    .with_context(|| format!("applying {}", file.display()))?,
            );
        }
    }
    Ok(out)
}

fn apply_one(
    store: &dyn Store,
    config: &Config,
    doc: Value,
) -> anyhow::Result<(Kind, String, String, &'static str)> {
    let kind = doc["kind"]
        .as_str()
        .and_then(Kind::from_name)
        .ok_or_else(|| anyhow::anyhow!("unknown kind {}", doc["kind"]))?;
    let ns = doc["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let old = match store.get(kind, &ns, &name) {
        Ok(v) => Some(v),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let target = Target {
        kind,
        namespace: &ns,
        url_name: old.as_ref().map(|_| name.as_str()),
    };
    let admitted = admit(target, doc, old.as_ref(), config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let outcome = match old {
        None => {
            let created = store.create(kind, admitted.object)?;
            let name = created["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            return Ok((kind, ns, name, "created"));
        }
        Some(_) if admitted.unchanged => "unchanged",
        Some(_) => {
            store.update(kind, admitted.object)?;
            "configured"
        }
    };
    Ok((kind, ns, name, outcome))
}

/// How often `serve -f` looks at the services it applied until each is Ready or failed.
const REPORT_POLL: Duration = Duration::from_millis(500);

/// Says, per service applied by `serve -f`, when it is Ready (with a curl line that works) or
/// that it failed and why (the newest revision's container failure included). Returns once
/// every service has an outcome; Knative's progress deadline bounds how long a failure takes.
async fn report_services(
    store: Arc<dyn Store>,
    config: Arc<Config>,
    domain: String,
    gateway: SocketAddr,
    mut pending: Vec<(String, String)>,
) {
    use crate::cli::apply::{Readiness, readiness};
    while !pending.is_empty() {
        pending.retain(|(ns, name)| {
            let Ok(svc) = store.get(Kind::Service, ns, name) else {
                println!("service/{name} was deleted (namespace {ns})");
                return false;
            };
            match readiness(&svc) {
                Readiness::Ready => {
                    let host = config.network.route_host(name, ns, &domain);
                    let port = gateway.port();
                    let url = if port == 80 {
                        format!("http://{host}/")
                    } else {
                        format!("http://{host}:{port}/")
                    };
                    println!(
                        "service/{name} is Ready (namespace {ns}): curl {url}   (or: curl -H 'Host: {host}' http://{gateway}/)"
                    );
                    false
                }
                Readiness::Failed { reason, message } => {
                    let latest = svc
                        .pointer("/status/latestCreatedRevisionName")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let cause = store
                        .get(Kind::Revision, ns, latest)
                        .ok()
                        .and_then(|r| crate::cli::table::container_failure(&r))
                        .filter(|c| !message.contains(c.as_str()))
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default();
                    println!(
                        "service/{name} failed (namespace {ns}): {reason}: {message}{cause}"
                    );
                    false
                }
                Readiness::Pending(_) => true,
            }
        });
        tokio::time::sleep(REPORT_POLL).await;
    }
}

/// Prometheus text for `/metrics`, with the gateway's address as an info metric (the CLI reads
/// it to print URLs with the port).
fn platform_metrics(activator: &Activator, gateway: SocketAddr) -> String {
    let mut out = "# HELP rouse_up 1 while rouse serve runs.\n# TYPE rouse_up gauge\nrouse_up 1\n"
        .to_string();
    out.push_str(&format!(
        "# HELP {GATEWAY_INFO_METRIC} The gateway's listening address.\n# TYPE {GATEWAY_INFO_METRIC} gauge\n{GATEWAY_INFO_METRIC}{{address=\"{gateway}\"}} 1\n"
    ));
    out.push_str(&activator.metrics_text());
    out
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
pub(crate) mod tests {
    use super::malloc::Trimmer;

    /// This process's resident anonymous memory, in KiB.
    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Set in the child process a test runs its measurement in.
    const ALONE_CHILD: &str = "ROUSE_SERVE_TEST_CHILD";

    /// Whether this is the test `name` running alone in a child process of this test binary;
    /// if not, runs it so and checks it passed. A measurement of this process's memory needs
    /// that: other tests running beside it change it.
    pub(crate) fn alone(name: &str) -> bool {
        if std::env::var_os(ALONE_CHILD).is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(ALONE_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    #[test]
    fn memory_freed_inside_the_heap_goes_back_after_a_trim() {
        if !alone("serve::tests::memory_freed_inside_the_heap_goes_back_after_a_trim") {
            return;
        }
        let mut trimmer = Trimmer::default();
        trimmer.check(0);
        // 8 MiB in 64 KiB blocks, each followed by a small one that stays, so the freed
        // blocks are neither merged nor at the heap's top (which glibc would release itself).
        let mut blocks = Vec::new();
        let mut pins = Vec::new();
        for i in 0..128u8 {
            blocks.push(vec![i; 64 * 1024].into_boxed_slice());
            pins.push(vec![i; 2000].into_boxed_slice());
        }
        drop(blocks);
        let before = rss_anon_kb();
        assert!(trimmer.check(512 * 1024), "8 MiB freed and no trim");
        let after = rss_anon_kb();
        assert!(
            after + 4 * 1024 <= before,
            "the trim gave back only {} KiB of 8 MiB freed",
            before.saturating_sub(after)
        );
        assert!(
            !trimmer.check(512 * 1024),
            "a second trim with nothing freed since"
        );
        assert_eq!(pins[127][0], 127);
    }
}

/// The gateway's accept queue: a burst of new connections (a thousand clients at once on a
/// revision at zero, say) must not overflow it, or the kernel drops their SYNs and each
/// dropped client waits a second for its retransmit. The kernel caps it at `somaxconn`.
const GATEWAY_BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and listens with `backlog`.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
