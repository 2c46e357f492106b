//! Kubernetes API discovery (`/version`, `/api`, `/apis`, `/apis/{group}[/{version}]`) in the
//! legacy form, which every kubectl and client library falls back to when the aggregated form is
//! not offered. Names, short names and categories come from the CRD table in `rouse-kube`, so
//! discovery, the CRDs and the tables agree.

use rouse_api::Kind;
use serde_json::{Value, json};

/// The Kubernetes version Rouse's API answers as (the oldest it is built against).
const KUBE_MAJOR: &str = "1";
const KUBE_MINOR: &str = "33";

/// What a discovery path answers, or `None` when `path` is not a discovery path.
pub fn answer(path: &str) -> Option<Value> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["version"] => Some(version()),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        })),
        ["api", "v1"] => Some(core_resources()),
        ["apis"] => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups().iter().map(|g| group(g)).collect::<Vec<_>>(),
        })),
        ["apis", g] => groups().into_iter().find(|x| x == g).map(|g| {
            let mut v = group(&g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        }),
        ["apis", g, v] => {
            let kinds: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| k.group() == *g && k.version() == *v)
                .collect();
            (!kinds.is_empty()).then(|| resource_list(&format!("{g}/{v}"), &kinds))
        }
        _ => None,
    }
}

fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-rouse.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The API groups served, in the order of [`Kind::ALL`].
fn groups() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in Kind::ALL {
        if !out.iter().any(|g| g == k.group()) {
            out.push(k.group().to_string());
        }
    }
    out
}

/// A group with its versions (`serving.knative.dev`: v1, preferred, and v1beta1 for
/// DomainMapping), in the order of [`Kind::ALL`].
fn group(name: &str) -> Value {
    let mut versions: Vec<&str> = Vec::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == name) {
        if !versions.contains(&k.version()) {
            versions.push(k.version());
        }
    }
    let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    let preferred = gv(versions.first().copied().unwrap_or("v1"));
    json!({
        "name": name,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": preferred,
    })
}

/// The verbs `kind` is served with: users write the serving kinds; the controller alone writes
/// the internal ones.
pub fn verbs(kind: Kind) -> &'static [&'static str] {
    if kind.is_user_facing() {
        &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    } else {
        &["get", "list", "watch"]
    }
}

fn resource_list(group_version: &str, kinds: &[Kind]) -> Value {
    let resources: Vec<Value> = kinds
        .iter()
        .map(|&k| {
            let info = rouse_kube::crd::info(k);
            json!({
                "name": info.plural,
                "singularName": info.singular,
                "namespaced": true,
                "kind": info.kind,
                "verbs": verbs(k),
                "shortNames": info.short_names,
                "categories": info.categories,
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// The core group: Namespaces (listed from the objects stored) and Knative's ConfigMaps.
fn core_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": false,
            "kind": "Namespace",
            "verbs": ["get", "list"],
            "shortNames": ["ns"],
        }, {
            "name": "configmaps",
            "singularName": "configmap",
            "namespaced": true,
            "kind": "ConfigMap",
            "verbs": ["get", "list", "patch", "update"],
            "shortNames": ["cm"],
        }],
    })
}

/// A Namespace object as Kubernetes shows one.
pub fn namespace_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_kind_with_its_names() {
        let groups = answer("/apis").unwrap();
        assert_eq!(groups["groups"].as_array().unwrap().len(), 3);
        let serving = answer("/apis/serving.knative.dev/v1").unwrap();
        let ksvc = &serving["resources"][0];
        assert_eq!(ksvc["name"], "services");
        assert_eq!(ksvc["shortNames"], json!(["kservice", "ksvc"]));
        assert!(ksvc["verbs"].as_array().unwrap().contains(&json!("patch")));
        let pa = answer("/apis/autoscaling.internal.knative.dev/v1alpha1").unwrap();
        assert_eq!(pa["resources"][0]["verbs"], json!(["get", "list", "watch"]));
        assert_eq!(answer("/apis/serving.knative.dev/v2"), None);
        let versions = &answer("/apis/serving.knative.dev").unwrap()["versions"];
        assert_eq!(versions[0]["groupVersion"], "serving.knative.dev/v1");
        assert_eq!(versions[1]["groupVersion"], "serving.knative.dev/v1beta1");
        let dm = answer("/apis/serving.knative.dev/v1beta1").unwrap();
        assert_eq!(dm["resources"][0]["name"], "domainmappings");
        assert_eq!(dm["resources"][0]["shortNames"], json!(["dm"]));
        assert_eq!(answer("/apis/nope"), None);
        assert_eq!(answer("/version").unwrap()["major"], "1");
    }
}
