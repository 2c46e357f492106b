use super::*;

use std::io::Write as _;

fn opts(dir: &Path, trace: &str, annotations: &[(&str, &str)]) -> SimulateOptions {
    let path = dir.join("trace.csv");
    std::fs::write(&path, trace).unwrap();
    SimulateOptions {
        trace: path,
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        config: None,
        container_concurrency: 0,
        startup_delay: Duration::ZERO,
        output: OutputFormat::Csv,
    }
}

/// 35 concurrent for seconds 0–3, zeros until 40, then 100 for 41–44.
fn wake_trace() -> String {
    let mut s = String::from("second,concurrency\n");
    for sec in 0..=44 {
        let v = match sec {
            0..=3 => 35,
            4..=40 => 0,
            _ => 100,
        };
        let _ = writeln!(s, "{sec},{v}");
    }
    s
}

fn row(csv: &str, second: u64) -> &str {
    csv.lines()
        .find(|l| l.starts_with(&format!("{second},")))
        .unwrap_or_else(|| panic!("no row for {second} in\n{csv}"))
}

#[test]
fn run_decides_scale_to_zero_and_wake_up() {
    let dir = tempfile::tempdir().unwrap();
    // Short stable window (6 s → 1 s panic window) and TBC 0 so that Serve follows want > 0.
    let o = opts(
        dir.path(),
        &wake_trace(),
        &[
            ("autoscaling.knative.dev/window", "6s"),
            ("autoscaling.knative.dev/target-burst-capacity", "0"),
        ],
    );
    let csv = run(&o).unwrap();
    assert!(csv.starts_with("second,stable,panic,desired,applied,ready,panic_mode,ebc,mode\n"));
    assert_eq!(csv.lines().count(), 1 + 22);
    // ceil(35/70) = 1 instance, the one there; EBC 0 (TBC 0) → Serve.
    assert_eq!(row(&csv, 2), "2,35,35,1,1,1,0,0,Serve");
    // 5 valid seconds: 4 × 35 / 5 = 28; the 1 s panic window sees second 4's 0.
    assert_eq!(row(&csv, 4), "4,28,0,1,1,1,0,0,Serve");
    assert_eq!(row(&csv, 6), "6,17.5,0,1,1,1,0,0,Serve");
    assert_eq!(row(&csv, 8), "8,5.833333,0,1,1,1,0,0,Serve");
    // Desired 0: active for ≥ the 6 s window, so 0 is wanted but not applied; Proxy.
    assert_eq!(row(&csv, 10), "10,0,0,0,1,1,0,0,Proxy");
    // The grace period (30 s) runs from the PA going inactive at t=10.
    assert_eq!(row(&csv, 38), "38,0,0,0,1,1,0,0,Proxy");
    assert_eq!(row(&csv, 40), "40,0,0,0,0,1,0,0,Proxy");
    // Load returns at 41: panic (dppc 2 ≥ 2 × max(1, 0 ready)), 2 instances asked for.
    assert_eq!(row(&csv, 42), "42,33.333333,100,2,2,0,1,0,Serve");
    // They are ready at the next tick; panic holds the 2.
    assert_eq!(row(&csv, 44), "44,66.666667,100,2,2,2,1,0,Serve");
}

#[test]
fn defaults_panic_on_a_doubling_and_keep_the_activator_in_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut trace = String::from("second,concurrency\n");
    for s in 0..=6 {
        let _ = writeln!(trace, "{s},140");
    }
    let csv = run(&opts(dir.path(), &trace, &[])).unwrap();
    // 140 / 70 = 2 instances = 2 × the 1 ready: panic. EBC 1×100 − 211 − 140 = −251.
    assert_eq!(row(&csv, 2), "2,140,140,2,2,1,1,-251,Proxy");
    // 2 ready: 2 × 100 − 211 − 140 = −151; still in panic (a stable window must pass).
    assert_eq!(row(&csv, 4), "4,140,140,2,2,2,1,-151,Proxy");
    assert_eq!(row(&csv, 6), "6,140,140,2,2,2,1,-151,Proxy");
}

#[test]
fn startup_delay_postpones_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let mut trace = String::from("second,concurrency\n");
    for s in 0..=8 {
        let _ = writeln!(trace, "{s},210");
    }
    let mut o = opts(dir.path(), &trace, &[]);
    o.startup_delay = Duration::from_secs(3);
    let csv = run(&o).unwrap();
    let ready: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap())
        .collect();
    // Asked for 3 at t=2, ready at 5 → counted from the tick at 6.
    assert_eq!(ready, ["1", "1", "3", "3"]);
}

