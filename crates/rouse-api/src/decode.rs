//! Strict decoding of manifests: multi-document YAML or JSON into typed objects. Unknown fields
//! are refused with their path (catching typos Knative's pruning would silently drop), and
//! `apiVersion`/`kind` must name a kind Rouse serves.

use serde::Deserialize;
use serde_json::Value;

use crate::autoscaling::PodAutoscaler;
use crate::domainmapping::DomainMapping;
use crate::kind::Kind;
use crate::meta::Resource;
use crate::networking::ServerlessService;
use crate::serving::{Configuration, Revision, Route, Service};

/// Why a document could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not YAML/JSON at all.
    #[error("document {doc}: malformed: {reason}")]
    Malformed { doc: usize, reason: String },
    /// `apiVersion`/`kind` missing or not served.
    #[error("document {doc}: {reason}")]
    UnknownKind { doc: usize, reason: String },
    /// A field is unknown or has the wrong type; `path` is where.
    #[error("document {doc}: {reason}: {path}")]
    Field {
        doc: usize,
        path: String,
        reason: String,
    },
}

/// A decoded object of any kind Rouse serves.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    Service(Service),
    Configuration(Configuration),
    Revision(Revision),
    Route(Route),
    PodAutoscaler(PodAutoscaler),
    ServerlessService(ServerlessService),
    DomainMapping(DomainMapping),
}

impl AnyObject {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnyObject::Service(_) => Kind::Service,
            AnyObject::Configuration(_) => Kind::Configuration,
            AnyObject::Revision(_) => Kind::Revision,
            AnyObject::Route(_) => Kind::Route,
            AnyObject::PodAutoscaler(_) => Kind::PodAutoscaler,
            AnyObject::ServerlessService(_) => Kind::ServerlessService,
            AnyObject::DomainMapping(_) => Kind::DomainMapping,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &crate::meta::ObjectMeta {
        match self {
            AnyObject::Service(o) => &o.metadata,
            AnyObject::Configuration(o) => &o.metadata,
            AnyObject::Revision(o) => &o.metadata,
            AnyObject::Route(o) => &o.metadata,
            AnyObject::PodAutoscaler(o) => &o.metadata,
            AnyObject::ServerlessService(o) => &o.metadata,
            AnyObject::DomainMapping(o) => &o.metadata,
        }
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut crate::meta::ObjectMeta {
        match self {
            AnyObject::Service(o) => &mut o.metadata,
            AnyObject::Configuration(o) => &mut o.metadata,
            AnyObject::Revision(o) => &mut o.metadata,
            AnyObject::Route(o) => &mut o.metadata,
            AnyObject::PodAutoscaler(o) => &mut o.metadata,
            AnyObject::ServerlessService(o) => &mut o.metadata,
            AnyObject::DomainMapping(o) => &mut o.metadata,
        }
    }

    /// The object as JSON.
    pub fn to_value(&self) -> Value {
        match self {
            AnyObject::Service(o) => o.to_value(),
            AnyObject::Configuration(o) => o.to_value(),
            AnyObject::Revision(o) => o.to_value(),
            AnyObject::Route(o) => o.to_value(),
            AnyObject::PodAutoscaler(o) => o.to_value(),
            AnyObject::ServerlessService(o) => o.to_value(),
            AnyObject::DomainMapping(o) => o.to_value(),
        }
    }
}

/// The deepest nesting of maps and lists a manifest may have (Kubernetes objects are a dozen
/// levels deep at most); deeper input is refused before it costs anything.
pub const MAX_DEPTH: usize = 64;
/// The most documents one manifest may hold.
pub const MAX_DOCUMENTS: usize = 1024;
/// The largest manifest text parsed, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;
/// The most nodes (maps, lists and scalars) in one manifest.
pub const MAX_NODES: usize = 250_000;
/// The most alias (`*name`) uses in one manifest, and the most nodes their expansion may add:
/// a "billion laughs" is refused long before it grows.
pub const MAX_ALIASES: usize = 1_000;
pub const MAX_ALIAS_EXPANSION: usize = 100_000;

/// JSON values, for crates that read manifests without depending on serde_json themselves.
pub use serde_json::Value as JsonValue;

/// The YAML parser's budgets: fail fast on deep, huge or self-multiplying input.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_total_scalar_bytes = MAX_MANIFEST_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_EXPANSION;
    // Scalars are typed as YAML 1.2 (and serde_yaml) type them: `y`, `on`, `0755` and `1_000`
    // stay strings.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    // Errors stay on one line (no source snippet).
    options.with_snippet = false;
    // Duplicates reach the strict visitor, which names the key's path.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    options
}

