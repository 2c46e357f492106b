//! OpenAPI v3 schemas for the CRDs, generated from the API types with `schemars` and rewritten
//! into Kubernetes' *structural* form: everything inlined (no `$ref`), every node typed, `null`
//! variants folded away, `IntOrString` as `x-kubernetes-int-or-string`, open-ended JSON as
//! `x-kubernetes-preserve-unknown-fields`, and only the keywords `JSONSchemaProps` knows.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// Why a generated schema could not be made structural (a type the rewrite does not know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SchemaError {
    /// JSON path of the offending schema node, e.g. `.properties.spec.anyOf`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Keywords of Kubernetes' `JSONSchemaProps` kept from the generated schema; others
/// (`$schema`, `title`, `default`, `examples`, ...) are dropped.
const KEPT: &[&str] = &[
    "type",
    "format",
    "description",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
];

/// The structural schema of a whole object of type `T` (an `Object<Spec, Status>`): its
/// `metadata` is left to the API server (`type: object`), as Kubernetes requires of CRDs.
pub fn object_schema<T: JsonSchema>() -> Result<Value, SchemaError> {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let root = settings.into_generator().into_root_schema_for::<T>();
    let mut v = root.to_value();
    v = structural(v, "")?;
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("metadata".into(), json!({"type": "object"}));
    }
    Ok(v)
}

/// Rewrites one generated schema node (and its children) into structural form.
pub fn structural(node: Value, path: &str) -> Result<Value, SchemaError> {
    let err = |reason: &str| SchemaError {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        },
        reason: reason.to_string(),
    };
    let mut m = match node {
        // `true` / `{}`: any JSON at all (serde_json::Value fields).
        Value::Bool(true) => return Ok(preserve_unknown()),
        Value::Object(m) => m,
        _ => return Err(err("schema is neither an object nor `true`")),
    };
    if m.contains_key("$ref") {
        return Err(err("unresolved $ref (subschemas must be inlined)"));
    }
    // Variants: `X | null` folds to X; integer | string is IntOrString; anything else is not
    // structural and is refused so a new type cannot slip a bad schema into the CRDs.
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(variants)) = m.remove(key) {
            let non_null: Vec<Value> = variants.into_iter().filter(|v| !is_null(v)).collect();
            let types: Vec<&str> = non_null
                .iter()
                .filter_map(|v| v.get("type").and_then(Value::as_str))
                .collect();
            if non_null.len() == 2 && types.contains(&"integer") && types.contains(&"string") {
                m.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
            } else if non_null.len() == 1 {
                let inner = non_null.into_iter().next().unwrap_or(Value::Bool(true));
                let inner = structural(inner, &format!("{path}.{key}"))?;
                // The outer node's description wins over the variant's.
                if let Value::Object(inner) = inner {
                    for (k, v) in inner {
                        m.entry(k).or_insert(v);
                    }
                }
            } else if !non_null.is_empty() && non_null.iter().all(is_string_const) {
                let values: Vec<Value> = non_null
                    .iter()
                    .flat_map(|v| v["enum"].as_array().cloned().unwrap_or_default())
                    .collect();
                m.insert("type".into(), json!("string"));
                m.insert("enum".into(), Value::Array(values));
            } else {
                return Err(err(&format!("{key} with variants that are not structural")));
            }
        }
    }
    if m.contains_key("allOf") || m.contains_key("not") {
        return Err(err("allOf/not are not supported in generated schemas"));
    }
    // `type: [T, "null"]` -> `type: T`.
    if let Some(Value::Array(types)) = m.get("type").cloned() {
        let non_null: Vec<&Value> = types
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .collect();
        match non_null.as_slice() {
            [one] => {
                m.insert("type".into(), (*one).clone());
            }
            _ => return Err(err("a node with several types")),
        }
    }
    if let Some(Value::Array(values)) = m.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    m.retain(|k, _| KEPT.contains(&k.as_str()));
    if m.get("additionalProperties") == Some(&Value::Bool(false)) {
        // `deny_unknown_fields`: the API server prunes unknown fields (and kubectl's strict
        // field validation reports them); `properties` and `additionalProperties` exclude
        // each other in a CRD.
        m.remove("additionalProperties");
    }
    if let Some(Value::Object(props)) = m.remove("properties") {
        let mut out = Map::new();
        for (name, child) in props {
            out.insert(
                name.clone(),
                structural(child, &format!("{path}.properties.{name}"))?,
            );
        }
        m.insert("properties".into(), Value::Object(out));
        m.entry("type").or_insert(json!("object"));
    }
    if let Some(child) = m.remove("additionalProperties") {
        let child = structural(child, &format!("{path}.additionalProperties"))?;
        m.insert("additionalProperties".into(), child);
        m.entry("type").or_insert(json!("object"));
    }
    if let Some(child) = m.remove("items") {
        m.insert("items".into(), structural(child, &format!("{path}.items"))?);
    }
    let typed = m.contains_key("type")
        || m.contains_key("x-kubernetes-int-or-string")
        || m.contains_key("x-kubernetes-preserve-unknown-fields");
    if !typed {
        // An empty schema (schemars' rendering of `serde_json::Value`): any JSON.
        let description = m.remove("description");
        if !m.is_empty() {
            return Err(err("an untyped schema with constraints"));
        }
        let mut any = preserve_unknown();
        if let (Some(d), Value::Object(a)) = (description, &mut any) {
            a.insert("description".into(), d);
        }
        return Ok(any);
    }
    Ok(Value::Object(m))
}

