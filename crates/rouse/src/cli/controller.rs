//! `rouse controller`: the reconcilers local mode runs, over a Kubernetes cluster. The store
//! is the API server (informer caches, writes with conflicts retried by the reconcilers'
//! backoff), the runtime is Deployments, networking is Services, EndpointSlices and Ingresses.
//! One replica leads at a time, elected on a Lease; a follower waits, and a leader that loses
//! its Lease stops its reconcilers (stops writing) and goes back to waiting.
//!
//! Every replica, leader or not, serves Knative's admission webhooks and reads Knative's
//! ConfigMaps live: a change takes effect without a restart.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rouse_api::config::Config;
use rouse_api::config::SharedConfig;
use rouse_api::config::features::{Flag, TAG_HEADER_BASED_ROUTING};
use rouse_controller::{Context, Controller};
use rouse_kube::cache::ClusterStore;
use rouse_kube::config_watch::{self, LiveConfig, deployment_config};
use rouse_kube::install::{HEALTH_PORT, NAMESPACE, WEBHOOK_PORT};
use rouse_kube::leader::{LeaseConfig, LeaseLock, elect};
use rouse_kube::networking::KubeNetworking;
use rouse_kube::revision::DeploymentConfig;
use rouse_kube::route::IngressConfig;
use rouse_kube::runtime::KubeRuntime;
use rouse_kube::stat_stream::{self, ActivatorStats, StreamEnd, StreamToken};
use rouse_kube::webhook::{self, WebhookOptions};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease the controllers elect their leader on.
pub const LEASE: &str = "rouse-controller";

/// `rouse controller` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// A kubeconfig for the cluster; without it, the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The domain of every Route while config-domain names no domain (absent, or no keys);
    /// once it names some, the Routes none selects are cluster-local, as in Knative.
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// This replica's name in the Lease (default: $POD_NAME, else host name and pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// The image the queue-proxy sidecar runs (config-deployment `queue-sidecar-image`).
    #[arg(long, default_value = rouse_kube::install::DEFAULT_IMAGE)]
    pub queue_image: String,
    /// Where the admission webhooks listen (HTTPS).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], WEBHOOK_PORT as u16)))]
    pub webhook_listen: SocketAddr,
    /// Outside the cluster: the https:// URL the API server reaches the webhooks at (this
    /// process's --webhook-listen); the WebhookConfigurations are pointed at it instead of
    /// the `webhook` Service.
    #[arg(long, value_name = "URL", value_parser = parse_webhook_url)]
    pub webhook_url: Option<String>,
    /// Where the activators' stat streams are accepted (the `autoscaler` Service's port; port
    /// 0 picks a free one). The address is printed on stdout.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub autoscaler_listen: SocketAddr,
    /// Where `/healthz` and `/readyz` are served (the Deployment's probes).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT as u16)))]
    pub health_listen: SocketAddr,
}

fn parse_webhook_url(s: &str) -> Result<String, String> {
    webhook::check_url(s).map(|()| s.trim_end_matches('/').to_string())
}

/// A client from `kubeconfig`, or from the in-cluster service account without one.
pub(crate) async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => {
            kube::Config::incluster().context("no --kubeconfig and not running in a cluster")?
        }
    };
    Ok(kube::Client::try_from(config)?)
}

fn identity(args: &ControllerArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "rouse".into());
            format!("{host}-{}", std::process::id())
        })
}

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(args: &ControllerArgs) -> anyhow::Result<()> {
    // The Kubernetes client, the informers and the writes run on their own threads: the
    // store's synchronous calls block their caller until this runtime answers.
    let kube_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rouse-kube")
        .enable_all()
        .build()?;
    let handle = kube_rt.handle().clone();
    let result = lead_and_reconcile(args, handle).await;
    kube_rt.shutdown_background();
    result
}

