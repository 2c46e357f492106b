//! The autoscaler simulator behind `rouse autoscaler simulate`: runs the real decider and
//! apply state machine over a load trace and prints every decision as CSV or plots it as SVG.
//!
//! # Model
//!
//! - At t = 0 the revision has `initial-scale` ready instances (default 1), the SKS is in
//!   Proxy mode (as Knative creates it) and the decider is created (in panic mode when more
//!   than one instance is ready).
//! - A trace row `second = s` is recorded at time s (one stat: the revision's total load in
//!   that second). A missing second means nothing was recorded then.
//! - Decider ticks run every 2 s at t = 2, 4, 6, … up to the trace's last second. The tick at t
//!   runs after every row with second ≤ t is recorded; its windows cover (t − window, t].
//!   After the decider, the PodAutoscaler is reconciled at the same instant (bounds, initial
//!   scale, scale-to-zero gates, SKS mode). Requeue timers resolve at the next tick.
//! - Instances asked for become ready `startup_delay` after the tick that asked for them
//!   (0: they count as ready from the next tick). Removed instances leave at once (not yet
//!   ready ones first). The activator probe for scale to zero succeeds at once.
//!
//! # CSV output
//!
//! One row per tick with the header `second,stable,panic,desired,applied,ready,panic_mode,ebc,mode`:
//!
//! | column | meaning |
//! |---|---|
//! | `second` | tick time t |
//! | `stable`, `panic` | the stable and panic window averages at t (6 decimals at most) |
//! | `desired` | the decider's desired scale after activation-scale, panic and scale-down-delay, before bounds and gates (-1 before the first decision; kept when there is no data) |
//! | `applied` | the instance count after bounds and scale-to-zero gates |
//! | `ready` | the ready instances the decision used |
//! | `panic_mode` | 1 while the decider is in panic mode, else 0 |
//! | `ebc` | excess burst capacity |
//! | `mode` | SKS mode: `Serve` (straight to instances) or `Proxy` (through the activator) |
//!
//! # SVG output
//!
//! One chart, two panels sharing the time axis. Top, "load": the trace per second (grey) and
//! the stable (blue) and panic (orange) averages at each tick. Bottom, "instances": applied
//! (green), ready (black) and desired (dashed purple) as steps holding until the next tick.
//! Panic periods are shaded red across both panels; Proxy periods are a grey strip under the
//! instances; axes are labelled. Each series is a `<path>` with a stable id (`series-load`,
//! `series-stable`, `series-panic`, `series-desired`, `series-applied`, `series-ready`);
//! shading is in `<g id="panic-periods">` and `<g id="proxy-periods">`.

mod svg;
pub mod trace;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_api::autoscaling::annotations::{self, RevisionScaling};
use rouse_api::config::ConfigData;
use rouse_api::config::autoscaler::{AutoscalerConfig, CONFIG_NAME};
use tokio::time::Instant;

use crate::apply::{Observed, PaState, ScalingParams, SksMode, reconcile};
use crate::collector::Stat;
use crate::decider::{DeciderSpec, Metric, TICK_INTERVAL};
use crate::revision::RevisionAutoscaler;
pub use trace::{Trace, TraceError};

/// config-deployment's default progress deadline (bounds how long an activation may hang).
const PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Knative's default `container-concurrency-max-limit`.
const CONTAINER_CONCURRENCY_MAX: i64 = 1000;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// One CSV row per tick.
    #[default]
    Csv,
    /// A chart.
    Svg,
}

/// Options of `rouse autoscaler simulate`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// The trace CSV file.
    pub trace: PathBuf,
    /// Revision annotations (`autoscaling.knative.dev/*`), in order; a later key wins.
    pub annotations: Vec<(String, String)>,
    /// A YAML file with Knative ConfigMaps; only `config-autoscaler` is read.
    pub config: Option<PathBuf>,
    /// The revision's `containerConcurrency` (0 = unlimited).
    pub container_concurrency: i64,
    /// How long a new instance takes to become ready.
    pub startup_delay: Duration,
    pub output: OutputFormat,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    // The messages include the cause themselves and name no `source`: an error chain
    // printer (anyhow's `{:#}`) would print it a second time.
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The trace is malformed.
    #[error("{}: {error}", path.display())]
    Trace { path: PathBuf, error: TraceError },
    /// An annotation key the simulator does not know.
    #[error(
        "unknown annotation {key:?}: expected one of the autoscaling.knative.dev/ keys (class, metric, target, target-utilization-percentage, min-scale, max-scale, initial-scale, activation-scale, scale-down-delay, window, panic-window-percentage, panic-threshold-percentage, target-burst-capacity, scale-to-zero-pod-retention-period, metric-aggregation-algorithm)"
    )]
    UnknownAnnotation { key: String },
    /// Annotation values Knative's webhook would refuse (its messages, one per line).
    #[error("invalid annotations:\n{0}")]
    InvalidAnnotations(String),
    /// The revision would not be scaled by the KPA.
    #[error("the simulator models the KPA only, but the class is {0:?}")]
    NotKpa(String),
    /// The config file is malformed or has a value Knative would refuse.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// `containerConcurrency` out of range.
    #[error("--container-concurrency: expected 0 <= {0} <= 1000")]
    ContainerConcurrency(i64),
}

