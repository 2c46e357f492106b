//! The `rouse` command line: `serve`, `apply`, `get`, `describe`, `delete` and
//! `autoscaler simulate`, talking to the API over HTTP the way kubectl and kn do.

pub mod apply;
pub mod client;
pub mod describe;
pub mod get;
pub mod install;
pub mod manifest;
pub mod simulate;
pub mod table;

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
    /// The Rouse API to talk to.
    #[arg(
        long,
        global = true,
        env = "ROUSE_API",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub api: String,
    /// The namespace to work in.
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value = "default",
        value_name = "NS"
    )]
    pub namespace: String,
    #[command(subcommand)]
    pub command: Command,
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
    /// Delete an object (and what it owns).
    Delete(get::DeleteArgs),
    /// Autoscaler tools.
    #[command(subcommand)]
    Autoscaler(AutoscalerCommand),
    /// Print the manifests that install Rouse on Kubernetes (pipe to `kubectl apply`).
    Install(install::InstallArgs),
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
    let serving = matches!(cli.command, Command::Serve(_));
    if serving {
        crate::serve::tune_allocator();
    }
    init_tracing(serving);
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
    let res = rt.block_on(run(cli));
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

/// Logs go to stderr; `RUST_LOG` overrides. The CLI's own commands only log warnings.
fn init_tracing(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || ApiClient::new(&cli.api).map_err(anyhow::Error::msg);
    match cli.command {
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Apply(ref args) => apply::run(&client()?, &cli.namespace, args).await,
        Command::Get(ref args) => get::run_get(&client()?, &cli.namespace, args).await,
        Command::Describe(ref args) => describe::run(&client()?, &cli.namespace, args).await,
        Command::Delete(ref args) => get::run_delete(&client()?, &cli.namespace, args).await,
        Command::Autoscaler(AutoscalerCommand::Simulate(ref args)) => simulate::run(args),
        Command::Install(ref args) => install::run(args),
    }
}

/// Parses a KIND argument: Knative's names and short names (`ksvc`, `rev`, `kpa`, ...).
pub fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_cli(s).ok_or_else(|| {
        format!(
            "the server doesn't have a resource type {s:?} (known: services|ksvc, configurations|config, revisions|rev, routes|rt, podautoscalers|kpa|pa, serverlessservices|sks)"
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
        ] {
            assert_eq!(parse_kind(s), Ok(k), "{s}");
        }
        let e = parse_kind("pods").unwrap_err();
        assert!(e.contains("\"pods\""), "{e}");
    }

    #[test]
    fn global_flags_and_defaults() {
        let cli = Cli::try_parse_from(["rouse", "get", "ksvc"]).unwrap();
        assert_eq!(cli.namespace, "default");
        let Command::Get(g) = &cli.command else {
            panic!("not get")
        };
        assert_eq!(g.output, OutputFormat::Table);
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
        assert_eq!(cli.namespace, "ns1");
        assert_eq!(cli.api, "http://127.0.0.1:9");
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
        assert_eq!((d.kind.as_str(), d.name.as_str()), ("rt", "r1"));
        assert_eq!(kind_ref(Kind::Service), "service.serving.knative.dev");
    }
}