async fn lead_and_reconcile(
    args: &ControllerArgs,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let a = args.clone();
    let client = handle
        .spawn(async move { kube_client(a.kubeconfig.as_deref()).await })
        .await??;
    let me = identity(args);
    let lock = LeaseLock::new(client.clone(), LeaseConfig::new(NAMESPACE, LEASE, &me));
    let mut leading: watch::Receiver<bool> = handle.spawn(async move { elect(lock) }).await?;

    // A half-done install (a CRD or a permission missing) is reported once, by name.
    handle.spawn(rouse_kube::preflight::report(
        client.clone(),
        rouse_kube::install::Role::Controller,
    ));
    let store = Arc::new(ClusterStore::start(client.clone(), handle.clone()));
    // Rouse's install sets config-network's ingress class to its gateway's; until the
    // ConfigMap is read, the Ingresses are written for that class too, not Knative's default.
    let mut defaults = Config::default();
    defaults.network.ingress_class = rouse_api::ingress::ROUSE_CLASS.to_string();
    let config = SharedConfig::new(defaults);
    let live = config_watch::start(client.clone(), &handle, NAMESPACE, config.clone());
    let serving = serve_webhooks(args, &client, &handle, config.clone()).await?;
    serve_probes(args, &handle, &store, &live, serving).await?;
    let base = DeploymentConfig {
        queue_image: args.queue_image.clone(),
        ..DeploymentConfig::default()
    };
    let runtime = KubeRuntime::start(
        client.clone(),
        handle.clone(),
        store.clone(),
        deployment_config(&config.get(), &live.deployment.borrow(), &base),
    );
    runtime.set_tag_resolution(live.deployment.borrow().tag_resolution());
    let activator_stats = start_stat_stream(args, &client, &handle, &leading).await?;
    let networking = Arc::new(
        KubeNetworking::new(
            client.clone(),
            handle.clone(),
            store.clone(),
            ingress_config(&live, &args.domain),
        )
        .with_activator_stats(activator_stats.clone()),
    );
    // The reconcilers of the current term, if leading: a config change resyncs them.
    let reconciling: Arc<Mutex<Option<Arc<Context>>>> = Arc::default();
    {
        // The seams' own settings follow the ConfigMaps too.
        let (live, runtime, networking) = (live.clone(), runtime.clone(), networking.clone());
        let (domain, reconciling) = (args.domain.clone(), reconciling.clone());
        let mut changes = live.changes.clone();
        handle.spawn(async move {
            // The first publication (the ConfigMaps as listed) comes here too: the seams
            // were built before it.
            while changes.changed().await.is_ok() {
                let cfg = live.config.get();
                runtime.set_config(deployment_config(&cfg, &live.deployment.borrow(), &base));
                runtime.set_tag_resolution(live.deployment.borrow().tag_resolution());
                networking.set_ingress_config(ingress_config(&live, &domain));
                let current = reconciling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(ctx) = current {
                    info!("config changed: reconciling everything again");
                    ctx.resync();
                }
            }
        });
    }
    info!(identity = %me, "waiting for the caches and the lease");
    let stop = terminated();
    tokio::pin!(stop);
    tokio::select! {
        _ = async {
            tokio::join!(store.wait_synced(), live.wait_synced(), networking.wait_synced())
        } => {}
        _ = &mut stop => return Ok(()),
    }
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { r?; }
            _ = &mut stop => return Ok(()),
        }
        info!(identity = %me, "leading: reconciling");
        advertise_autoscaler(&client, &handle, &leading);
        let controller = Controller::new(
            store.clone(),
            runtime.clone(),
            networking.clone(),
            config.clone(),
            args.domain.clone(),
        )
        .with_pokes(activator_stats.begin_term());
        *reconciling.lock().unwrap_or_else(|p| p.into_inner()) = Some(controller.context());
        let mut lost = leading.clone();
        let mut stopped = false;
        controller
            .run(async {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => {}
                    _ = &mut stop => stopped = true,
                }
            })
            .await;
        *reconciling.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if stopped {
            return Ok(());
        }
        warn!(identity = %me, "lost the lease: stopped reconciling");
    }
}

fn ingress_config(live: &LiveConfig, domain: &str) -> IngressConfig {
    let cfg = live.config.get();
    IngressConfig {
        network: cfg.network.clone(),
        domain: domain.to_string(),
        domains: cfg.domain.clone(),
        tag_header_routing: cfg.features.get(TAG_HEADER_BASED_ROUTING) == Flag::Enabled,
    }
}

