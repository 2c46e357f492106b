//! PATCH bodies: JSON merge patch (RFC 7386, what kubectl sends for custom resources and
//! `patch --type=merge`), JSON patch (RFC 6902, `--type=json`) and server-side apply
//! (`application/apply-patch+yaml`, applied as a merge of the applied configuration with the
//! field manager recorded in `managedFields`).

use serde_json::{Map, Value};

/// What a PATCH's `Content-Type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Apply,
    /// Kubernetes refuses strategic merge for custom resources (415); so does Rouse.
    StrategicMerge,
}

impl PatchType {
    /// The patch type of a media type, `None` for one that is no patch.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            _ => None,
        }
    }
}

/// Applies a JSON merge patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a JSON patch (a list of operations) to `target`.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be a list of operations")?;
    for (i, op) in ops.iter().enumerate() {
        apply_op(target, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    Ok(())
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("missing \"path\"")?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or("missing \"value\"".to_string())
    };
    match op["op"].as_str().ok_or("missing \"op\"")? {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            remove(doc, path)?;
            add(doc, path, value()?)
        }
        "move" => {
            let from = op["from"].as_str().ok_or("missing \"from\"")?;
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        "copy" => {
            let from = op["from"].as_str().ok_or("missing \"from\"")?;
            let v = doc
                .pointer(from)
                .cloned()
                .ok_or(format!("{from}: not found"))?;
            add(doc, path, v)
        }
        "test" => {
            if doc.pointer(path) == Some(&value()?) {
                Ok(())
            } else {
                Err(format!("test failed at {path}"))
            }
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

/// The parent's pointer and the last token, unescaped.
fn split(path: &str) -> Result<(&str, String), String> {
    let at = path
        .rfind('/')
        .ok_or(format!("{path:?}: not a JSON pointer"))?;
    Ok((
        &path[..at],
        path[at + 1..].replace("~1", "/").replace("~0", "~"),
    ))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, key) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key, v);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if key == "-" {
                a.len()
            } else {
                key.parse::<usize>()
                    .map_err(|_| format!("{path}: bad index"))?
            };
            if at > a.len() {
                return Err(format!("{path}: index out of range"));
            }
            a.insert(at, v);
            Ok(())
        }
        _ => Err(format!("{parent:?}: not found")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    let gone = match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&key),
        Some(Value::Array(a)) => key
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    };
    gone.ok_or(format!("{path}: not found"))
}

/// True when `applied` says nothing `stored` contradicts: every field it sets has that value
/// there (lists item by item), so fields the server defaulted do not count as a change.
pub fn within(applied: &Value, stored: &Value) -> bool {
    match (applied, stored) {
        (Value::Object(a), Value::Object(s)) => a
            .iter()
            .all(|(k, v)| s.get(k).is_some_and(|sv| within(v, sv))),
        (Value::Array(a), Value::Array(s)) => {
            a.len() == s.len() && a.iter().zip(s).all(|(x, y)| within(x, y))
        }
        _ => applied == stored,
    }
}

/// The field paths a server-side apply configuration sets (`f:`-prefixed, as `managedFields`'
/// FieldsV1 names them), minus the identity fields every manager shares.
pub fn fields_v1(applied: &Value) -> Value {
    fn walk(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (format!("f:{k}"), walk(v))).collect())
            }
            _ => Value::Object(Map::new()),
        }
    }
    let mut f = walk(applied);
    if let Some(m) = f.as_object_mut() {
        m.remove("f:apiVersion");
        m.remove("f:kind");
        if let Some(Value::Object(meta)) = m.get_mut("f:metadata") {
            meta.remove("f:name");
            meta.remove("f:namespace");
        }
    }
    f
}

/// The leaf field paths in a FieldsV1 set, as dotted paths.
pub fn leaves(fields: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(m) = fields {
        if m.is_empty() && !prefix.is_empty() {
            out.push(prefix.to_string());
        }
        for (k, v) in m {
            let k = k.strip_prefix("f:").unwrap_or(k);
            let p = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            leaves(v, &p, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut t, &json!({"list": [1, 2]}));
        assert_eq!(t["list"], json!([1, 2]));
    }

    #[test]
    fn json_patch_rfc6902() {
        let mut t = json!({"a": {"b": [1, 2]}});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/a/b/0", "value": 0},
                {"op": "remove", "path": "/a/b/1"},
                {"op": "add", "path": "/a/c~1d", "value": "x"},
                {"op": "test", "path": "/a/c~1d", "value": "x"},
            ]),
        )
        .unwrap();
        assert_eq!(t, json!({"a": {"b": [0, 3], "c/d": "x"}}));
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(
            json_patch(
                &mut t,
                &json!([{"op": "test", "path": "/a/c~1d", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn applied_within_defaulted() {
        let stored = json!({"containers": [{"image": "a", "name": "user-container"}]});
        assert!(within(&json!({"containers": [{"image": "a"}]}), &stored));
        assert!(!within(&json!({"containers": [{"image": "b"}]}), &stored));
        assert!(!within(&json!({"containers": []}), &stored));
    }

    #[test]
    fn apply_field_sets() {
        let f = fields_v1(&json!({"apiVersion": "v", "kind": "K",
            "metadata": {"name": "n", "labels": {"a": "b"}}, "spec": {"x": 1}}));
        let mut l = Vec::new();
        leaves(&f, "", &mut l);
        l.sort();
        assert_eq!(l, vec!["metadata.labels.a", "spec.x"]);
    }
}
