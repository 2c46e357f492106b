//! Label selectors for `get -l` and `delete -l`, kubectl's equality-based form:
//! `k=v`, `k==v`, `k!=v`, `k` (has the label) and `!k` (does not), comma-separated, all of
//! which must hold. Applied by the CLI to what the API lists.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Requirement>);

/// Parses `app=web,tier!=db,canary,!legacy`.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("invalid label selector {s:?}: empty requirement"));
        }
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(key(k, s)?, value(v, s)?)
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(key(k, s)?, value(v, s)?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(key(k, s)?)
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!(
                "invalid label selector {s:?}: only k=v, k!=v, k and !k are supported (not set-based `in`/`notin`)"
            ));
        } else {
            Requirement::Exists(key(part, s)?)
        };
        out.push(req);
    }
    Ok(Selector(out))
}

fn key(k: &str, whole: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
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
    let ok = v
        .bytes()
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
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
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
        assert!(parse_selector("app in (a,b)").is_err());
        assert!(parse_selector("=x").is_err());
    }
}
