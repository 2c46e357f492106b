//! "Did you mean ...?" for unknown fields: the closest valid field name by edit distance,
//! read from serde's "unknown field `x`, expected one of `a`, `b`" message.

/// `reason` with a suggestion added after the unknown field's name when one valid name is
/// close enough (at most a third of the typo's length, at least 1, edits away):
/// "unknown field `comand` (did you mean `command`?), expected one of ...". Other messages
/// come back unchanged.
pub fn with_suggestion(reason: &str) -> String {
    let Some(rest) = reason.strip_prefix("unknown field `") else {
        return reason.to_string();
    };
    let Some((typo, tail)) = rest.split_once('`') else {
        return reason.to_string();
    };
    let candidates = backquoted(tail);
    match closest(typo, &candidates) {
        Some(best) => format!("unknown field `{typo}` (did you mean `{best}`?){tail}"),
        None => reason.to_string(),
    }
}

/// Every `name` in backquotes in `text`.
fn backquoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The candidate nearest to `typo`, if near enough and unambiguous.
pub fn closest<'a>(typo: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (typo.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| {
            (
                distance(&typo.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    match scored.as_slice() {
        [(d, best), (d2, _), ..] if d == d2 => {
            // A tie is no suggestion, unless only case differs.
            (best.eq_ignore_ascii_case(typo)).then_some(*best)
        }
        [(_, best), ..] => Some(*best),
        [] => None,
    }
}

/// Levenshtein distance, with a transposition of neighbours counting as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        let r = "unknown field `comand`, expected one of `name`, `image`, `command`, `args`";
        assert_eq!(
            with_suggestion(r),
            "unknown field `comand` (did you mean `command`?), expected one of `name`, `image`, `command`, `args`"
        );
        let r = "unknown field `imagee`, expected one of `name`, `image`";
        assert!(with_suggestion(r).contains("did you mean `image`?"));
        let r = "unknown field `contianers`, expected `containers` or `volumes`";
        assert!(with_suggestion(r).contains("did you mean `containers`?"));
        // Nothing close: unchanged.
        let r = "unknown field `zzzzzz`, expected one of `name`, `image`";
        assert_eq!(with_suggestion(r), r);
        assert_eq!(
            with_suggestion("invalid type: string"),
            "invalid type: string"
        );
    }

    #[test]
    fn distances() {
        assert_eq!(distance("comand", "command"), 1);
        assert_eq!(distance("agrs", "args"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(closest("ags", &["args", "env"]), Some("args"));
        assert_eq!(closest("x", &["ab", "cd"]), None);
    }
}