/// Splits YAML (or JSON, which is YAML) into JSON values, one per non-empty document.
/// Parsing is bounded ([`MAX_DEPTH`], [`MAX_DOCUMENTS`], [`MAX_MANIFEST_BYTES`], [`MAX_NODES`],
/// alias expansion) and strict: a key given twice in one map is refused with its path.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, DecodeError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(DecodeError::Malformed {
            doc: 1,
            reason: format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    let docs: Vec<StrictDoc> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| DecodeError::Malformed {
            doc: e.location().map_or(1, |l| document_at_line(text, l.line())),
            reason: yaml_error_text(&e),
        })?;
    let mut out = Vec::new();
    for StrictDoc(v) in docs {
        if v.is_null() {
            continue;
        }
        // A `kind: List` (kubectl's list output) expands into its items.
        if v.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = v.get("items").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            continue;
        }
        out.push(v);
    }
    Ok(out)
}

/// Parses one JSON document strictly: duplicate keys are refused with their path, nesting is
/// bounded by [`MAX_DEPTH`].
pub fn parse_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictSeed::root()
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| DecodeError::Malformed {
            doc: 1,
            reason: e.to_string(),
        })?;
    Ok(v)
}

/// Which document (1-based) line `line` (1-based) is in: one more than the `---` separators
/// before it, not counting one that opens the text.
fn document_at_line(text: &str, line: u64) -> usize {
    let mut doc = 1;
    let mut content_seen = false;
    for l in text.lines().take(line.saturating_sub(1) as usize) {
        if l.starts_with("---") {
            if content_seen {
                doc += 1;
            }
        } else if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            content_seen = true;
        }
    }
    doc
}

/// The parser's message on one line (it may render a source snippet over several).
fn yaml_error_text(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = lines.next().unwrap_or("invalid YAML").to_string();
    if first.contains("recursion limit") || first.contains("nesting") || first.contains("depth") {
        first.push_str(&format!(
            " (manifests may nest at most {MAX_DEPTH} levels deep)"
        ));
    }
    first
}

/// YAML text of a JSON value (for `-o yaml` and generated files).
pub fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// One document decoded by [`StrictSeed`].
struct StrictDoc(Value);

impl<'de> Deserialize<'de> for StrictDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrictSeed::root().deserialize(d).map(StrictDoc)
    }
}

/// Builds a JSON value from any self-describing input, refusing duplicate keys (with the key's
/// path, like Kubernetes' strict decoding) and nesting deeper than [`MAX_DEPTH`].
struct StrictSeed {
    path: std::rc::Rc<str>,
    depth: usize,
}

impl StrictSeed {
    fn root() -> Self {
        Self {
            path: "".into(),
            depth: 0,
        }
    }

