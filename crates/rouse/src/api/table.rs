//! Server-side printing: a list or object as a `meta.k8s.io/v1` `Table` when the client asks
//! for one (`Accept: application/json;as=Table;...`, as kubectl does), with Knative's printer
//! columns (the CRDs' `additionalPrinterColumns`, from `rouse-kube`).

use http::HeaderMap;
use http::header::ACCEPT;
use rouse_api::Kind;
use serde_json::{Value, json};

/// True when the request's `Accept` asks for a Table first.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next()
        .is_some_and(|first| {
            first
                .split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("as=Table"))
        })
}

/// The Table's column definitions for `kind`: NAME, then Knative's printer columns.
pub fn columns(kind: Kind) -> Vec<Value> {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for (name, path, ty) in rouse_kube::crd::info(kind).columns {
        cols.push(json!({
            "name": name, "type": ty, "format": "", "priority": 0,
            "description": format!("Custom resource definition column (in JSONPath format): {path}"),
        }));
    }
    cols
}

/// One object's row.
pub fn row(kind: Kind, obj: &Value) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for (_, path, _) in rouse_kube::crd::info(kind).columns {
        cells.push(eval(obj, path).unwrap_or(Value::Null));
    }
    let object = json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    });
    json!({"cells": cells, "object": object})
}

/// A Table of `objects`.
pub fn table(kind: Kind, objects: &[Value], list_meta: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns(kind),
        "rows": objects.iter().map(|o| row(kind, o)).collect::<Vec<_>>(),
    })
}

/// Evaluates the JSONPath forms the printer columns use: `.a.b`, `['a\.b']` and
/// `[?(@.k=='v')]` (the first match).
pub fn eval(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[?(@.") {
            let end = r.find(")]")?;
            let (cond, after) = (&r[..end], &r[end + 2..]);
            let (field, want) = cond.split_once("==")?;
            let want = want.trim_matches(|c| c == '\'' || c == '"');
            cur = cur
                .as_array()?
                .iter()
                .find(|e| e[field].as_str() == Some(want))?;
            rest = after;
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            let key = r[..end].replace("\\.", ".");
            cur = cur.get(&key)?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else {
            return None;
        }
    }
    Some(cur.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let obj = json!({
            "metadata": {"name": "a", "labels": {"serving.knative.dev/configuration": "cfg"}},
            "status": {"url": "http://a", "conditions": [
                {"type": "ConfigurationsReady", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "Ok"}]},
        });
        assert_eq!(eval(&obj, ".status.url"), Some(json!("http://a")));
        assert_eq!(
            eval(&obj, ".status.conditions[?(@.type=='Ready')].status"),
            Some(json!("True"))
        );
        assert_eq!(
            eval(
                &obj,
                ".metadata.labels['serving\\.knative\\.dev/configuration']"
            ),
            Some(json!("cfg"))
        );
        assert_eq!(eval(&obj, ".status.missing"), None);
        let r = row(Kind::Service, &obj);
        assert_eq!(
            r["cells"],
            json!(["a", "http://a", null, null, "True", "Ok"])
        );
    }

    #[test]
    fn accept_header() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_table(&h));
        h.insert(ACCEPT, "application/json".parse().unwrap());
        assert!(!wants_table(&h));
    }
}
