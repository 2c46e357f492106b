//! The defaulting webhook's answer as an RFC 6902 JSON patch against the object the API server
//! sent.
//!
//! Defaulting runs on the typed object, whose JSON can differ from what was sent in ways that
//! are not changes (fields the types leave out, empty maps written out). So the patch is not
//! the difference of the typed object before and after defaulting applied blindly: that
//! difference is first laid over the sent object ([`overlay`]), and the patch is the
//! difference between the sent object and that result ([`diff`]), valid against what was sent.

use serde_json::{Map, Value, json};

/// `original` with what changed between `before` and `after` applied: keys `after` changed or
/// added take its value (merged into `original`'s when both are objects, or arrays of the
/// same length), keys `after` dropped are removed, everything else is `original`'s.
pub fn overlay(original: &Value, before: &Value, after: &Value) -> Value {
    if before == after {
        return original.clone();
    }
    match (original, before, after) {
        (Value::Object(o), Value::Object(b), Value::Object(a)) => {
            let mut out = o.clone();
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.remove(key);
            }
            for (key, new) in a {
                let old = b.get(key).unwrap_or(&Value::Null);
                if old == new {
                    continue;
                }
                let merged = match o.get(key) {
                    Some(sent) => overlay(sent, old, new),
                    None => new.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(o), Value::Array(b), Value::Array(a))
            if o.len() == b.len() && b.len() == a.len() =>
        {
            Value::Array(
                o.iter()
                    .zip(b.iter().zip(a))
                    .map(|(o, (b, a))| overlay(o, b, a))
                    .collect(),
            )
        }
        _ => after.clone(),
    }
}

/// The JSON patch operations that turn `from` into `to`.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at("", from, to, &mut ops);
    ops
}

fn diff_at(path: &str, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => diff_objects(path, f, t, ops),
        (Value::Array(f), Value::Array(t)) if f.len() == t.len() => {
            for (i, (a, b)) in f.iter().zip(t).enumerate() {
                diff_at(&format!("{path}/{i}"), a, b, ops);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path, "value": to})),
    }
}

fn diff_objects(
    path: &str,
    from: &Map<String, Value>,
    to: &Map<String, Value>,
    ops: &mut Vec<Value>,
) {
    for key in from.keys().filter(|k| !to.contains_key(*k)) {
        ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(key))}));
    }
    for (key, value) in to {
        let at = format!("{path}/{}", escape(key));
        match from.get(key) {
            None => ops.push(json!({"op": "add", "path": at, "value": value})),
            Some(old) => diff_at(&at, old, value, ops),
        }
    }
}

/// A key as a JSON pointer segment (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies add/remove/replace operations, as the API server does.
    fn apply(doc: &Value, ops: &[Value]) -> Value {
        let mut doc = doc.clone();
        for op in ops {
            let path = op["path"].as_str().unwrap();
            let segs: Vec<String> = path
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            if segs.is_empty() {
                doc = op["value"].clone();
                continue;
            }
            let (last, parents) = segs.split_last().unwrap();
            let mut at = &mut doc;
            for s in parents {
                at = match at {
                    Value::Array(a) => &mut a[s.parse::<usize>().unwrap()],
                    other => other.get_mut(s.as_str()).expect("parent exists"),
                };
            }
            match (op["op"].as_str().unwrap(), at) {
                ("remove", Value::Object(m)) => {
                    assert!(m.remove(last).is_some(), "remove of a missing {path}");
                }
                ("add", Value::Object(m)) => {
                    m.insert(last.clone(), op["value"].clone());
                }
                ("replace", Value::Object(m)) => {
                    assert!(m.contains_key(last), "replace of a missing {path}");
                    m.insert(last.clone(), op["value"].clone());
                }
                ("replace", Value::Array(a)) => {
                    a[last.parse::<usize>().unwrap()] = op["value"].clone()
                }
                (op, at) => panic!("unexpected {op} at {path} on {at}"),
            }
        }
        doc
    }

    #[test]
    fn patch_applies_to_what_was_sent_and_keeps_what_the_types_drop() {
        let sent = json!({
            "metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"x/y~z": "1"}},
            "spec": {"template": {"spec": {"containers": [{"image": "i", "unknown": 1}]}}},
        });
        // The typed round trip drops managedFields and `unknown`, writes an empty status.
        let before = json!({
            "metadata": {"name": "a", "annotations": {"x/y~z": "1"}},
            "spec": {"template": {"spec": {"containers": [{"image": "i"}]}}},
            "status": {},
        });
        let mut after = before.clone();
        after["spec"]["template"]["spec"]["containers"][0]["name"] = json!("user-container");
        after["spec"]["template"]["spec"]["timeoutSeconds"] = json!(300);
        after["spec"]["traffic"] = json!([{"latestRevision": true, "percent": 100}]);
        after["metadata"]["annotations"]["x/y~z"] = json!("2");

        let want = overlay(&sent, &before, &after);
        assert_eq!(
            want["metadata"]["managedFields"],
            sent["metadata"]["managedFields"]
        );
        assert_eq!(
            want["spec"]["template"]["spec"]["containers"][0]["unknown"],
            1
        );
        assert!(want.get("status").is_none(), "{want}");

        let ops = diff(&sent, &want);
        assert_eq!(apply(&sent, &ops), want);
        assert!(
            ops.contains(
                &json!({"op": "replace", "path": "/metadata/annotations/x~1y~0z", "value": "2"})
            ),
            "{ops:?}"
        );
        assert!(
            ops.contains(&json!({"op": "add", "path": "/spec/template/spec/containers/0/name", "value": "user-container"})),
            "{ops:?}"
        );
    }

    #[test]
    fn fields_added_under_a_missing_parent_come_whole() {
        let sent = json!({"metadata": {"name": "a"}});
        let before = json!({"metadata": {"name": "a"}, "spec": {}});
        let after = json!({"metadata": {"name": "a"}, "spec": {"traffic": [{"percent": 100}]}});
        let want = overlay(&sent, &before, &after);
        let ops = diff(&sent, &want);
        assert_eq!(
            ops,
            vec![json!({"op": "add", "path": "/spec", "value": {"traffic": [{"percent": 100}]}})]
        );
        assert_eq!(apply(&sent, &ops), want);
    }

    #[test]
    fn removals_and_resized_arrays() {
        let from = json!({"a": 1, "list": [1, 2], "keep": {"b": 2}});
        let to = json!({"list": [1, 2, 3], "keep": {"b": 2}});
        let ops = diff(&from, &to);
        assert_eq!(
            ops,
            vec![
                json!({"op": "remove", "path": "/a"}),
                json!({"op": "replace", "path": "/list", "value": [1, 2, 3]}),
            ]
        );
        assert_eq!(apply(&from, &ops), to);
        assert!(diff(&to, &to).is_empty());
    }
}
