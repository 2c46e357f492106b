//! The simulator on the example traces shipped in `examples/autoscaling/`, with Knative's
//! default config: the decisions each example is meant to show, and the rendered chart.

use std::path::PathBuf;
use std::time::Duration;

use rouse_autoscaler::simulator::{OutputFormat, SimulateOptions, run};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/autoscaling")
        .join(name)
}

fn simulate(name: &str, output: OutputFormat) -> String {
    run(&SimulateOptions {
        trace: example(name),
        annotations: vec![],
        config: None,
        container_concurrency: 0,
        startup_delay: Duration::ZERO,
        output,
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[derive(Debug)]
struct Row {
    second: u64,
    desired: i32,
    applied: i32,
    ready: i32,
    panic: bool,
    ebc: i32,
    serve: bool,
}

fn rows(name: &str) -> Vec<Row> {
    let csv = simulate(name, OutputFormat::Csv);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("second,stable,panic,desired,applied,ready,panic_mode,ebc,mode")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 9, "{l}");
            Row {
                second: f[0].parse().unwrap(),
                desired: f[3].parse().unwrap(),
                applied: f[4].parse().unwrap(),
                ready: f[5].parse().unwrap(),
                panic: f[6] == "1",
                ebc: f[7].parse().unwrap(),
                serve: f[8] == "Serve",
            }
        })
        .collect()
}

fn at(rows: &[Row], second: u64) -> &Row {
    rows.iter().find(|r| r.second == second).unwrap()
}

#[test]
fn steady_settles_at_three_with_the_activator_in_path() {
    let r = rows("steady.csv");
    assert_eq!(r.len(), 90);
    // 150 / 70 → 3 instances from the first tick; 3 = 3 × the one ready → panic.
    assert!(r.iter().all(|x| x.desired == 3 && x.applied == 3));
    // Panic lasts a stable window after entry (t=2): out at the first tick after 62.
    assert!(r.iter().filter(|x| x.second <= 62).all(|x| x.panic));
    assert!(r.iter().filter(|x| x.second >= 64).all(|x| !x.panic));
    // 3 × 100 − 211 − 150 = −61: the activator never leaves the path.
    assert!(r.iter().skip(1).all(|x| x.ebc == -61 && !x.serve));
}

#[test]
fn step_up_panics_and_scales_in_two_ticks() {
    let r = rows("step.csv");
    assert!(
        r.iter()
            .filter(|x| x.second < 60)
            .all(|x| x.desired == 1 && !x.panic)
    );
    let step = at(&r, 60);
    assert!(step.panic);
    assert_eq!(step.desired, 2);
    // 350 / 70 = 5, reached at 64 and never lowered during the panic.
    assert_eq!(at(&r, 64).desired, 5);
    assert!(r.iter().filter(|x| x.second >= 64).all(|x| x.desired == 5));
}

#[test]
fn burst_panics_serves_then_scales_to_zero() {
    let r = rows("burst.csv");
    assert!(!at(&r, 28).panic);
    assert!(at(&r, 30).panic);
    let peak = r.iter().map(|x| x.desired).max().unwrap();
    assert_eq!(peak, 6);
    // Enough capacity after the burst: the activator leaves the path.
    assert!(at(&r, 46).serve);
    // Desired 0 at 180 (a stable window after the load ended at 120); the PA goes inactive
    // and, the SKS having been in Proxy long enough, the instance goes at the next tick.
    assert_eq!((at(&r, 178).desired, at(&r, 178).applied), (1, 1));
    assert_eq!((at(&r, 180).desired, at(&r, 180).applied), (0, 1));
    assert_eq!(at(&r, 182).applied, 0);
    assert!(
        r.iter()
            .filter(|x| x.second >= 184)
            .all(|x| x.ready == 0 && !x.serve)
    );
}

#[test]
fn ramp_down_is_rate_limited_and_ends_at_zero() {
    let r = rows("ramp-down.csv");
    assert_eq!(at(&r, 4).applied, 9);
    assert!(at(&r, 4).serve);
    for w in r.windows(2) {
        // Never more than halving the ready count per tick (max-scale-down-rate 2).
        assert!(
            w[1].applied >= w[1].ready.max(1) / 2,
            "{:?} → {:?}",
            w[0],
            w[1]
        );
        assert!(w[1].applied <= w[0].applied || w[1].second <= 4);
    }
    assert_eq!(at(&r, 178).desired, 0);
    assert_eq!(at(&r, 180).applied, 0);
    assert_eq!(r.last().unwrap().applied, 0);
}

#[test]
fn charts_have_every_series() {
    for name in ["steady.csv", "step.csv", "burst.csv", "ramp-down.csv"] {
        let svg = simulate(name, OutputFormat::Svg);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        for id in [
            "series-load",
            "series-stable",
            "series-panic",
            "series-desired",
            "series-applied",
            "series-ready",
        ] {
            let d = path_data(&svg, id).unwrap_or_else(|| panic!("{name}: no {id}"));
            assert!(!d.is_empty(), "{name}: {id} is empty");
        }
        // One load point per recorded second.
        let trace = std::fs::read_to_string(example(name)).unwrap();
        let points = path_data(&svg, "series-load")
            .unwrap()
            .split(' ')
            .filter(|p| p.starts_with('M') || p.starts_with('L'))
            .count();
        assert_eq!(points, trace.lines().count() - 1, "{name}");
        // Every example panics at some point: shaded.
        let shaded = svg
            .split("id=\"panic-periods\"")
            .nth(1)
            .and_then(|s| s.split("</g>").next())
            .unwrap();
        assert!(shaded.contains("<rect"), "{name}: no panic shading");
        assert!(svg.contains("time (s)") && svg.contains(">instances<"));
    }
}

/// The chart in docs/autoscaling.md is the burst example's. Regenerate it with
/// `ROUSE_BLESS=1 cargo test -p rouse-autoscaler --test examples`.
#[test]
fn docs_chart_is_current() {
    let svg = simulate("burst.csv", OutputFormat::Svg);
    let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/autoscaling-burst.svg");
    if std::env::var_os("ROUSE_BLESS").is_some() {
        std::fs::write(&doc, &svg).unwrap();
    }
    let current = std::fs::read_to_string(&doc).unwrap_or_default();
    assert!(
        current == svg,
        "docs/autoscaling-burst.svg is stale; rerun with ROUSE_BLESS=1"
    );
}

fn path_data<'a>(svg: &'a str, id: &str) -> Option<&'a str> {
    let start = svg.find(&format!("<path id=\"{id}\" d=\""))? + id.len() + 15;
    let rest = &svg[start..];
    Some(&rest[..rest.find('"')?])
}
