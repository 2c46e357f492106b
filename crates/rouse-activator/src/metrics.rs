//! Prometheus text for the activator's metrics.

use std::fmt::Write;
use std::time::Duration;

/// Upper bounds (seconds) of the cold-start histogram's buckets.
const COLD_START_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [u64; COLD_START_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub(crate) fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in COLD_START_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    pub(crate) fn render(&self, name: &str, help: &str, out: &mut String) {
        header(out, name, help, "histogram");
        for (le, n) in COLD_START_BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `namespace="..",revision=".."` with values escaped.
pub(crate) fn rev_labels(namespace: &str, revision: &str) -> String {
    format!(
        "namespace=\"{}\",revision=\"{}\"",
        escape(namespace),
        escape(revision)
    )
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(80));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("# TYPE x histogram\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("x_count 2\n"), "{out}");
        assert!(out.contains("x_sum 3.08"), "{out}");
        assert_eq!(
            rev_labels("a\"b", "r\\"),
            "namespace=\"a\\\"b\",revision=\"r\\\\\""
        );
    }
}
