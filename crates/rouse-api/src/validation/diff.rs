//! A short diff of two objects for "changed (-old +new)" messages: every leaf field that
//! differs, by path, with its old and new JSON values.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

/// The differing leaves of `old` and `new` as JSON, one block per path; empty when equal.
pub(crate) fn short_diff<T: Serialize>(old: &T, new: &T) -> String {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return "(values could not be serialized)".to_string();
    };
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    leaves(&old, String::new(), &mut a);
    leaves(&new, String::new(), &mut b);
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = String::new();
    for path in paths {
        let (x, y) = (a.get(path), b.get(path));
        if x == y {
            continue;
        }
        let shown = if path.is_empty() { "." } else { path };
        out.push_str(&format!("{shown}:\n"));
        if let Some(x) = x {
            out.push_str(&format!("\t-: {x}\n"));
        }
        if let Some(y) = y {
            out.push_str(&format!("\t+: {y}\n"));
        }
    }
    out
}

fn leaves(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, p, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {
            out.insert(path, v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_changed_added_and_removed_leaves() {
        let old = json!({"containers": [{"image": "a", "env": [{"name": "X"}]}], "t": 1});
        let new = json!({"containers": [{"image": "b"}], "t": 1, "cc": 5});
        assert_eq!(
            short_diff(&old, &new),
            "cc:\n\t+: 5\ncontainers[0].env[0].name:\n\t-: \"X\"\ncontainers[0].image:\n\t-: \"a\"\n\t+: \"b\"\n"
        );
        assert_eq!(short_diff(&old, &old), "");
    }
}