    fn child(&self, step: &str) -> Result<Self, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "nesting deeper than {MAX_DEPTH} levels at {}",
                if self.path.is_empty() {
                    "the top"
                } else {
                    &self.path
                }
            ));
        }
        let path = if self.path.is_empty() || step.starts_with('[') {
            format!("{}{step}", self.path)
        } else {
            format!("{}.{step}", self.path)
        };
        Ok(Self {
            path: path.into(),
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

use serde::de::{DeserializeSeed as _, Error as _};

impl<'de> serde::de::Visitor<'de> for StrictSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON-compatible value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{}: {v} is not a finite number", self.at())))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom(format!(
            "{}: binary values are not supported",
            self.at()
        )))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let seed = self
                .child(&format!("[{}]", out.len()))
                .map_err(A::Error::custom)?;
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let seed = self.child(&key).map_err(A::Error::custom)?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!(
                    "duplicate field {:?}",
                    &*seed.path
                )));
            }
            let v = map.next_value_seed(seed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

impl StrictSeed {
    fn at(&self) -> &str {
        if self.path.is_empty() {
            "the document"
        } else {
            &self.path
        }
    }
}

/// A map key as text: strings as they are, and numbers and booleans spelled out (as
/// Kubernetes' YAML-to-JSON conversion does).
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = String;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl serde::de::Visitor<'_> for KeySeed {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string, number or boolean map key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
        Ok("null".to_string())
    }
}

/// Decodes every document of a manifest strictly.
pub fn decode_manifest(text: &str) -> Result<Vec<AnyObject>, DecodeError> {
    parse_documents(text)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| decode_value(i + 1, v))
        .collect()
}

/// Decodes one JSON value strictly; `doc` numbers the document in error messages.
pub fn decode_value(doc: usize, v: Value) -> Result<AnyObject, DecodeError> {
    let kind = kind_of(doc, &v)?;
    Ok(match kind {
        Kind::Service => AnyObject::Service(typed(doc, v)?),
        Kind::Configuration => AnyObject::Configuration(typed(doc, v)?),
        Kind::Revision => AnyObject::Revision(typed(doc, v)?),
        Kind::Route => AnyObject::Route(typed(doc, v)?),
        Kind::PodAutoscaler => AnyObject::PodAutoscaler(typed(doc, v)?),
        Kind::ServerlessService => AnyObject::ServerlessService(typed(doc, v)?),
        Kind::DomainMapping => AnyObject::DomainMapping(typed(doc, v)?),
    })
}

/// Decodes a value known to be of kind `T`, strictly (used by the API for typed endpoints).
pub fn decode_typed<T: Resource>(v: Value) -> Result<T, DecodeError> {
    let kind = kind_of(1, &v)?;
    if kind != T::KIND {
        return Err(DecodeError::UnknownKind {
            doc: 1,
            reason: format!("kind {} does not match {}", kind.name(), T::KIND.name()),
        });
    }
    typed(1, v)
}

fn kind_of(doc: usize, v: &Value) -> Result<Kind, DecodeError> {
    if !v.is_object() {
        return Err(DecodeError::Malformed {
            doc,
            reason: "expected an object with apiVersion, kind, metadata and spec".to_string(),
        });
    }
    let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind_name = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind_name.is_empty() {
        return Err(DecodeError::UnknownKind {
            doc,
            reason: "missing field(s): apiVersion, kind".to_string(),
        });
    }
    let kind = Kind::from_name(kind_name).ok_or_else(|| DecodeError::UnknownKind {
        doc,
        reason: format!(
            "no kind {kind_name:?} is served in {api_version:?} (served: Service, Configuration, Revision, Route in serving.knative.dev/v1; DomainMapping in serving.knative.dev/v1beta1)"
        ),
    })?;
    if kind.api_version() != api_version {
        return Err(DecodeError::UnknownKind {
            doc,
            reason: format!(
                "no kind {kind_name:?} is served in {api_version:?}; use apiVersion {}",
                kind.api_version()
            ),
        });
    }
    Ok(kind)
}

