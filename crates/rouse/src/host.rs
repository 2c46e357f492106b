//! What `rouse serve` takes from the machine and what it lets workloads have: the open-file
//! limit, the client-connection cap derived from it, what an earlier run left behind, and the
//! flags bounding local workloads (instances, logs, environment).

use std::time::Duration;

use rouse_runtime::{
    Backend, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES, DEFAULT_MAX_INSTANCES, ProcessRuntime,
    RuntimeOptions,
};

/// Descriptors kept out of the gateway's reach, so the API, the store and new instances
/// (listener, log file, app connections) keep working when clients take all they may.
pub const DESCRIPTOR_RESERVE: u64 = 128;

/// `rouse serve` flags for local workloads and the gateway's clients.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Pass this variable of rouse serve's environment to every workload (repeatable).
    /// Workloads otherwise get only their declared env, PORT, K_*, and PATH, HOME, LANG, TZ.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// The most instances running at once over all revisions (0: no limit). Scale-ups past
    /// it are refused, and requests to a revision that cannot start get a 503.
    #[arg(long, default_value_t = DEFAULT_MAX_INSTANCES)]
    pub max_instances: usize,
    /// An instance's log file past this size (bytes) is rotated.
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_BYTES)]
    pub log_max_size: u64,
    /// Log files kept per instance, the live one included.
    #[arg(long, default_value_t = DEFAULT_LOG_MAX_FILES, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_max_files: u32,
    /// How long a deleted revision's logs are kept (a duration: 10m, 30s, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub log_retention: Duration,
    /// The most client connections the gateway holds at once. Default: half of the
    /// open-file limit left after a reserve of 128 (each connection may also hold one to an
    /// app). At the cap the idlest keep-alive connection is closed for a new one; with none
    /// idle, new ones are refused.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// What runs revisions: `auto` runs a container with a `command` as a process and one
    /// naming only an image as a Docker container; `process` runs only programs; `docker`
    /// runs every revision as a container (a `command` overrides the image's entrypoint).
    #[arg(long = "runtime", value_name = "process|docker|auto", default_value = "auto",
        value_parser = parse_backend)]
    pub runtime: Backend,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "auto" => Ok(Backend::Auto),
        "process" => Ok(Backend::Process),
        "docker" => Ok(Backend::Docker),
        other => Err(format!("{other:?}: expected process, docker or auto")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rouse_api::duration::parse_go_duration(s)
}

impl HostArgs {
    /// The process runtime's options these flags give.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            pass_env: self.pass_env.clone(),
            max_instances: self.max_instances,
            log_max_bytes: self.log_max_size,
            log_max_files: self.log_max_files,
            log_retention: self.log_retention,
            backend: self.runtime,
            ..RuntimeOptions::default()
        }
    }
}

/// The descriptor limits the gateway works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The open-file limit in force (after raising it).
    pub limit: u64,
    /// The client connections the gateway may hold.
    pub max_connections: usize,
}

/// Raises the open-file soft limit to the hard one (logging both), and works out the
/// gateway's connection cap: `max_connections`, or half of what the reserve leaves.
pub fn descriptors(max_connections: Option<usize>) -> Descriptors {
    let limit = match rouse_runtime::raise_nofile_limit() {
        Ok((before, now)) => {
            tracing::info!(soft_before = before, soft_now = now, "open-file limit");
            now
        }
        Err(e) => {
            let now = rouse_runtime::nofile_limit().map_or(1024, |(soft, _)| soft);
            tracing::warn!(error = %e, soft = now, "cannot raise the open-file limit");
            now
        }
    };
    let derived =
        usize::try_from(limit.saturating_sub(DESCRIPTOR_RESERVE) / 2).unwrap_or(usize::MAX);
    let max_connections = max_connections.unwrap_or(derived).max(1);
    tracing::info!(
        limit,
        reserve = DESCRIPTOR_RESERVE,
        max_connections,
        "gateway client connections capped"
    );
    Descriptors {
        limit,
        max_connections,
    }
}

/// Stops what an earlier `rouse serve` on this data dir left running, and says so.
pub fn clean_leftovers(runtime: &ProcessRuntime) {
    let cleaned = runtime.clean_leftovers();
    if cleaned.is_empty() {
        return;
    }
    println!(
        "Stopped what an earlier run left running ({} instance(s)):",
        cleaned.len()
    );
    for line in cleaned {
        tracing::warn!("{line}");
        println!("  {line}");
    }
}

/// Logs of revisions deleted while no platform ran (or before an earlier one's retention
/// ran out) go after the retention too: the runtime is told each such revision was removed.
pub fn sweep_logs(
    runtime: &dyn rouse_runtime::Runtime,
    store: &dyn rouse_store::Store,
    data_dir: &std::path::Path,
) {
    let Ok((revisions, _)) = store.list(rouse_api::Kind::Revision, None) else {
        return;
    };
    let known: std::collections::HashSet<(String, String)> = revisions
        .iter()
        .filter_map(|r| {
            let m = &r["metadata"];
            Some((
                m["namespace"].as_str()?.to_string(),
                m["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let Ok(namespaces) = std::fs::read_dir(data_dir.join("logs")) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(revs) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        let ns = ns.file_name().to_string_lossy().into_owned();
        for rev in revs.flatten() {
            let rev = rev.file_name().to_string_lossy().into_owned();
            if !known.contains(&(ns.clone(), rev.clone())) {
                runtime.remove(&ns, &rev);
            }
        }
    }
}