fn preserve_unknown() -> Value {
    json!({"x-kubernetes-preserve-unknown-fields": true})
}

/// A variant that only admits `null` (`type: null`, or OpenAPI 3's `enum: [null]`).
fn is_null(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null") || v.get("enum") == Some(&json!([null]))
}

fn is_string_const(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("string")
        && v.get("enum")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() == 1)
}

/// Checks the rules of a structural schema that Kubernetes enforces on CRDs: every node
/// typed (or int-or-string, or preserving unknown fields), no `$ref`/definitions, no type in
/// `anyOf`/`oneOf`/`allOf`, `properties` and `additionalProperties` not both. Returns every
/// violation as `path: reason`.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, ".", &mut out);
    out
}

fn check(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(m) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    for bad in [
        "$ref",
        "definitions",
        "$defs",
        "components",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        if m.contains_key(bad) {
            out.push(format!("{path}: has {bad}"));
        }
    }
    let flag = |k: &str| m.get(k) == Some(&Value::Bool(true));
    if !m.contains_key("type")
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.push(format!("{path}: no type"));
    }
    if m.get("type").is_some_and(|t| !t.is_string()) {
        out.push(format!("{path}: type is not a single string"));
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check(child, &format!("{path}properties.{name}."), out);
        }
    }
    if let Some(child) = m.get("additionalProperties") {
        check(child, &format!("{path}additionalProperties."), out);
    }
    if let Some(child) = m.get("items") {
        check(child, &format!("{path}items."), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_and_int_or_string_fold() {
        let v = structural(
            json!({"anyOf": [{"type": "integer", "format": "int64"}, {"type": "string"}],
                   "description": "port"}),
            "",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"x-kubernetes-int-or-string": true, "description": "port"})
        );
        let v = structural(json!({"type": ["string", "null"], "default": null}), "").unwrap();
        assert_eq!(v, json!({"type": "string"}));
        let v = structural(
            json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"type": "null"}]}),
            "",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "object", "properties": {"a": {"type": "integer"}}})
        );
    }

    #[test]
    fn open_json_preserves_unknown_fields() {
        assert_eq!(structural(json!(true), "").unwrap(), preserve_unknown());
        assert_eq!(structural(json!({}), "").unwrap(), preserve_unknown());
        let v = structural(json!({"type": "array", "items": {}}), "").unwrap();
        assert_eq!(v["items"], preserve_unknown());
    }

    #[test]
    fn refs_and_mixed_unions_are_refused() {
        let e = structural(json!({"properties": {"a": {"$ref": "#/x"}}}), "").unwrap_err();
        assert_eq!(e.path, ".properties.a");
        let e = structural(
            json!({"anyOf": [{"type": "object"}, {"type": "array"}]}),
            "",
        )
        .unwrap_err();
        assert!(e.reason.contains("not structural"), "{e}");
    }

    #[test]
    fn violations_are_reported_with_paths() {
        let v = json!({"type": "object", "properties": {"a": {"description": "x"},
                       "b": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}}});
        let found = structural_violations(&v);
        assert_eq!(
            found,
            vec![
                ".properties.a.: no type".to_string(),
                ".properties.b.: both properties and additionalProperties".to_string()
            ]
        );
    }
}
