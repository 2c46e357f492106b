//! The `rouse` command line: `serve`, `apply`, `get`, `describe`, `delete` and
//! `autoscaler simulate`, talking to the API over HTTP the way kubectl and kn do.

pub mod apply;
pub mod client;
pub mod controller;
pub mod describe;
pub mod gateway;
pub mod get;
pub mod hops;
pub mod install;
pub mod kubeconfig;
pub mod manifest;
pub mod queue_proxy;
pub mod selector;
pub mod simulate;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rouse_api::Kind;

use crate::serve::ServeArgs;
use client::{ApiClient, ClientError};

/// Knative Serving, rebuilt in Rust.
#[derive(Debug, Parser)]
#[command(name = "rouse", version, about, propagate_version = true)]
pub struct Cli {
    /// The Rouse API to talk to (also accepted after the subcommand).
    #[arg(
        long,
        env = "ROUSE_API",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub api: String,
    /// The namespace to work in (also accepted after the subcommand).
    #[arg(short = 'n', long, default_value = "default", value_name = "NS")]
    pub namespace: String,
    /// The data dir: `rouse serve` keeps its store and API token there; the CLI reads the
    /// token from `<data-dir>/api-token`.
    #[arg(
        long,
        global = true,
        env = "ROUSE_DATA_DIR",
        default_value = DEFAULT_DATA_DIR,
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Where `rouse serve` keeps its state when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = ".rouse";

/// `--api` and `-n` for the commands that talk to the API: given after the subcommand they
/// win over the same flags before it. Not global, so `serve` and `autoscaler simulate`, which
/// take neither, do not list them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiTarget {
    /// The Rouse API to talk to [env: ROUSE_API] [default: http://127.0.0.1:8081]
    #[arg(long = "api", value_name = "URL")]
    pub api: Option<String>,
    /// The namespace to work in [default: default]
    #[arg(short = 'n', long = "namespace", value_name = "NS")]
    pub namespace: Option<String>,
    /// A file holding the API token (instead of `<data-dir>/api-token`; `ROUSE_TOKEN` wins
    /// over both)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl Cli {
    /// The API URL and namespace in force for a subcommand's `target`.
    pub fn resolve(&self, target: &ApiTarget) -> (String, String) {
        (
            target.api.clone().unwrap_or_else(|| self.api.clone()),
            target
                .namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone()),
        )
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform in this process (API, controller, gateway, instances).
    Serve(ServeArgs),
    /// Create or update objects from manifests (multi-document YAML or JSON).
    Apply(apply::ApplyArgs),
    /// List objects of a kind, or show one.
    Get(get::GetArgs),
    /// Show one object in detail: metadata, spec, traffic and conditions.
    Describe(describe::DescribeArgs),
    /// Delete objects (and what they own): by kind and name, or those of manifests (`-f`).
    Delete(get::DeleteArgs),
    /// Print a kubeconfig for this API (server URL, token, and CA for https) that kubectl
    /// accepts.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Autoscaler tools.
    #[command(subcommand)]
    Autoscaler(AutoscalerCommand),
    /// Print the manifests that install Rouse on Kubernetes (pipe to `kubectl apply`).
    Install(install::InstallArgs),
    /// Run the queue-proxy sidecar of a Kubernetes pod, configured by Knative's environment
    /// contract (SERVING_*, QUEUE_SERVING_PORT, USER_PORT, CONTAINER_CONCURRENCY, ...).
    QueueProxy,
    /// Run the activator as a process of its own: it buffers requests for revisions with no
    /// ready pod, fed by a static description of revisions and pods (`--endpoints FILE`).
    Activator(hops::ActivatorArgs),
    /// Run the gateway as a process of its own: routes by host to pods or activators, fed by
    /// a static description of routes, revisions and pods (`--endpoints FILE`).
    Gateway(hops::HopArgs),
    /// Run the controller against a Kubernetes cluster (leader-elected).
    Controller(controller::ControllerArgs),
}

/// `rouse autoscaler ...`.
#[derive(Debug, Subcommand)]
pub enum AutoscalerCommand {
    /// Replay a load trace through the KPA and print its decisions (CSV or SVG).
    Simulate(simulate::SimulateArgs),
}

