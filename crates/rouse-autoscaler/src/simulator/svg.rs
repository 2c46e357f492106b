//! The simulator's chart: a plain, hand-written SVG with two panels sharing the time axis.
//!
//! - Top panel, "load": the trace's per-second load (grey) and the stable (blue) and panic
//!   (orange) window averages at each tick.
//! - Bottom panel, "instances": desired (purple, dashed), applied (green) and ready (black)
//!   instances as steps (a value holds until the next tick).
//! - Panic periods are shaded red across both panels; Proxy mode (activator in the path) is a
//!   grey strip under the instances panel.
//!
//! Each series is a `<path>` with a stable `id` (`series-load`, `series-stable`,
//! `series-panic`, `series-desired`, `series-applied`, `series-ready`); panic shading is in
//! `<g id="panic-periods">`, Proxy strips in `<g id="proxy-periods">`.

use std::fmt::Write;

use super::Tick;
use super::trace::{Trace, column};
use crate::apply::SksMode;

const W: f64 = 960.0;
const H: f64 = 620.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const LOAD_TOP: f64 = 80.0;
const LOAD_BOTTOM: f64 = 300.0;
const INST_TOP: f64 = 350.0;
const INST_BOTTOM: f64 = 540.0;
const STRIP_TOP: f64 = 546.0;
const STRIP_H: f64 = 8.0;

const C_LOAD: &str = "#9e9e9e";
const C_STABLE: &str = "#1f77b4";
const C_PANIC: &str = "#ff7f0e";
const C_DESIRED: &str = "#7b3fa0";
const C_APPLIED: &str = "#2ca02c";
const C_READY: &str = "#222222";

