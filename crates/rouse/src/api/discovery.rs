//! Kubernetes API discovery (`/version`, `/api`, `/apis`, `/apis/{group}[/{version}]`) in the
//! legacy form, and on `/api` and `/apis` in the aggregated form (`apidiscovery.k8s.io` `v2`,
//! and `v2beta1` for older clients) when the `Accept` header asks for it, as kubectl 1.30+
//! does: one request then describes every group. Names, short names and categories come from
//! the CRD table in `rouse-kube`, so discovery, the CRDs and the tables agree.

use http::HeaderMap;
use http::header::ACCEPT;
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
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    } else {
        &["get", "list", "watch"]
    }
}

/// The verbs of `kind`'s `status` subresource.
pub fn status_verbs(kind: Kind) -> &'static [&'static str] {
    if kind.is_user_facing() {
        &["get", "patch", "update"]
    } else {
        &["get"]
    }
}

fn resource_list(group_version: &str, kinds: &[Kind]) -> Value {
    let resources: Vec<Value> = kinds
        .iter()
        .flat_map(|&k| {
            let info = rouse_kube::crd::info(k);
            [
                json!({
                    "name": info.plural,
                    "singularName": info.singular,
                    "namespaced": true,
                    "kind": info.kind,
                    "verbs": verbs(k),
                    "shortNames": info.short_names,
                    "categories": info.categories,
                }),
                json!({
                    "name": format!("{}/status", info.plural),
                    "singularName": "",
                    "namespaced": true,
                    "kind": info.kind,
                    "verbs": status_verbs(k),
                }),
            ]
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
            "verbs": ["create", "delete", "get", "list", "patch", "update"],
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

/// The aggregated discovery versions served, newest first, with the `apiVersion` each answers in.
const AGGREGATED: [(&str, &str); 2] = [
    ("v2", "apidiscovery.k8s.io/v2"),
    ("v2beta1", "apidiscovery.k8s.io/v2beta1"),
];

/// The aggregated discovery version the `Accept` header asks for, if any (the first media
/// range naming `as=APIGroupDiscoveryList` in a version served).
pub fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|range| {
            let params: Vec<&str> = range.split(';').map(str::trim).collect();
            let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
            if !has("as=APIGroupDiscoveryList") || !has("g=apidiscovery.k8s.io") {
                return None;
            }
            AGGREGATED
                .iter()
                .find(|(v, _)| has(&format!("v={v}")))
                .map(|(v, _)| *v)
        })
}

/// The media type of an aggregated discovery answer in `version`: clients check it to tell
/// the aggregated answer from the legacy one.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// The aggregated discovery document for `/api` (the core group) or `/apis` (every other
/// group), in `version`; `None` for any other path.
pub fn aggregated(path: &str, version: &str) -> Option<Value> {
    let api_version = AGGREGATED.iter().find(|(v, _)| *v == version)?.1;
    let items: Vec<Value> = match path.strip_suffix('/').unwrap_or(path) {
        "/api" => vec![json!({
            "metadata": {"creationTimestamp": null},
            "versions": [{"version": "v1", "resources": core_aggregated(), "freshness": "Current"}],
        })],
        "/apis" => groups()
            .iter()
            .map(|g| {
                let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.group() == g).collect();
                let version = kinds.first().map_or("v1", |k| k.version());
                json!({
                    "metadata": {"name": g, "creationTimestamp": null},
                    "versions": [{
                        "version": version,
                        "resources": kinds.iter().map(|&k| aggregated_resource(k)).collect::<Vec<_>>(),
                        "freshness": "Current",
                    }],
                })
            })
            .collect(),
        _ => return None,
    };
    Some(json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    }))
}

fn aggregated_resource(kind: Kind) -> Value {
    let info = rouse_kube::crd::info(kind);
    let response_kind =
        json!({"group": kind.group(), "version": kind.version(), "kind": info.kind});
    json!({
        "resource": info.plural,
        "responseKind": response_kind,
        "scope": "Namespaced",
        "singularResource": info.singular,
        "verbs": verbs(kind),
        "shortNames": info.short_names,
        "categories": info.categories,
        "subresources": [{
            "subresource": "status",
            "responseKind": response_kind,
            "verbs": status_verbs(kind),
        }],
    })
}

/// The core group's resources in the aggregated form, from the legacy list.
fn core_aggregated() -> Vec<Value> {
    let legacy = core_resources();
    legacy["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            json!({
                "resource": r["name"],
                "responseKind": {"group": "", "version": "v1", "kind": r["kind"]},
                "scope": if r["namespaced"] == true { "Namespaced" } else { "Cluster" },
                "singularResource": r["singularName"],
                "verbs": r["verbs"],
                "shortNames": r["shortNames"],
            })
        })
        .collect()
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

    #[test]
    fn aggregated_discovery_is_chosen_by_accept_and_agrees_with_legacy() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, "application/json".parse().unwrap());
        assert_eq!(wants_aggregated(&h), None);
        // kubectl 1.30+'s header: v2 first, then v2beta1, then the legacy form.
        h.insert(ACCEPT, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json".parse().unwrap());
        assert_eq!(wants_aggregated(&h), Some("v2"));
        h.insert(
            ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
                .parse()
                .unwrap(),
        );
        assert_eq!(wants_aggregated(&h), Some("v2beta1"));
        h.insert(
            ACCEPT,
            "application/json;g=apidiscovery.k8s.io;v=v9;as=APIGroupDiscoveryList"
                .parse()
                .unwrap(),
        );
        assert_eq!(wants_aggregated(&h), None);

        let apis = aggregated("/apis", "v2").unwrap();
        assert_eq!(apis["apiVersion"], "apidiscovery.k8s.io/v2");
        let serving = &apis["items"][0];
        assert_eq!(serving["metadata"]["name"], "serving.knative.dev");
        let ksvc = &serving["versions"][0]["resources"][0];
        assert_eq!(ksvc["resource"], "services");
        assert_eq!(ksvc["responseKind"]["kind"], "Service");
        assert_eq!(ksvc["subresources"][0]["subresource"], "status");
        let legacy = answer("/apis/serving.knative.dev/v1").unwrap();
        assert_eq!(ksvc["verbs"], legacy["resources"][0]["verbs"]);
        assert_eq!(ksvc["shortNames"], legacy["resources"][0]["shortNames"]);
        let core = aggregated("/api", "v2beta1").unwrap();
        assert_eq!(
            core["items"][0]["versions"][0]["resources"][0]["resource"],
            "namespaces"
        );
        assert_eq!(
            core["items"][0]["versions"][0]["resources"][0]["scope"],
            "Cluster"
        );
        assert_eq!(aggregated("/apis/serving.knative.dev", "v2"), None);
    }
}
