//! The API's Kubernetes-style paths: parsing on the server, building on the client.

use rouse_api::Kind;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath {
    /// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}`: every object of a kind, in one
    /// namespace or (when `namespace` is `None`) in all of them.
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    /// `/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}`: one object.
    Item {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `.../{plural}/{name}/status`: one object's status subresource. Knative's CRDs declare
    /// `status` (and no `scale`) for every kind, so every kind has it.
    Status {
        kind: Kind,
        namespace: String,
        name: String,
    },
}

/// Parses a request path; `None` when it names nothing the API serves (404).
pub fn parse(path: &str) -> Option<ApiPath> {
    let path = path.strip_prefix('/')?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) || segs.first() != Some(&"apis") {
        return None;
    }
    let kind_at = |group: &str, version: &str, plural: &str| {
        Kind::from_plural(plural).filter(|k| k.group() == group && k.version() == version)
    };
    match segs.as_slice() {
        ["apis", group, version, plural] => Some(ApiPath::Collection {
            kind: kind_at(group, version, plural)?,
            namespace: None,
        }),
        ["apis", group, version, "namespaces", ns, plural] => Some(ApiPath::Collection {
            kind: kind_at(group, version, plural)?,
            namespace: Some(ns.to_string()),
        }),
        ["apis", group, version, "namespaces", ns, plural, name] => Some(ApiPath::Item {
            kind: kind_at(group, version, plural)?,
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        [
            "apis",
            group,
            version,
            "namespaces",
            ns,
            plural,
            name,
            "status",
        ] => Some(ApiPath::Status {
            kind: kind_at(group, version, plural)?,
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        _ => None,
    }
}

/// The collection path of `kind` in `namespace`, or across all namespaces when `None`.
pub fn collection(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!(
            "/apis/{}/{}/namespaces/{ns}/{}",
            kind.group(),
            kind.version(),
            kind.plural()
        ),
        None => format!(
            "/apis/{}/{}/{}",
            kind.group(),
            kind.version(),
            kind.plural()
        ),
    }
}

/// The path of one object.
pub fn item(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection(kind, Some(namespace)))
}

/// `services.serving.knative.dev`: how Kubernetes names a resource type in messages.
pub fn resource_name(kind: Kind) -> String {
    format!("{}.{}", kind.plural(), kind.group())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_builds_every_kind() {
        for kind in Kind::ALL {
            let c = collection(kind, Some("ns1"));
            assert_eq!(
                parse(&c),
                Some(ApiPath::Collection {
                    kind,
                    namespace: Some("ns1".into())
                })
            );
            assert_eq!(
                parse(&collection(kind, None)),
                Some(ApiPath::Collection {
                    kind,
                    namespace: None
                })
            );
            let i = item(kind, "ns1", "hello");
            assert_eq!(
                parse(&i),
                Some(ApiPath::Item {
                    kind,
                    namespace: "ns1".into(),
                    name: "hello".into()
                })
            );
            assert_eq!(parse(&format!("{i}/")), parse(&i));
            assert_eq!(
                parse(&format!("{i}/status")),
                Some(ApiPath::Status {
                    kind,
                    namespace: "ns1".into(),
                    name: "hello".into()
                })
            );
        }
        assert_eq!(
            item(Kind::Service, "default", "hello"),
            "/apis/serving.knative.dev/v1/namespaces/default/services/hello"
        );
    }

    #[test]
    fn refuses_unknown_paths() {
        for p in [
            "/",
            "/api/v1/pods",
            "/apis/serving.knative.dev/v1/pods",
            // Right plural, wrong group or version.
            "/apis/serving.knative.dev/v1alpha1/services",
            "/apis/serving.knative.dev/v1/podautoscalers",
            "/apis/serving.knative.dev/v1/namespaces/default/services/hello/scale",
            "/apis/serving.knative.dev/v1/namespaces/default/services/hello/status/x",
            "/apis/serving.knative.dev/v1/namespaces//services",
            "/apis/serving.knative.dev/v1/namespaces/default",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }
}