/// Renders the chart for a run. `title` names the trace; `subtitle` lists the settings.
pub fn render(trace: &Trace, ticks: &[Tick], title: &str, subtitle: &str) -> String {
    let x_max = ticks
        .last()
        .map_or(0, |t| t.second)
        .max(trace.last_second())
        .max(2) as f64;
    let load_max = trace
        .rows
        .iter()
        .map(|r| r.1)
        .chain(ticks.iter().flat_map(|t| [t.stable, t.panic]))
        .fold(0.0, f64::max);
    let (load_top, load_step) = axis_above(load_max);
    let inst_max = ticks
        .iter()
        .flat_map(|t| [t.desired, t.applied, t.ready])
        .fold(1, i32::max) as f64;
    let (inst_top, inst_step) = axis_above(inst_max);
    let inst_step = inst_step.max(1.0);

    let x = |s: f64| LEFT + (W - LEFT - RIGHT) * s / x_max;
    let y_load = |v: f64| LOAD_BOTTOM - (LOAD_BOTTOM - LOAD_TOP) * v / load_top;
    let y_inst = |v: f64| INST_BOTTOM - (INST_BOTTOM - INST_TOP) * v / inst_top;

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{LEFT}" y="44" fill="#555">{}</text>
"##,
        esc(title),
        esc(subtitle)
    );

    // Panic shading and Proxy strips first, so lines draw over them.
    s.push_str("<g id=\"panic-periods\" fill=\"#d62728\" fill-opacity=\"0.12\">\n");
    for (a, b) in spans(ticks, x_max, |t| t.panic_mode) {
        for (top, bottom) in [(LOAD_TOP, LOAD_BOTTOM), (INST_TOP, INST_BOTTOM)] {
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{top}" width="{:.1}" height="{}"/>"#,
                x(a),
                x(b) - x(a),
                bottom - top
            );
        }
    }
    s.push_str("</g>\n<g id=\"proxy-periods\" fill=\"#bbbbbb\">\n");
    for (a, b) in spans(ticks, x_max, |t| t.mode == SksMode::Proxy) {
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{STRIP_TOP}" width="{:.1}" height="{STRIP_H}"/>"#,
            x(a),
            x(b) - x(a)
        );
    }
    s.push_str("</g>\n");

    // Axes, grid and labels.
    s.push_str("<g id=\"axes\" stroke=\"#cccccc\" stroke-width=\"1\">\n");
    let mut v = 0.0;
    while v <= load_top + 1e-9 {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
            W - RIGHT,
            y = y_load(v)
        );
        v += load_step;
    }
    let mut v = 0.0;
    while v <= inst_top + 1e-9 {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
            W - RIGHT,
            y = y_inst(v)
        );
        v += inst_step;
    }
    s.push_str("</g>\n<g id=\"labels\" fill=\"#333\">\n");
    let mut v = 0.0;
    while v <= load_top + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y_load(v) + 4.0,
            num(v)
        );
        v += load_step;
    }
    let mut v = 0.0;
    while v <= inst_top + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y_inst(v) + 4.0,
            num(v)
        );
        v += inst_step;
    }
    let (_, x_step) = nice_axis(x_max);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(t),
            STRIP_TOP + STRIP_H + 16.0,
            num(t)
        );
        t += x_step;
    }
    let load_label = match column(trace.metric) {
        "rps" => "load (requests/s)",
        _ => "load (concurrent requests)",
    };
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>
<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">{load_label}</text>
<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">instances</text>
"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        (LOAD_TOP + LOAD_BOTTOM) / 2.0,
        (INST_TOP + INST_BOTTOM) / 2.0
    );
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        r##"<g id="frames" fill="none" stroke="#333"><rect x="{LEFT}" y="{LOAD_TOP}" width="{:.1}" height="{}"/><rect x="{LEFT}" y="{INST_TOP}" width="{:.1}" height="{}"/></g>"##,
        W - LEFT - RIGHT,
        LOAD_BOTTOM - LOAD_TOP,
        W - LEFT - RIGHT,
        INST_BOTTOM - INST_TOP
    );

    // Series.
    let mut load = String::new();
    let mut prev: Option<u64> = None;
    for &(sec, v) in &trace.rows {
        // A missing second breaks the line: nothing was recorded then.
        let cmd = if prev.is_some_and(|p| p + 1 == sec) {
            'L'
        } else {
            'M'
        };
        let _ = write!(load, "{cmd}{:.1},{:.1} ", x(sec as f64), y_load(v));
        prev = Some(sec);
    }
    series(&mut s, "series-load", C_LOAD, 1.0, "", &load);
    let line = |f: &dyn Fn(&Tick) -> f64| {
        let mut d = String::new();
        for (i, t) in ticks.iter().enumerate() {
            let c = if i == 0 { 'M' } else { 'L' };
            let _ = write!(d, "{c}{:.1},{:.1} ", x(t.second as f64), y_load(f(t)));
        }
        d
    };
    series(
        &mut s,
        "series-stable",
        C_STABLE,
        2.0,
        "",
        &line(&|t| t.stable),
    );
    series(
        &mut s,
        "series-panic",
        C_PANIC,
        1.5,
        "",
        &line(&|t| t.panic),
    );
    let step = |f: &dyn Fn(&Tick) -> i32| {
        let mut d = String::new();
        let mut drawing = false;
        for (i, t) in ticks.iter().enumerate() {
            let v = f(t);
            if v < 0 {
                drawing = false;
                continue;
            }
            let end = ticks
                .get(i + 1)
                .map_or(x_max, |n| n.second as f64)
                .min(x_max);
            let (x0, x1, y) = (x(t.second as f64), x(end), y_inst(f64::from(v)));
            if drawing {
                let _ = write!(d, "V{y:.1} H{x1:.1} ");
            } else {
                let _ = write!(d, "M{x0:.1},{y:.1} H{x1:.1} ");
                drawing = true;
            }
        }
        d
    };
    // Desired last: dashed on top, so it shows where it matches applied.
    let applied = step(&|t| t.applied);
    series(&mut s, "series-applied", C_APPLIED, 3.0, "", &applied);
    let ready = step(&|t| t.ready);
    series(&mut s, "series-ready", C_READY, 1.5, "", &ready);
    let desired = step(&|t| t.desired);
    series(&mut s, "series-desired", C_DESIRED, 2.0, "6 4", &desired);

    // Legend.
    s.push_str("<g id=\"legend\">\n");
    let items: [(&str, &str, &str); 8] = [
        (C_LOAD, "", "load"),
        (C_STABLE, "", "stable avg"),
        (C_PANIC, "", "panic avg"),
        (C_DESIRED, "6 4", "desired"),
        (C_APPLIED, "", "applied"),
        (C_READY, "", "ready"),
        ("#d62728", "", "panic mode"),
        ("#bbbbbb", "", "Proxy mode"),
    ];
    for (i, (color, dash, label)) in items.iter().enumerate() {
        let lx = LEFT + i as f64 * 105.0;
        let ly = 62.0;
        if i >= 6 {
            let opacity = if i == 6 { "0.3" } else { "1" };
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="{}" width="18" height="10" fill="{color}" fill-opacity="{opacity}"/>"#,
                ly - 8.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                lx + 18.0,
                y = ly - 3.0
            );
        }
        let _ = writeln!(s, r#"<text x="{}" y="{ly}">{label}</text>"#, lx + 24.0);
    }
    s.push_str("</g>\n</svg>\n");
    s
}