/// How `get` prints objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

/// A failure already reported on stderr: only the exit code is left to set.
#[derive(Debug, thiserror::Error)]
#[error("failed")]
pub struct Reported;

/// Parses the command line, runs it and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Serve(_) | Command::QueueProxy | Command::Activator(_) | Command::Gateway(_)
    );
    if serving {
        crate::serve::tune_allocator();
    }
    init_tracing(serving);
    run_to_exit(run(cli))
}

/// `rouse-queue-proxy`: `rouse queue-proxy` alone, in a binary that links only what the
/// sidecar runs (a pod's every replica carries one, so its resident size counts).
pub fn sidecar_main() -> ExitCode {
    crate::serve::tune_allocator();
    init_tracing(true);
    run_to_exit(queue_proxy::run())
}

/// Runs `work` on a new async runtime and maps its outcome to an exit code.
fn run_to_exit(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(work);
    // Do not wait for stray blocking tasks (e.g. a stdin read) on the way out.
    rt.shutdown_timeout(Duration::from_secs(1));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error the way kubectl does: server refusals as `Error from server (...)`.
fn report(e: &anyhow::Error) {
    if e.downcast_ref::<Reported>().is_some() {
        return;
    }
    if let Some(c) = e.downcast_ref::<ClientError>() {
        eprintln!("{c}");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// Logs go to stderr; `RUST_LOG` overrides. The CLI's own commands only log warnings. Colour
/// only when stderr is a terminal: a log file or pipe gets plain text. The Kubernetes
/// client's log of every failed connection is left out: the informers report an outage once.
fn init_tracing(serving: bool) {
    use std::io::IsTerminal as _;
    let default = if serving {
        "info,kube_client::client::builder=off"
    } else {
        "warn,kube_client::client::builder=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token =
        |target: &ApiTarget| client::find_token(target.token_file.as_deref(), &cli.data_dir);
    let client = |target: &ApiTarget| -> anyhow::Result<(ApiClient, String)> {
        let (api, ns) = cli.resolve(target);
        let mut c = ApiClient::new(&api)
            .map_err(anyhow::Error::msg)?
            .with_found_token(token(target));
        if c.is_https()
            && let Some(ca) = client::find_ca(&cli.data_dir)
        {
            c = c.with_ca(&ca).map_err(anyhow::Error::msg)?;
        }
        Ok((c, ns))
    };
    match cli.command {
        Command::Serve(ref args) => {
            let mut args = args.clone();
            args.data_dir = cli.data_dir.clone();
            crate::serve::run(args).await
        }
        Command::Kubeconfig(ref args) => {
            let (api, ns) = cli.resolve(&args.target);
            let token = token(&args.target).map_err(anyhow::Error::msg)?;
            let ca = client::find_ca(&cli.data_dir);
            print!("{}", kubeconfig::render(&api, &token, &ns, ca.as_deref())?);
            Ok(())
        }
        Command::Apply(ref args) => {
            let (c, ns) = client(&args.target)?;
            apply::run(&c, &ns, args).await
        }
        Command::Get(ref args) => {
            let (c, ns) = client(&args.target)?;
            get::run_get(&c, &ns, args).await
        }
        Command::Describe(ref args) => {
            let (c, ns) = client(&args.target)?;
            describe::run(&c, &ns, args).await
        }
        Command::Delete(ref args) => {
            let (c, ns) = client(&args.target)?;
            get::run_delete(&c, &ns, args).await
        }
        Command::Autoscaler(AutoscalerCommand::Simulate(ref args)) => simulate::run(args),
        Command::Install(ref args) => install::run(args),
        Command::QueueProxy => queue_proxy::run().await,
        Command::Activator(ref args) => hops::run_activator(args).await,
        Command::Gateway(ref args) => hops::run_gateway(args).await,
        Command::Controller(ref args) => controller::run(args).await,
    }
}

/// Parses a KIND argument: Knative's names and short names (`ksvc`, `rev`, `kpa`, ...).
pub fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_cli(s).ok_or_else(|| {
        format!(
            "the server doesn't have a resource type {s:?} (known: services|ksvc, configurations|config, revisions|rev, routes|rt, podautoscalers|kpa|pa, serverlessservices|sks, domainmappings|dm)"
        )
    })
}

/// Parses a Go duration (`30s`, `5m`, `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    rouse_api::duration::parse_go_duration(s)
}

/// `service.serving.knative.dev`: the kind as kubectl names it in `apply`/`delete` output.
pub fn kind_ref(kind: Kind) -> String {
    format!("{}.{}", kind.name().to_ascii_lowercase(), kind.group())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kinds_by_knative_names() {
        for (s, k) in [
            ("ksvc", Kind::Service),
            ("services", Kind::Service),
            ("service", Kind::Service),
            ("config", Kind::Configuration),
            ("configurations", Kind::Configuration),
            ("rev", Kind::Revision),
            ("revisions", Kind::Revision),
            ("rt", Kind::Route),
            ("route", Kind::Route),
            ("kpa", Kind::PodAutoscaler),
            ("pa", Kind::PodAutoscaler),
            ("podautoscalers", Kind::PodAutoscaler),
            ("sks", Kind::ServerlessService),
            ("serverlessservice", Kind::ServerlessService),
            ("dm", Kind::DomainMapping),
            ("domainmappings", Kind::DomainMapping),
        ] {
            assert_eq!(parse_kind(s), Ok(k), "{s}");
        }
        let e = parse_kind("pods").unwrap_err();
        assert!(e.contains("\"pods\""), "{e}");
    }

    #[test]
    fn api_flags_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["rouse", "get", "ksvc"]).unwrap();
        let Command::Get(g) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(g.output, OutputFormat::Table);
        assert_eq!(cli.resolve(&g.target).1, "default");
        let cli = Cli::try_parse_from([
            "rouse",
            "get",
            "rev",
            "hello-00001",
            "-o",
            "yaml",
            "-n",
            "ns1",
            "--api",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        let Command::Get(g) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(
            cli.resolve(&g.target),
            ("http://127.0.0.1:9".to_string(), "ns1".to_string())
        );
        let cli = Cli::try_parse_from([
            "rouse",
            "--api",
            "http://127.0.0.1:7",
            "-n",
            "before",
            "describe",
            "ksvc",
            "x",
        ])
        .unwrap();
        let Command::Describe(d) = &cli.command else {
            panic!("not describe")
        };
        assert_eq!(
            cli.resolve(&d.target),
            ("http://127.0.0.1:7".to_string(), "before".to_string())
        );
        let cli =
            Cli::try_parse_from(["rouse", "apply", "-f", "-", "--wait", "--timeout", "1m30s"])
                .unwrap();
        let Command::Apply(a) = &cli.command else {
            panic!("not apply")
        };
        assert!(a.wait);
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["rouse", "apply", "-f", "x", "--timeout", "10"]).is_err());
        assert!(Cli::try_parse_from(["rouse", "get", "ksvc", "-o", "wide"]).is_err());
        let cli = Cli::try_parse_from(["rouse", "delete", "rt", "r1"]).unwrap();
        let Command::Delete(d) = &cli.command else {
            panic!("not delete")
        };
        assert_eq!(
            (d.kind.as_deref(), d.name.as_deref()),
            (Some("rt"), Some("r1"))
        );
        assert!(Cli::try_parse_from(["rouse", "delete", "-f", "x.yaml"]).is_ok());
        assert!(Cli::try_parse_from(["rouse", "delete", "rt"]).is_err());
        assert!(Cli::try_parse_from(["rouse", "delete", "rt", "r1", "-f", "x.yaml"]).is_err());
        assert_eq!(kind_ref(Kind::Service), "service.serving.knative.dev");
    }

    #[test]
    fn serve_and_simulate_do_not_take_api_flags() {
        assert!(Cli::try_parse_from(["rouse", "serve", "--api", "http://x:1"]).is_err());
        assert!(
            Cli::try_parse_from(["rouse", "autoscaler", "simulate", "--trace", "t", "-n", "x"])
                .is_err()
        );
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_help().to_string();
        assert!(
            !help.contains("--api ") && !help.contains("--namespace"),
            "{help}"
        );
    }
}
