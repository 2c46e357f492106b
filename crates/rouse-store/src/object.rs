//! Reading and stamping the parts of a Kubernetes-shaped JSON object the store owns
//! (`kind`, `apiVersion`, and the store-maintained `metadata` fields).

use rouse_api::Kind;
use serde_json::{Map, Value};

use crate::StoreError;

/// The namespace an object without one lands in.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Checks that `obj` is a JSON object of `kind` with an object `metadata`, filling in
/// `apiVersion`, `kind`, `metadata` and the default namespace where absent.
pub(crate) fn normalize(kind: Kind, obj: &mut Value) -> Result<(), StoreError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid(format!("a {kind} must be a JSON object")))?;
    check_type_field(map, "kind", kind.name(), kind)?;
    check_type_field(map, "apiVersion", kind.api_version(), kind)?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid(format!("{kind} metadata must be an object")))?;
    for field in [
        "name",
        "generateName",
        "namespace",
        "resourceVersion",
        "uid",
    ] {
        match meta.get(field) {
            None | Some(Value::String(_)) | Some(Value::Null) => {}
            Some(other) => {
                return Err(StoreError::Invalid(format!(
                    "metadata.{field} must be a string, not {other}"
                )));
            }
        }
    }
    if str_field(meta, "namespace").is_empty() {
        meta.insert("namespace".into(), DEFAULT_NAMESPACE.into());
    }
    Ok(())
}

fn check_type_field(
    map: &mut Map<String, Value>,
    field: &str,
    want: &str,
    kind: Kind,
) -> Result<(), StoreError> {
    match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.into(), want.into());
            Ok(())
        }
        Some(Value::String(s)) if s.is_empty() => {
            map.insert(field.into(), want.into());
            Ok(())
        }
        Some(Value::String(s)) if s == want => Ok(()),
        Some(other) => Err(StoreError::Invalid(format!(
            "{field} {other} does not match the {kind} endpoint (want \"{want}\")"
        ))),
    }
}

fn str_field<'a>(map: &'a Map<String, Value>, field: &str) -> &'a str {
    map.get(field).and_then(Value::as_str).unwrap_or("")
}

/// `metadata` of a normalized object.
pub(crate) fn meta(obj: &Value) -> &Map<String, Value> {
    obj.get("metadata")
        .and_then(Value::as_object)
        .expect("normalized object has metadata")
}

/// `metadata` of a normalized object, mutably.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("normalized object has metadata")
}

/// A string field of `metadata`, "" when absent.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    str_field(meta(obj), field)
}

/// Sets a string field of `metadata`.
pub(crate) fn set_meta(obj: &mut Value, field: &str, value: impl Into<Value>) {
    meta_mut(obj).insert(field.into(), value.into());
}

/// Sets `metadata.resourceVersion` to `rv` as a decimal string.
pub(crate) fn set_resource_version(obj: &mut Value, rv: u64) {
    set_meta(obj, "resourceVersion", rv.to_string());
}

/// Copies `field` of the object from `from` to `to` (removing it from `to` when `from` lacks it).
pub(crate) fn copy_top(to: &mut Value, from: &Value, field: &str) {
    let to = to.as_object_mut().expect("normalized object");
    match from.get(field) {
        Some(v) => {
            to.insert(field.into(), v.clone());
        }
        None => {
            to.remove(field);
        }
    }
}

/// Copies a `metadata` field from `from` to `to` (removing it from `to` when `from` lacks it).
pub(crate) fn copy_meta(to: &mut Value, from: &Value, field: &str) {
    match meta(from).get(field) {
        Some(v) => {
            let v = v.clone();
            meta_mut(to).insert(field.into(), v);
        }
        None => {
            meta_mut(to).remove(field);
        }
    }
}

/// `metadata.generation`, 0 when absent.
pub(crate) fn generation(obj: &Value) -> i64 {
    meta(obj)
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The uids in `metadata.ownerReferences`.
pub(crate) fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
        .filter(|uid| !uid.is_empty())
}

/// A random UUID (version 4) in its usual text form.
pub(crate) fn new_uid() -> String {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Five random lowercase alphanumerics, the suffix `generateName` gets.
pub(crate) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uid_is_uuid_v4_text() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(u, new_uid());
    }

    #[test]
    fn normalize_fills_and_rejects() {
        let mut o = json!({"metadata": {"name": "a"}});
        normalize(Kind::Route, &mut o).unwrap();
        assert_eq!(o["kind"], "Route");
        assert_eq!(o["apiVersion"], "serving.knative.dev/v1");
        assert_eq!(o["metadata"]["namespace"], "default");

        let mut wrong = json!({"kind": "Service", "metadata": {"name": "a"}});
        assert!(matches!(
            normalize(Kind::Route, &mut wrong),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            normalize(Kind::Route, &mut json!([1])),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            normalize(Kind::Route, &mut json!({"metadata": 3})),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            normalize(Kind::Route, &mut json!({"metadata": {"name": 3}})),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn suffix_is_lowercase_alphanumeric() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