fn series(s: &mut String, id: &str, color: &str, width: f64, dash: &str, d: &str) {
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    };
    let _ = writeln!(
        s,
        r#"<path id="{id}" d="{}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>"#,
        d.trim_end()
    );
}

/// `[from, to)` time spans over which `f` holds, each tick's state lasting until the next.
fn spans(ticks: &[Tick], x_max: f64, f: impl Fn(&Tick) -> bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, t) in ticks.iter().enumerate() {
        if !f(t) {
            continue;
        }
        let a = t.second as f64;
        let b = ticks
            .get(i + 1)
            .map_or(x_max, |n| n.second as f64)
            .min(x_max);
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out.retain(|(a, b)| b > a);
    out
}

/// [`nice_axis`] with room above the highest value: a peak that lands exactly on a round top
/// would run along the panel's edge, where it reads as cut off. One more step then.
fn axis_above(max: f64) -> (f64, f64) {
    let (top, step) = nice_axis(max);
    if max > 0.0 && top - max < step * 0.1 {
        (top + step, step)
    } else {
        (top, step)
    }
}

/// A round axis top and tick step (1, 2 or 5 × 10^k) covering `max` in about 5 steps.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn num(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    if r == 0.0 {
        "0".to_string()
    } else {
        format!("{r}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0.0), (1.0, 1.0));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
        assert_eq!(nice_axis(100.0), (100.0, 20.0));
        assert_eq!(nice_axis(420.0), (500.0, 100.0));
        assert_eq!(nice_axis(3.0), (3.0, 1.0));
    }

    #[test]
    fn a_peak_on_a_round_top_gets_room_above() {
        assert_eq!(axis_above(100.0), (120.0, 20.0));
        assert_eq!(axis_above(7.0), (8.0, 2.0));
        assert_eq!(axis_above(0.0), (1.0, 1.0));
        // The load line's highest point sits below the panel's top edge.
        let trace = Trace {
            metric: crate::decider::Metric::Concurrency,
            rows: vec![(0, 10.0), (1, 100.0), (2, 50.0)],
        };
        let svg = render(&trace, &[], "t", "s");
        let path = svg.split("id=\"series-load\"").nth(1).unwrap();
        let d = path
            .split("d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let top_y = d
            .split_whitespace()
            .filter_map(|p| p[1..].split(',').nth(1)?.parse::<f64>().ok())
            .fold(f64::MAX, f64::min);
        assert!(top_y > LOAD_TOP + 10.0, "peak at y={top_y}: {d}");
    }

    #[test]
    fn escapes_text() {
        assert_eq!(esc("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