/// Serves `/healthz` and `/readyz`; ready once the caches and ConfigMaps are synced and the
/// webhooks answer (every replica serves them, leader or not).
async fn serve_probes(
    args: &ControllerArgs,
    handle: &tokio::runtime::Handle,
    store: &Arc<ClusterStore>,
    live: &LiveConfig,
    mut serving: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = args.health_listen;
    let listener = handle
        .spawn(async move { tokio::net::TcpListener::bind(addr).await })
        .await?
        .with_context(|| format!("--health-listen {addr}"))?;
    let (ready_tx, ready) = watch::channel(false);
    handle.spawn(rouse_kube::health::serve(listener, ready));
    let (store, live) = (store.clone(), live.clone());
    handle.spawn(async move {
        let webhooks = async move {
            let _ = serving.wait_for(|s| *s).await;
        };
        tokio::join!(store.wait_synced(), live.wait_synced(), webhooks);
        ready_tx.send_replace(true);
    });
    Ok(())
}

/// Binds the webhooks' port (a failure ends the process: another process holds it) and
/// serves them on the Kubernetes runtime, keeping their certificates and registration current.
async fn serve_webhooks(
    args: &ControllerArgs,
    client: &kube::Client,
    handle: &tokio::runtime::Handle,
    config: SharedConfig,
) -> anyhow::Result<watch::Receiver<bool>> {
    let addr = args.webhook_listen;
    let listener = handle
        .spawn(async move { tokio::net::TcpListener::bind(addr).await })
        .await?
        .with_context(|| format!("--webhook-listen {addr}"))?;
    let opts = WebhookOptions {
        url: args.webhook_url.clone(),
        ..WebhookOptions::new(NAMESPACE)
    };
    let (serving_tx, serving) = watch::channel(false);
    handle.spawn(webhook::run(
        client.clone(),
        opts,
        listener,
        config,
        serving_tx,
    ));
    Ok(serving)
}

/// Binds the activators' stat stream endpoint and serves it on the Kubernetes runtime, with
/// the token kept from its Secret; streams are accepted only while this replica leads.
async fn start_stat_stream(
    args: &ControllerArgs,
    client: &kube::Client,
    handle: &tokio::runtime::Handle,
    leading: &watch::Receiver<bool>,
) -> anyhow::Result<Arc<ActivatorStats>> {
    let addr = args.autoscaler_listen;
    let listener = handle
        .spawn(async move { tokio::net::TcpListener::bind(addr).await })
        .await?
        .with_context(|| format!("--autoscaler-listen {addr}"))?;
    println!(
        "rouse controller: autoscaler stream on {}",
        listener.local_addr()?
    );
    let _ = std::io::stdout().flush();
    let stats = Arc::new(ActivatorStats::default());
    let token = Arc::new(StreamToken::default());
    handle.spawn(stat_stream::keep_token(client.clone(), token.clone()));
    let end = Arc::new(StreamEnd {
        stats: stats.clone(),
        token,
        leading: leading.clone(),
    });
    handle.spawn(stat_stream::serve(listener, end, std::future::pending()));
    Ok(stats)
}

/// In a pod ($POD_IP set), publishes this replica as the `autoscaler` Service's endpoint, so
/// the activators' streams reach the leader. Out of the cluster the activators are pointed at
/// the controller with `--autoscaler URL` instead.
/// Retried while this replica still leads.
fn advertise_autoscaler(
    client: &kube::Client,
    handle: &tokio::runtime::Handle,
    leading: &watch::Receiver<bool>,
) {
    let Some(ip) = std::env::var("POD_IP")
        .ok()
        .and_then(|v| v.parse::<IpAddr>().ok())
    else {
        return;
    };
    let pod = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty());
    let (client, leading) = (client.clone(), leading.clone());
    handle.spawn(async move {
        let mut backoff = std::time::Duration::from_millis(200);
        while *leading.borrow() {
            match stat_stream::advertise(&client, ip, pod.as_deref()).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, "publishing this replica as the autoscaler's endpoint failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    });
}