fn typed<T: Resource>(doc: usize, v: Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::Field {
            doc,
            path: if path == "." { String::new() } else { path },
            reason: crate::suggest::with_suggestion(&e.into_inner().to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      containerConcurrency: 10
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          ports:
            - containerPort: 8080
          env:
            - name: TARGET
              value: World
  traffic:
    - latestRevision: true
      percent: 100
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata:
  name: r
spec:
  traffic:
    - revisionName: hello-00001
      percent: 100
      tag: current
"#;

    #[test]
    fn decodes_and_round_trips() {
        let objs = decode_manifest(HELLO).unwrap();
        assert_eq!(objs.len(), 2);
        let AnyObject::Service(s) = &objs[0] else {
            panic!("not a service")
        };
        assert_eq!(s.spec.template.spec.container_concurrency, Some(10));
        assert_eq!(s.spec.template.spec.containers[0].env[0].name, "TARGET");
        let json = serde_json::to_string(s).unwrap();
        let again = decode_manifest(&json).unwrap();
        assert_eq!(again[0], objs[0]);
        let yaml = to_yaml(&s.to_value());
        assert_eq!(decode_manifest(&yaml).unwrap()[0], objs[0]);
    }

    #[test]
    fn unknown_field_has_path() {
        let bad = HELLO.replace("- image:", "- imagee:");
        let err = decode_manifest(&bad).unwrap_err();
        match err {
            DecodeError::Field { path, reason, doc } => {
                assert_eq!(doc, 1);
                assert_eq!(path, "spec.template.spec.containers[0].imagee");
                assert!(reason.contains("unknown field `imagee`"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_kind_and_version() {
        let err = decode_manifest("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(err, DecodeError::UnknownKind { .. }), "{err}");
        let err = decode_manifest("apiVersion: serving.knative.dev/v1alpha1\nkind: Service\n")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("use apiVersion serving.knative.dev/v1"),
            "{err}"
        );
        let err = decode_manifest("kind: [\n").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }));
    }

    #[test]
    fn wrong_type_has_path() {
        let bad = HELLO.replace("containerConcurrency: 10", "containerConcurrency: ten");
        let err = decode_manifest(&bad).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("spec.template.spec.containerConcurrency"),
            "{err}"
        );
    }

    #[test]
    fn nesting_bomb_fails_fast() {
        let bomb = format!("x: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let start = std::time::Instant::now();
        let err = parse_documents(&bomb).unwrap_err();
        let took = start.elapsed();
        assert!(err.to_string().contains("64"), "{err}");
        // Generous: the old parser took 37 s of CPU on this input.
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_json(deep_json.as_bytes()).is_err());
        // 64 levels are fine; 65 are not.
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse_json(ok.as_bytes()).is_ok());
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let e = parse_json(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("nesting deeper than 64"), "{e}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from(
            "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        let start = std::time::Instant::now();
        assert!(parse_documents(&doc).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // YAML 1.2 scalars: these stay strings.
        let v = parse_documents("a: y\nb: on\nc: 0755\nd: 1_000\ne: true\nf: 10\n").unwrap();
        assert_eq!(v[0]["a"], "y");
        assert_eq!(v[0]["b"], "on");
        assert_eq!(v[0]["c"], "0755");
        assert_eq!(v[0]["d"], "1_000");
        assert_eq!(v[0]["e"], true);
        assert_eq!(v[0]["f"], 10);
        // Modest alias use is fine.
        let v = parse_documents("a: &x {b: 1}\nc: *x\n").unwrap();
        assert_eq!(v[0]["c"]["b"], 1);
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let dup = HELLO.replace(
            "        - image: ghcr.io/knative/helloworld-go:latest\n",
            "        - image: ghcr.io/knative/helloworld-go:latest\n          image: evil\n",
        );
        let e = parse_documents(&dup).unwrap_err();
        assert!(
            e.to_string()
                .contains("duplicate field \"spec.template.spec.containers[0].image\""),
            "{e}"
        );
        let e = parse_json(br#"{"spec":{"a":1,"a":2}}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate field \"spec.a\""), "{e}");
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert!(e.to_string().contains("duplicate field \"a\""), "{e}");
    }

    #[test]
    fn errors_name_their_document() {
        let e = parse_documents("---\na: 1\n---\nb: 2\n---\nc: [\n").unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { doc: 3, .. }), "{e}");
        let e = parse_documents("a: 1\na: 2\n").unwrap_err();
        assert!(matches!(e, DecodeError::Malformed { doc: 1, .. }), "{e}");
    }

    #[test]
    fn too_many_documents() {
        let many = "a: 1\n---\n".repeat(MAX_DOCUMENTS + 1);
        assert!(parse_documents(&many).is_err());
    }
}