#[test]
fn rps_metric_reads_the_rps_column() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(
        dir.path(),
        "second,rps\n1,280\n2,280\n",
        &[("autoscaling.knative.dev/metric", "rps")],
    );
    let csv = run(&o).unwrap();
    // rps target 200 × 0.7 = 140 → 2 instances (and panic: 2 ≥ 2 × 1).
    assert_eq!(row(&csv, 2), "2,280,280,2,2,1,1,-291,Proxy");
}

#[test]
fn errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let good = "second,concurrency\n1,1\n2,1\n";
    let err = |o: &SimulateOptions| run(o).unwrap_err().to_string();

    let o = opts(
        dir.path(),
        good,
        &[("autoscaling.knative.dev/minscale", "1")],
    );
    assert!(err(&o).starts_with("unknown annotation \"autoscaling.knative.dev/minscale\""));

    let o = opts(
        dir.path(),
        good,
        &[("autoscaling.knative.dev/target-utilization-percentage", "0")],
    );
    assert_eq!(
        err(&o),
        "invalid annotations:\nexpected 1 <= 0 <= 100: autoscaling.knative.dev/target-utilization-percentage"
    );

    let o = opts(
        dir.path(),
        good,
        &[(
            "autoscaling.knative.dev/class",
            "hpa.autoscaling.knative.dev",
        )],
    );
    assert!(err(&o).contains("models the KPA only"));

    let o = opts(dir.path(), "second,concurrency\n1,1\n2,-4\n", &[]);
    let e = err(&o);
    assert!(
        e.ends_with("trace.csv: line 3: negative concurrency -4"),
        "{e}"
    );

    let mut o = opts(dir.path(), good, &[]);
    o.container_concurrency = -1;
    assert_eq!(err(&o), "--container-concurrency: expected 0 <= -1 <= 1000");

    let mut o = opts(dir.path(), good, &[]);
    o.trace = dir.path().join("missing.csv");
    assert!(err(&o).starts_with("cannot read "));
}

#[test]
fn config_file_takes_only_config_autoscaler() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("config.yaml");
    let mut f = std::fs::File::create(&cfg_path).unwrap();
    write!(
        f,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-defaults\ndata:\n  revision-timeout-seconds: \"100\"\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\ndata:\n  _example: |\n    anything\n  container-concurrency-target-default: \"10\"\n  target-burst-capacity: \"0\"\n"
    )
    .unwrap();
    let cfg = load_config(&cfg_path).unwrap();
    assert_eq!(cfg.container_concurrency_target_default, 10.0);
    let mut o = opts(dir.path(), "second,concurrency\n1,14\n2,14\n", &[]);
    o.config = Some(cfg_path.clone());
    // Target 10 × 0.7 = 7 → 14 needs 2.
    assert_eq!(row(&run(&o).unwrap(), 2), "2,14,14,2,2,1,1,0,Serve");

    std::fs::write(
        &cfg_path,
        "kind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  max-scale-up-rate: \"1\"\n",
    )
    .unwrap();
    let e = run(&o).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "config-autoscaler: max-scale-up-rate: max-scale-up-rate = 1, must be greater than 1.0"
        ),
        "{e}"
    );
    std::fs::write(&cfg_path, "kind: ConfigMap\nmetadata: [\n").unwrap();
    assert!(matches!(run(&o), Err(SimulateError::Config { .. })));
}

#[test]
fn svg_has_every_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(
        dir.path(),
        &wake_trace(),
        &[("autoscaling.knative.dev/window", "6s")],
    );
    o.output = OutputFormat::Svg;
    let svg = run(&o).unwrap();
    assert!(svg.starts_with("<svg "));
    assert!(svg.trim_end().ends_with("</svg>"));
    for id in [
        "series-load",
        "series-stable",
        "series-panic",
        "series-desired",
        "series-applied",
        "series-ready",
        "panic-periods",
        "proxy-periods",
    ] {
        assert!(svg.contains(&format!("id=\"{id}\"")), "missing {id}");
    }
    assert!(svg.contains("time (s)"));
    assert!(svg.contains("load (concurrent requests)"));
    assert!(svg.contains(">instances<"));
    // Knative's defaults: target 100 × 70% utilisation = 70 per instance.
    assert!(
        svg.contains("target 100 × 70% utilisation = 70 per instance"),
        "{}",
        svg.lines().nth(3).unwrap_or_default()
    );
    // The wake-up at 42 panics: at least one shaded rectangle.
    let panic_group = svg.split("id=\"panic-periods\"").nth(1).unwrap();
    let panic_group = panic_group.split("</g>").next().unwrap();
    assert!(panic_group.contains("<rect"));
}

