//! Strict decoding of manifests: multi-document YAML or JSON into typed objects. Unknown fields
//! are refused with their path (catching typos Knative's pruning would silently drop), and
//! `apiVersion`/`kind` must name a kind Rouse serves.

use serde::Deserialize;
use serde_json::Value;

use crate::autoscaling::PodAutoscaler;
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
        }
    }
}

/// Splits YAML (or JSON, which is YAML) into JSON values, one per non-empty document.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, DecodeError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| DecodeError::Malformed {
            doc: i + 1,
            reason: e.to_string(),
        })?;
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
            "no kind {kind_name:?} is served in {api_version:?} (served: Service, Configuration, Revision, Route in serving.knative.dev/v1)"
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
        let yaml = serde_yaml::to_string(s).unwrap();
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
}