/// Runs a simulation and returns the CSV or SVG text.
pub fn run(opts: &SimulateOptions) -> Result<String, SimulateError> {
    let cfg = match &opts.config {
        Some(p) => load_config(p)?,
        None => AutoscalerConfig::default(),
    };
    let scaling = resolve_annotations(&opts.annotations, &cfg)?;
    if !(0..=CONTAINER_CONCURRENCY_MAX).contains(&opts.container_concurrency) {
        return Err(SimulateError::ContainerConcurrency(
            opts.container_concurrency,
        ));
    }
    let text = std::fs::read_to_string(&opts.trace).map_err(|error| SimulateError::Io {
        path: opts.trace.clone(),
        error,
    })?;
    let metric = if scaling.is_rps() {
        Metric::Rps
    } else {
        Metric::Concurrency
    };
    let trace = trace::parse(&text, metric).map_err(|error| SimulateError::Trace {
        path: opts.trace.clone(),
        error,
    })?;
    let ticks = simulate(
        &trace,
        &scaling,
        &cfg,
        opts.container_concurrency,
        opts.startup_delay,
    );
    Ok(match opts.output {
        OutputFormat::Csv => to_csv(&ticks),
        OutputFormat::Svg => {
            let name = opts.trace.file_name().map_or_else(
                || opts.trace.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            let spec = DeciderSpec::new(&scaling, opts.container_concurrency, &cfg, true);
            // Knative's target is the total per instance times the utilisation.
            let utilisation = if spec.total_value > 0.0 {
                100.0 * spec.target_value / spec.total_value
            } else {
                100.0
            };
            let subtitle = format!(
                "metric {} · target {} × {}% utilisation = {} per instance · stable window {}s · panic window {}s at {}% · TBC {} · startup delay {}s",
                trace::column(metric),
                fmt_num(spec.total_value),
                fmt_num((utilisation * 10.0).round() / 10.0),
                fmt_num(spec.target_value),
                scaling.window.as_secs(),
                scaling.panic_window().as_secs(),
                fmt_num(scaling.panic_threshold_percentage),
                fmt_num(scaling.target_burst_capacity),
                fmt_num(opts.startup_delay.as_secs_f64()),
            );
            svg::render(
                &trace,
                &ticks,
                &format!("Rouse KPA simulation: {name}"),
                &subtitle,
            )
        }
    })
}

/// Checks the annotations the way the webhook would and resolves them against `cfg`.
pub fn resolve_annotations(
    pairs: &[(String, String)],
    cfg: &AutoscalerConfig,
) -> Result<RevisionScaling, SimulateError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if !annotations::is_known(k) {
            return Err(SimulateError::UnknownAnnotation { key: k.clone() });
        }
        map.insert(k.clone(), v.clone());
    }
    let errs = annotations::validate(&map, cfg);
    if !errs.is_empty() {
        return Err(SimulateError::InvalidAnnotations(errs.to_string()));
    }
    let scaling = RevisionScaling::from_annotations(&map, cfg);
    if !scaling.is_kpa() {
        return Err(SimulateError::NotKpa(scaling.class));
    }
    Ok(scaling)
}

/// Reads `config-autoscaler` from a file of YAML documents; other documents are ignored, and
/// a file without it gives Knative's defaults.
pub fn load_config(path: &Path) -> Result<AutoscalerConfig, SimulateError> {
    let text = std::fs::read_to_string(path).map_err(|error| SimulateError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bad = |message: String| SimulateError::Config {
        path: path.to_path_buf(),
        message,
    };
    let docs = rouse_api::decode::parse_documents(&text).map_err(|e| bad(e.to_string()))?;
    for v in docs {
        let name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str());
        if name != Some(CONFIG_NAME) {
            continue;
        }
        let mut data = ConfigData::new();
        if let Some(d) = v.get("data").filter(|d| !d.is_null()) {
            let map = d
                .as_object()
                .ok_or_else(|| bad(format!("{CONFIG_NAME}: data must be a map")))?;
            for (key, val) in map {
                let value = match val {
                    rouse_api::decode::JsonValue::String(s) => s.clone(),
                    rouse_api::decode::JsonValue::Bool(b) => b.to_string(),
                    rouse_api::decode::JsonValue::Number(n) => n.to_string(),
                    _ => {
                        return Err(bad(format!("{CONFIG_NAME}: data.{key} must be a string")));
                    }
                };
                data.insert(key.to_string(), value);
            }
        }
        return AutoscalerConfig::from_data(&data).map_err(|e| bad(e.to_string()));
    }
    Ok(AutoscalerConfig::default())
}

