//! Label selectors as Kubernetes parses them, for `get -l`, `delete -l` and the API's
//! `labelSelector`: equality-based (`k=v`, `k==v`, `k!=v`), set-based (`k in (a,b)`,
//! `k notin (a,b)`), existence (`k`, `!k`) and Kubernetes' numeric `k>n`, `k<n`,
//! comma-separated (commas inside parentheses belong to the set), all of which must hold.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    /// The label is set to one of the values.
    In(String, Vec<String>),
    /// The label is unset or set to none of the values.
    NotIn(String, Vec<String>),
    /// The label is an integer above the bound.
    GreaterThan(String, i64),
    /// The label is an integer below the bound.
    LessThan(String, i64),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Requirement>);

/// Parses `app=web,tier!=db,canary,!legacy,env in (prod,staging)`.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut out = Vec::new();
    for part in split_requirements(s)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("invalid label selector {s:?}: empty requirement"));
        }
        out.push(requirement(part, s)?);
    }
    Ok(Selector(out))
}

/// Splits at the commas outside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err(format!("invalid label selector {s:?}: nested parentheses")),
            ')' if depth == 1 => depth = 0,
            ')' => return Err(format!("invalid label selector {s:?}: unbalanced ')'")),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("invalid label selector {s:?}: unclosed '('"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn requirement(part: &str, whole: &str) -> Result<Requirement, String> {
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k, whole)?, value(v, whole)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key(k, whole)?, value(v, whole)?));
    }
    for (op, greater) in [('>', true), ('<', false)] {
        if let Some((k, v)) = part.split_once(op) {
            let bound: i64 = v.trim().parse().map_err(|_| {
                format!("invalid label selector {whole:?}: {op} needs an integer, got {v:?}")
            })?;
            let k = key(k, whole)?;
            return Ok(if greater {
                Requirement::GreaterThan(k, bound)
            } else {
                Requirement::LessThan(k, bound)
            });
        }
    }
    if let Some(open) = part.find('(') {
        let (head, set) = part.split_at(open);
        let mut words = head.split_whitespace();
        let (Some(k), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "invalid label selector {whole:?}: expected `key in (...)` or `key notin (...)`, got {part:?}"
            ));
        };
        let inner = set
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("invalid label selector {whole:?}: bad set in {part:?}"))?;
        let values = inner
            .split(',')
            .map(|v| value(v, whole))
            .collect::<Result<Vec<_>, _>>()?;
        let k = key(k, whole)?;
        return match op {
            "in" => Ok(Requirement::In(k, values)),
            "notin" => Ok(Requirement::NotIn(k, values)),
            other => Err(format!(
                "invalid label selector {whole:?}: unknown operator {other:?}: use in or notin"
            )),
        };
    }
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k, whole)?));
    }
    if part.contains(char::is_whitespace) {
        return Err(format!(
            "invalid label selector {whole:?}: {part:?} is no requirement (sets need parentheses: `key in (a,b)`)"
        ));
    }
    Ok(Requirement::Exists(key(part, whole)?))
}

fn key(k: &str, whole: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label selector {whole:?}: bad key {k:?}"))
    }
}

fn value(v: &str, whole: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label selector {whole:?}: bad value {v:?}"))
    }
}

impl Selector {
    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let number = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            Requirement::GreaterThan(k, n) => number(k).is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => number(k).is_some_and(|v| v < *n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_based_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let yes = |s: &str| parse_selector(s).unwrap().matches(&obj);
        assert!(yes("app=web"));
        assert!(yes("app==web,tier!=db"));
        assert!(yes("app,!legacy"));
        assert!(!yes("app=api"));
        assert!(!yes("tier!=front"));
        assert!(!yes("legacy"));
        assert!(!yes("!app"));
        assert!(yes("legacy!=x"));
        assert!(
            !parse_selector("app=web")
                .unwrap()
                .matches(&json!({"metadata": {}}))
        );
        assert!(parse_selector("app=web,").is_err());
        assert!(parse_selector("=x").is_err());
    }

    #[test]
    fn set_based_and_numeric_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "env": "prod", "rank": "3"}}});
        let yes = |s: &str| parse_selector(s).unwrap().matches(&obj);
        assert!(yes("env in (prod,staging)"));
        assert!(yes("env in (prod, staging),app=web"));
        assert!(!yes("env in (dev,staging)"));
        assert!(yes("env notin (dev,staging)"));
        assert!(!yes("env notin (prod)"));
        // notin holds when the label is absent; in does not.
        assert!(yes("zone notin (a)"));
        assert!(!yes("zone in (a)"));
        assert!(yes("rank>2,rank<4"));
        assert!(!yes("rank>3"));
        assert!(!yes("app>1"));
        assert_eq!(
            parse_selector("a in (x,y),!b").unwrap().0,
            vec![
                Requirement::In("a".into(), vec!["x".into(), "y".into()]),
                Requirement::NotExists("b".into())
            ]
        );
        for bad in [
            "env in prod",
            "env in (prod",
            "env within (a)",
            "env in ((a))",
            "env in (a b)",
            "rank>x",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
