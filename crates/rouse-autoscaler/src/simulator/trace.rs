//! Load traces: CSV with a header row naming `second` and the metric column (`concurrency`
//! or `rps`), one row per recorded second.

use crate::decider::Metric;

/// The longest trace the simulator takes (a week of seconds), so a typo cannot make it run
/// for ever.
pub const MAX_SECOND: u64 = 7 * 24 * 3600;

/// A parsed trace: strictly increasing seconds with the revision's total load in each.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The metric the values measure.
    pub metric: Metric,
    /// `(second, load)` rows in order.
    pub rows: Vec<(u64, f64)>,
}

impl Trace {
    /// The last recorded second.
    pub fn last_second(&self) -> u64 {
        self.rows.last().map_or(0, |r| r.0)
    }
}

/// A bad trace: the 1-based line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

/// The column a trace for `metric` must have.
pub fn column(metric: Metric) -> &'static str {
    match metric {
        Metric::Concurrency => "concurrency",
        Metric::Rps => "rps",
    }
}

/// Parses trace text for `metric`. Blank lines are skipped; every other line after the header
/// must hold a non-negative whole second (later than the previous row's) and a non-negative
/// finite load.
pub fn parse(text: &str, metric: Metric) -> Result<Trace, TraceError> {
    let want = column(metric);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let Some((hline, header)) = lines.next() else {
        return Err(TraceError {
            line: 1,
            message: format!("empty trace: expected a header row `second,{want}`"),
        });
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let err = |line, message: String| TraceError { line, message };
    let other = column(match metric {
        Metric::Concurrency => Metric::Rps,
        Metric::Rps => Metric::Concurrency,
    });
    if names.len() != 2 || !names.contains(&"second") || !names.contains(&want) {
        let hint = if names.contains(&other) {
            format!(
                " (the column `{other}` does not match the metric `{want}`: set \
                 autoscaling.knative.dev/metric={other} to scale on it)"
            )
        } else {
            String::new()
        };
        return Err(err(
            hline,
            format!("bad header {header:?}: expected the columns `second,{want}`{hint}"),
        ));
    }
    let second_first = names[0] == "second";
    let mut rows: Vec<(u64, f64)> = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 2 {
            return Err(err(
                n,
                format!(
                    "expected 2 fields (second,{want}), got {}: {line:?}",
                    fields.len()
                ),
            ));
        }
        let (s, v) = if second_first {
            (fields[0], fields[1])
        } else {
            (fields[1], fields[0])
        };
        let second: u64 = match s.parse::<i64>() {
            Ok(x) if x < 0 => return Err(err(n, format!("negative second {s}"))),
            Ok(x) if x as u64 > MAX_SECOND => {
                return Err(err(
                    n,
                    format!("second {s} is beyond the simulator's limit of {MAX_SECOND} (7 days)"),
                ));
            }
            Ok(x) => x as u64,
            Err(_) => return Err(err(n, format!("second {s:?} is not a whole number"))),
        };
        let value: f64 = match v.parse::<f64>() {
            Ok(x) if !x.is_finite() => return Err(err(n, format!("{want} {v:?} is not finite"))),
            Ok(x) if x < 0.0 => return Err(err(n, format!("negative {want} {v}"))),
            Ok(x) => x,
            Err(_) => return Err(err(n, format!("{want} {v:?} is not a number"))),
        };
        if let Some(&(prev, _)) = rows.last()
            && second <= prev
        {
            return Err(err(
                n,
                format!("second {second} does not come after second {prev} of the previous row"),
            ));
        }
        rows.push((second, value));
    }
    if rows.is_empty() {
        return Err(err(hline, "the trace has a header but no rows".to_string()));
    }
    Ok(Trace { metric, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_skips_blank_lines() {
        let t = parse(
            "second,concurrency\n0,1.5\n\n2, 3\r\n5,0\n",
            Metric::Concurrency,
        )
        .unwrap();
        assert_eq!(t.rows, vec![(0, 1.5), (2, 3.0), (5, 0.0)]);
        assert_eq!(t.last_second(), 5);
        // Columns may come in either order.
        let t = parse("rps,second\n10,1\n", Metric::Rps).unwrap();
        assert_eq!(t.rows, vec![(1, 10.0)]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = |text| parse(text, Metric::Concurrency).unwrap_err();
        assert_eq!(e("second,concurrency\n1,2\n2,-1\n").line, 3);
        assert_eq!(
            e("second,concurrency\n1,2\n2,-1\n").message,
            "negative concurrency -1"
        );
        assert_eq!(
            e("second,concurrency\n-1,2\n").message,
            "negative second -1"
        );
        assert_eq!(
            e("second,concurrency\n1,abc\n").message,
            "concurrency \"abc\" is not a number"
        );
        assert_eq!(e("second,concurrency\n1\n").line, 2);
        assert_eq!(e("second,concurrency\n3,1\n3,1\n").line, 3);
        assert!(
            e("second,concurrency\n3,1\n2,1\n")
                .message
                .contains("does not come after second 3")
        );
        assert_eq!(e("").line, 1);
        assert!(
            e("second,concurrency\n604801,1\n")
                .message
                .contains("limit of 604800")
        );
        assert_eq!(
            e("second,concurrency\n").message,
            "the trace has a header but no rows"
        );
        let wrong = e("second,rps\n1,2\n");
        assert_eq!(wrong.line, 1);
        assert!(
            wrong.message.contains("autoscaling.knative.dev/metric=rps"),
            "{wrong}"
        );
        assert!(e("time,concurrency\n").message.starts_with("bad header"));
    }
}
