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
use rouse_controller::networking::LocalNetworking;
use rouse_controller::{Controller, Networking};
use rouse_gateway::{Gateway, TrustedProxies};
use rouse_queue::http::{DEFAULT_MIN_BODY_RATE, MinBodyRate, ServerLimits};
use rouse_runtime::{ProcessRuntime, Runtime};
use rouse_store::{EmbeddedStore, Store, StoreError};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admission::{Target, admit};
use crate::api::{ApiState, serve_api};

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
    /// Where the database, logs and instance files live.
    #[arg(long, default_value = ".rouse")]
    pub data_dir: PathBuf,
    /// The gateway's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The API's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// The domain routes are served under: `{route}.{namespace}.{domain}`.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
}

/// Runs the platform until SIGINT or SIGTERM, then drains and stops every instance.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(load_config(&args.config)?);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&args.data_dir)
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let gateway_listener = listen(args.listen, GATEWAY_BACKLOG)
        .with_context(|| format!("gateway cannot listen on {}", args.listen))?;
    let api_listener = TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("API cannot listen on {}", args.api_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    let runtime = ProcessRuntime::new(std::fs::canonicalize(&args.data_dir)?);
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
    rouse_queue::http::set_allow_underscores_in_headers(
        config.network.allow_underscores_in_headers,
    );
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
        config: config.clone(),
    };
    let metrics_activator = activator.clone();
    let metrics: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || platform_metrics(&metrics_activator));
    let api_task = tokio::spawn(serve_api(api_listener, api_state, metrics, stopped()));
    let networking: Arc<dyn Networking> = Arc::new(LocalNetworking {
        gateway: gateway.clone(),
        activator: activator.clone(),
    });
    let runtime_dyn: Arc<dyn Runtime> = runtime.clone();
    let controller = Controller::new(
        store.clone(),
        runtime_dyn,
        networking,
        config.clone(),
        args.domain.clone(),
    )
    .with_pokes(poke_rx);
    let controller_task = tokio::spawn(controller.run(stopped()));
    tokio::spawn(trim_after_bursts(stopped()));

    println!("Rouse is serving.");
    println!("  Gateway: http://{gateway_addr}");
    println!("  API: http://{api_addr}");
    for path in &args.files {
        for (kind, ns, name, outcome) in apply_path(store.as_ref(), &config, path)? {
            println!(
                "{}/{name} {outcome} (namespace {ns})",
                kind.name().to_lowercase()
            );
            if kind == Kind::Service {
                let host = config.network.route_host(&name, &ns, &args.domain);
                println!(
                    "  {name}: curl http://{host}:{port}/   (or: curl -H 'Host: {host}' http://{gateway_addr}/)",
                    port = gateway_addr.port()
                );
            }
        }
    }

    wait_for_signal().await?;
    println!("Shutting down: draining instances.");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE * 20, runtime.shutdown()).await;
    if drained.is_err() {
        tracing::warn!("Instances did not stop in time.");
    }
    for task in [gateway_task, api_task, controller_task] {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    println!("Stopped.");
    Ok(())
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
            // SAFETY: malloc_trim takes a size and only releases free pages.
            unsafe { libc::malloc_trim(0) };
            self.baseline = free_bytes();
            true
        }
    }
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
    let mut texts = Vec::new();
    for p in paths {
        for file in manifest_files(p)? {
            texts.push(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading config {}", file.display()))?,
            );
        }
    }
    Config::from_yaml_texts(&texts).map_err(|e| anyhow::anyhow!("invalid config: {e}"))
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
        for doc in docs {
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

/// Prometheus text for `/metrics`.
fn platform_metrics(activator: &Activator) -> String {
    let mut out = "# HELP rouse_up 1 while rouse serve runs.\n# TYPE rouse_up gauge\nrouse_up 1\n"
        .to_string();
    out.push_str(&activator.metrics_text());
    out
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::malloc::Trimmer;

    /// This process's resident anonymous memory, in KiB.
    fn rss_anon_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn memory_freed_inside_the_heap_goes_back_after_a_trim() {
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
