//! `rouse autoscaler simulate`: replays a load trace through the KPA and prints its decisions.

use std::path::PathBuf;
use std::time::Duration;

use super::parse_duration;

/// `rouse autoscaler simulate` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = TRACE_FORMAT, after_help = "The trace format: see --help.")]
pub struct SimulateArgs {
    /// The load trace: CSV with a header `second,concurrency` (or `second,rps` with
    /// autoscaling.knative.dev/metric=rps), one row per recorded second. See --help.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// A revision annotation (`autoscaling.knative.dev/...`), repeatable.
    #[arg(long = "annotation", value_parser = parse_key_value, value_name = "KEY=VALUE")]
    pub annotations: Vec<(String, String)>,
    /// A `config-autoscaler` ConfigMap to use instead of Knative's defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The revision's containerConcurrency (0 = unlimited).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub container_concurrency: i64,
    /// How long a new instance takes to become ready (a Go duration).
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub startup_delay: Duration,
    /// What to print.
    #[arg(long, value_enum, default_value = "csv")]
    pub output: SimOutput,
}

/// The trace CSV format, shown by `--help`.
const TRACE_FORMAT: &str = "\
The trace (--trace FILE) is CSV:
  - a header row naming the columns `second` and the metric's column: `concurrency` (requests
    in flight, the default metric) or `rps` (requests per second, with
    --annotation autoscaling.knative.dev/metric=rps), in either order;
  - then one row per recorded second: a whole second (0 or more, each row later than the
    previous one, at most a week) and the revision's total load in that second (a
    non-negative number). A second left out means nothing was recorded then; blank lines
    are skipped.
Example:
  second,concurrency
  0,0
  30,20
  60,0
Samples: examples/autoscaling/*.csv.
Output: CSV with one row per autoscaler tick (second,stable,panic,desired,applied,ready,
panic_mode,ebc,mode), or with --output svg a chart of load and instances.";

/// The simulator's output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimOutput {
    Csv,
    Svg,
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Runs the simulation and prints its result to stdout.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let out = run_simulator(args)?;
    print!("{out}");
    Ok(())
}

/// Hands the arguments to `rouse_autoscaler::simulator`.
fn run_simulator(args: &SimulateArgs) -> anyhow::Result<String> {
    use rouse_autoscaler::simulator::{OutputFormat, SimulateOptions, run};
    let opts = SimulateOptions {
        trace: args.trace.clone(),
        annotations: args.annotations.clone(),
        config: args.config.clone(),
        container_concurrency: args.container_concurrency,
        startup_delay: args.startup_delay,
        output: match args.output {
            SimOutput::Csv => OutputFormat::Csv,
            SimOutput::Svg => OutputFormat::Svg,
        },
    };
    Ok(run(&opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("autoscaling.knative.dev/target=10"),
            Ok(("autoscaling.knative.dev/target".into(), "10".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