/// One tick's decisions (one CSV row).
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub second: u64,
    pub stable: f64,
    pub panic: f64,
    pub desired: i32,
    pub applied: i32,
    pub ready: i32,
    pub panic_mode: bool,
    pub ebc: i32,
    pub mode: SksMode,
}

/// Runs the model over `trace` (reachable revision, default progress deadline).
pub fn simulate(
    trace: &Trace,
    scaling: &RevisionScaling,
    cfg: &AutoscalerConfig,
    container_concurrency: i64,
    startup_delay: Duration,
) -> Vec<Tick> {
    let t0 = Instant::now();
    let spec = DeciderSpec::new(scaling, container_concurrency, cfg, true);
    let params = ScalingParams::new(scaling, &spec, cfg, PROGRESS_DEADLINE);
    let metric = spec.metric;
    let initial = scaling.initial_scale.max(0);
    // Each instance is the time it becomes ready.
    let mut instances: Vec<Duration> = vec![Duration::ZERO; initial as usize];
    let mut auto = RevisionAutoscaler::new(scaling, container_concurrency, cfg, true, initial, t0);
    let mut pa = PaState::new(t0);
    let mut sks_mode = SksMode::Proxy;
    let mut proxy_since = Some(t0);

    let mut rows = trace.rows.iter().peekable();
    let mut ticks = Vec::new();
    let step = TICK_INTERVAL.as_secs();
    let mut t = step;
    while t <= trace.last_second() {
        let now_d = Duration::from_secs(t);
        let now = t0 + now_d;
        while let Some(&&(s, v)) = rows.peek().filter(|r| r.0 <= t) {
            let stat = match metric {
                Metric::Concurrency => Stat {
                    average_concurrent_requests: v,
                    ..Stat::default()
                },
                Metric::Rps => Stat {
                    request_count: v,
                    ..Stat::default()
                },
            };
            auto.record(t0 + Duration::from_secs(s), &stat);
            rows.next();
        }
        let ready = instances.iter().filter(|r| **r <= now_d).count() as i32;
        let (stable, panic) = auto.collection().averages(metric, now);
        // No data: the last decision stands.
        let _ = auto.tick(now, ready);
        let status = auto.status();
        let out = reconcile(
            &params,
            &mut pa,
            &Observed {
                now,
                desired: status.desired_scale,
                excess_burst_capacity: status.excess_burst_capacity,
                replicas: Some(instances.len() as i32),
                ready,
                proxy_since: if sks_mode == SksMode::Proxy {
                    proxy_since
                } else {
                    None
                },
                sks_mode,
                activator_probe: Some(true),
            },
        );
        if let Some(n) = out.scale_to {
            let n = n.max(0) as usize;
            if n > instances.len() {
                instances.resize(n, now_d + startup_delay);
            } else {
                // Not-yet-ready (latest) instances go first.
                instances.sort();
                instances.truncate(n);
            }
        }
        if out.mode != sks_mode {
            sks_mode = out.mode;
            proxy_since = (sks_mode == SksMode::Proxy).then_some(now);
        }
        ticks.push(Tick {
            second: t,
            stable,
            panic,
            desired: status.desired_scale,
            applied: instances.len() as i32,
            ready,
            panic_mode: auto.decider().in_panic(),
            ebc: status.excess_burst_capacity,
            mode: out.mode,
        });
        t += step;
    }
    ticks
}

/// The CSV text for `ticks`, with its header.
pub fn to_csv(ticks: &[Tick]) -> String {
    let mut s = String::from("second,stable,panic,desired,applied,ready,panic_mode,ebc,mode\n");
    for t in ticks {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{}",
            t.second,
            fmt_num(t.stable),
            fmt_num(t.panic),
            t.desired,
            t.applied,
            t.ready,
            u8::from(t.panic_mode),
            t.ebc,
            t.mode
        );
    }
    s
}

/// A number with at most 6 decimals and no trailing zeros.
fn fmt_num(v: f64) -> String {
    let r = (v * 1e6).round() / 1e6;
    if r == 0.0 {
        "0".to_string()
    } else {
        format!("{r}")
    }
}

#[cfg(test)]
mod tests;
