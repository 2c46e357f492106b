//! `/openapi/v2` and `/openapi/v3[/apis/{group}/{version}]`: the kinds' schemas (the CRDs'
//! structural schemas, generated from the Rust types in `rouse-kube`), tagged with their
//! group/version/kind as kube-apiserver publishes them, so `kubectl explain` and kubectl's
//! client-side validation work.

use std::sync::OnceLock;

use rouse_api::Kind;
use serde_json::{Map, Value, json};

/// The definition name Kubernetes gives a kind: the reversed group, version and kind.
fn definition_name(kind: Kind) -> String {
    let group: Vec<&str> = kind.group().split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), kind.version(), kind.name())
}

fn tagged_schema(kind: Kind) -> Value {
    let mut schema = rouse_kube::crd::schema(kind).unwrap_or_else(|e| {
        tracing::error!(error = %e, %kind, "api: the kind's schema could not be generated");
        json!({"type": "object"})
    });
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": kind.group(), "version": kind.version(), "kind": kind.name()}]);
    schema
}

fn definitions(kinds: impl Iterator<Item = Kind>) -> Value {
    let mut defs = Map::new();
    for kind in kinds {
        defs.insert(definition_name(kind), tagged_schema(kind));
    }
    Value::Object(defs)
}

fn info() -> Value {
    json!({"title": "Rouse (Knative Serving)", "version": env!("CARGO_PKG_VERSION")})
}

/// What an OpenAPI path answers, or `None` when `path` is not one.
pub fn answer(path: &str) -> Option<Value> {
    static V2: OnceLock<Value> = OnceLock::new();
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/openapi/v2" => Some(
            V2.get_or_init(|| {
                json!({"swagger": "2.0", "info": info(), "paths": {},
                       "definitions": definitions(Kind::ALL.into_iter())})
            })
            .clone(),
        ),
        "/openapi/v3" => {
            let mut paths = Map::new();
            for kind in Kind::ALL {
                let key = format!("apis/{}", kind.api_version());
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}")}),
                );
            }
            paths.insert(
                "api/v1".into(),
                json!({"serverRelativeURL": "/openapi/v3/api/v1"}),
            );
            Some(json!({"paths": paths}))
        }
        "/openapi/v3/api/v1" => Some(core_v1()),
        _ => {
            let gv = path.strip_prefix("/openapi/v3/apis/")?;
            let kinds: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| k.api_version() == gv)
                .collect();
            if kinds.is_empty() {
                return None;
            }
            // kubectl explain finds a resource's kind through the operations on its paths.
            let mut paths = Map::new();
            for &kind in &kinds {
                let gvk =
                    json!({"group": kind.group(), "version": kind.version(), "kind": kind.name()});
                let op = |id: &str| {
                    json!({"operationId": format!("{id}{}", kind.name()),
                           "x-kubernetes-group-version-kind": gvk,
                           "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                               "$ref": format!("#/components/schemas/{}", definition_name(kind))}}}}}})
                };
                paths.insert(
                    format!(
                        "/apis/{}/namespaces/{{namespace}}/{}",
                        kind.api_version(),
                        kind.plural()
                    ),
                    json!({"get": op("list")}),
                );
                // kubectl reads the query parameters a PATCH takes to learn that the server
                // validates fields itself (and then skips its own validation).
                let params: Vec<Value> = ["fieldValidation", "dryRun", "fieldManager", "force"]
                    .iter()
                    .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}}))
                    .collect();
                let mut patch = op("patch");
                patch["parameters"] = Value::Array(params);
                let mut item = json!({"get": op("read")});
                if kind.is_user_facing() {
                    item["patch"] = patch;
                }
                paths.insert(
                    format!(
                        "/apis/{}/namespaces/{{namespace}}/{}/{{name}}",
                        kind.api_version(),
                        kind.plural()
                    ),
                    item,
                );
            }
            Some(json!({
                "openapi": "3.0.0",
                "info": info(),
                "paths": paths,
                "components": {"schemas": definitions(kinds.into_iter())},
            }))
        }
    }
}

/// The core group as far as Rouse serves it: Knative's ConfigMaps and Namespaces.
fn core_v1() -> Value {
    let params: Vec<Value> = ["fieldValidation", "dryRun", "fieldManager", "force"]
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}}))
        .collect();
    let op = |id: &str, kind: &str, scope: &str| {
        json!({"operationId": format!("{id}CoreV1{scope}{kind}"),
               "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
               "parameters": params,
               "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                   "$ref": format!("#/components/schemas/io.k8s.api.core.v1.{kind}")}}}}}})
    };
    let schema = |kind: &str, description: &str, body: Value| {
        let mut properties = json!({
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
        });
        if let (Some(props), Value::Object(extra)) = (properties.as_object_mut(), body) {
            props.extend(extra);
        }
        json!({
            "description": description,
            "type": "object",
            "properties": properties,
            "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": kind}],
        })
    };
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": {
            "/api/v1/namespaces/{namespace}/configmaps": {"get": op("list", "ConfigMap", "Namespaced")},
            "/api/v1/namespaces/{namespace}/configmaps/{name}": {
                "get": op("read", "ConfigMap", "Namespaced"),
                "put": op("replace", "ConfigMap", "Namespaced"),
                "patch": op("patch", "ConfigMap", "Namespaced"),
            },
            "/api/v1/namespaces": {"get": op("list", "Namespace", ""), "post": op("create", "Namespace", "")},
            "/api/v1/namespaces/{name}": {
                "get": op("read", "Namespace", ""),
                "put": op("replace", "Namespace", ""),
                "patch": op("patch", "Namespace", ""),
                "delete": op("delete", "Namespace", ""),
            },
        },
        "components": {"schemas": {
            "io.k8s.api.core.v1.ConfigMap": schema(
                "ConfigMap",
                "One of Knative's ConfigMaps in namespace knative-serving; `data` holds its keys.",
                json!({"data": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "The keys and values, as `--config` takes them."}}),
            ),
            "io.k8s.api.core.v1.Namespace": schema(
                "Namespace",
                "A namespace: created explicitly or by the first object in it; its labels and annotations are kept.",
                json!({"spec": {"type": "object", "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}}},
                       "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}),
            ),
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_by_group_version() {
        let index = answer("/openapi/v3").unwrap();
        assert!(index["paths"]["apis/serving.knative.dev/v1"].is_object());
        let doc = answer("/openapi/v3/apis/serving.knative.dev/v1").unwrap();
        let svc = &doc["components"]["schemas"]["dev.knative.serving.v1.Service"];
        assert_eq!(svc["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        assert!(svc["properties"]["spec"]["properties"]["template"].is_object());
        assert!(answer("/openapi/v3/apis/nope/v1").is_none());
        assert!(answer("/openapi/v2").unwrap()["definitions"].is_object());
    }
}