/// Random traces for the property tests (seeded, so failures reproduce).
fn random_trace(rng: &mut fastrand::Rng) -> Trace {
    let len = rng.u64(10..200);
    let mut rows = Vec::new();
    let mut level = rng.f64() * 300.0;
    for s in 0..len {
        if rng.u8(..10) == 0 {
            continue; // a missing second
        }
        if rng.u8(..8) == 0 {
            level = match rng.u8(..3) {
                0 => 0.0,
                1 => rng.f64() * 50.0,
                _ => rng.f64() * 1000.0,
            };
        }
        rows.push((s, level));
    }
    if rows.is_empty() {
        rows.push((len, 1.0));
    }
    Trace {
        metric: Metric::Concurrency,
        rows,
    }
}

fn random_scaling(rng: &mut fastrand::Rng, cfg: &AutoscalerConfig) -> RevisionScaling {
    let mut a: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| a.push((format!("autoscaling.knative.dev/{k}"), v));
    let min = rng.i32(0..3);
    let max = if rng.bool() { 0 } else { rng.i32(3..12) };
    put("min-scale", min.to_string());
    put("max-scale", max.to_string());
    put("window", format!("{}s", rng.u32(6..40)));
    if rng.bool() {
        put("scale-down-delay", format!("{}s", rng.u32(0..20)));
    }
    if rng.bool() {
        put(
            "target-burst-capacity",
            ["0", "-1", "211", "50"][rng.usize(..4)].to_string(),
        );
    }
    if rng.bool() {
        put("activation-scale", "3".to_string());
    }
    resolve_annotations(&a, cfg).unwrap()
}

#[test]
fn property_applied_within_bounds_and_rates() {
    let mut rng = fastrand::Rng::with_seed(42);
    let cfg = AutoscalerConfig {
        max_scale_up_rate: 3.0,
        ..AutoscalerConfig::default()
    };
    for case in 0..300 {
        let trace = random_trace(&mut rng);
        let scaling = random_scaling(&mut rng, &cfg);
        let ticks = simulate(&trace, &scaling, &cfg, 0, Duration::ZERO);
        let mut prev_applied = scaling.initial_scale;
        for t in &ticks {
            let ctx = format!("case {case} t={} {scaling:?}", t.second);
            if scaling.max_scale > 0 {
                assert!(
                    t.applied <= scaling.max_scale.max(scaling.initial_scale),
                    "{ctx}"
                );
            }
            if t.applied != prev_applied {
                assert!(t.applied >= scaling.min_scale, "{ctx}");
                let r = t.ready.max(1);
                let up = (3.0 * f64::from(r)).ceil() as i32;
                let cap = up.max(scaling.activation_scale).max(scaling.min_scale);
                assert!(t.applied <= cap.max(prev_applied), "{ctx}: up limit {cap}");
                let down = r / 2;
                assert!(
                    t.applied >= down.min(prev_applied),
                    "{ctx}: down limit {down}"
                );
            }
            prev_applied = t.applied;
        }
    }
}

#[test]
fn property_no_decrease_while_in_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    let cfg = AutoscalerConfig::default();
    for case in 0..300 {
        let trace = random_trace(&mut rng);
        let scaling = random_scaling(&mut rng, &cfg);
        let ticks = simulate(
            &trace,
            &scaling,
            &cfg,
            0,
            Duration::from_secs(rng.u64(0..5)),
        );
        for w in ticks.windows(2) {
            if w[0].panic_mode && w[1].panic_mode {
                assert!(
                    w[1].desired >= w[0].desired,
                    "case {case}: desired fell in panic at {}: {:?} → {:?}",
                    w[1].second,
                    w[0],
                    w[1]
                );
            }
        }
    }
}

#[test]
fn property_same_trace_same_output() {
    let mut rng = fastrand::Rng::with_seed(99);
    let cfg = AutoscalerConfig::default();
    for _ in 0..50 {
        let trace = random_trace(&mut rng);
        let scaling = random_scaling(&mut rng, &cfg);
        let a = to_csv(&simulate(
            &trace,
            &scaling,
            &cfg,
            10,
            Duration::from_secs(1),
        ));
        let b = to_csv(&simulate(
            &trace,
            &scaling,
            &cfg,
            10,
            Duration::from_secs(1),
        ));
        assert_eq!(a, b);
    }
}
