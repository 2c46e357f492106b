//! The Knative `Ingress` a Route asks for (reference §7): per traffic name (the default and
//! each tag) a cluster-local rule and, unless the route or that name is cluster-local, an
//! external rule;
//! each path splits over the revisions' public Services with Knative's appended headers.

use std::collections::{BTreeMap, BTreeSet};

use rouse_api::config::domain::DomainConfig;
use rouse_api::config::network::NetworkConfig;
use rouse_api::ingress::{
    ANNOTATION_CLASS, HeaderMatch, HttpIngressPath, HttpIngressRuleValue, Ingress,
    IngressBackendSplit, IngressRule, IngressSpec,
};
use rouse_api::meta::Resource;
use rouse_api::serving::{IntOrString, LABEL_SERVICE, Route};

/// Header naming the revision a request was routed to.
pub const HEADER_REVISION: &str = "Knative-Serving-Revision";
/// Header naming the revision's namespace.
pub const HEADER_NAMESPACE: &str = "Knative-Serving-Namespace";
/// Header selecting a tag's targets (tag-header-based routing).
pub const HEADER_TAG: &str = "Knative-Serving-Tag";
/// Header marking the default route (tag-header-based routing).
pub const HEADER_DEFAULT_ROUTE: &str = "Knative-Serving-Default-Route";
/// Label on the Ingress naming its Route.
pub const LABEL_ROUTE: &str = "serving.knative.dev/route";
/// Label on the Ingress naming its Route's namespace.
pub const LABEL_ROUTE_NAMESPACE: &str = "serving.knative.dev/routeNamespace";
/// The domain of cluster-local hosts (Knative's default when no domain is configured).
pub const CLUSTER_LOCAL_DOMAIN: &str = "svc.cluster.local";

/// A traffic target resolved to a revision (the Route reconciler's output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// "" for the default route's targets, else the tag.
    pub tag: String,
    pub revision: String,
    pub percent: i64,
    /// The revision serves h2c (the split goes to the public Service's port 81, not 80).
    pub h2c: bool,
}

/// What the cluster's config contributes to an Ingress.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// `config-network`.
    pub network: NetworkConfig,
    /// The external domain of the Routes `config-domain` names none for (`--domain`);
    /// `svc.cluster.local` makes them cluster-local only.
    pub domain: String,
    /// `config-domain`: the domains Routes are served under, chosen by their labels.
    pub domains: DomainConfig,
    /// `config-features` `tag-header-based-routing`.
    pub tag_header_routing: bool,
}

impl IngressConfig {
    /// The domain `route` is served under, as the Route reconciler computes it for its URL.
    pub fn route_domain(&self, route: &Route) -> String {
        self.domains.route_domain(
            &route.metadata.labels,
            &self.domain,
            &self.network.cluster_domain,
        )
    }
}

/// The Ingress for a Route, named after it and owned by it. The traffic names in
/// `local_only` (`""` the default, else tags: those whose cluster-local Service the user
/// labelled cluster-local) get their cluster-local rule only.
pub fn ingress(
    route: &Route,
    targets: &[ResolvedTarget],
    local_only: &BTreeSet<String>,
    cfg: &IngressConfig,
) -> Ingress {
    let name = &route.metadata.name;
    let ns = &route.metadata.namespace;
    let domain = cfg.route_domain(route);
    // A cluster-local Route (by its label, or with no external domain) gets no external rule.
    let cluster_local =
        domain == CLUSTER_LOCAL_DOMAIN || domain == format!("svc.{}", cfg.network.cluster_domain);

    // Traffic names in order: the default first, then tags as they first appear.
    let mut names: Vec<&str> = vec![""];
    for t in targets {
        if !names.contains(&t.tag.as_str()) {
            names.push(&t.tag);
        }
    }
    let splits_of = |tag: &str| -> Vec<IngressBackendSplit> {
        targets
            .iter()
            .filter(|t| t.tag == tag && t.percent > 0)
            .map(|t| IngressBackendSplit {
                service_namespace: ns.clone(),
                service_name: t.revision.clone(),
                service_port: IntOrString::Int(if t.h2c { 81 } else { 80 }),
                percent: t.percent,
                append_headers: BTreeMap::from([
                    (HEADER_REVISION.to_string(), t.revision.clone()),
                    (HEADER_NAMESPACE.to_string(), ns.clone()),
                ]),
            })
            .collect()
    };

    let mut rules = Vec::new();
    for tag in names {
        let splits = splits_of(tag);
        if splits.is_empty() {
            continue;
        }
        let paths = if tag.is_empty() && cfg.tag_header_routing {
            // Requests carrying a known tag's header go to that tag's targets; the rest take
            // the default route, marked as such.
            let mut paths: Vec<HttpIngressPath> = targets
                .iter()
                .map(|t| t.tag.as_str())
                .filter(|t| !t.is_empty())
                .fold(Vec::<&str>::new(), |mut acc, t| {
                    if !acc.contains(&t) {
                        acc.push(t);
                    }
                    acc
                })
                .into_iter()
                .filter_map(|t| {
                    let splits = splits_of(t);
                    (!splits.is_empty()).then(|| HttpIngressPath {
                        headers: BTreeMap::from([(
                            HEADER_TAG.to_string(),
                            HeaderMatch {
                                exact: t.to_string(),
                            },
                        )]),
                        splits,
                        append_headers: BTreeMap::from([(HEADER_TAG.to_string(), t.to_string())]),
                        ..Default::default()
                    })
                })
                .collect();
            paths.push(HttpIngressPath {
                splits,
                append_headers: BTreeMap::from([(
                    HEADER_DEFAULT_ROUTE.to_string(),
                    "true".to_string(),
                )]),
                ..Default::default()
            });
            paths
        } else {
            let mut append = BTreeMap::new();
            if !tag.is_empty() && cfg.tag_header_routing {
                append.insert(HEADER_TAG.to_string(), tag.to_string());
            }
            vec![HttpIngressPath {
                splits,
                append_headers: append,
                ..Default::default()
            }]
        };
        let host = |domain: &str| {
            if tag.is_empty() {
                cfg.network.route_host(name, ns, domain)
            } else {
                cfg.network.tag_host(tag, name, ns, domain)
            }
        };
        // Cluster-local hosts always use the default template: {name}.{ns}.svc.cluster.local
        // and its shorter forms.
        let local_name = cfg.network.traffic_name(tag, name);
        let local_hosts = vec![
            format!("{local_name}.{ns}"),
            format!("{local_name}.{ns}.svc"),
            format!("{local_name}.{ns}.{CLUSTER_LOCAL_DOMAIN}"),
        ];
        rules.push(IngressRule {
            hosts: local_hosts,
            visibility: "ClusterLocal".into(),
            http: Some(HttpIngressRuleValue {
                paths: paths.clone(),
            }),
        });
        if !cluster_local && !local_only.contains(tag) {
            rules.push(IngressRule {
                hosts: vec![host(&domain)],
                visibility: "ExternalIP".into(),
                http: Some(HttpIngressRuleValue { paths }),
            });
        }
    }

    let mut ing = Ingress {
        api_version: rouse_api::ingress::API_VERSION.into(),
        kind: rouse_api::ingress::KIND.into(),
        ..Default::default()
    };
    ing.metadata.name = name.clone();
    ing.metadata.namespace = ns.clone();
    ing.metadata.annotations = BTreeMap::from([(
        ANNOTATION_CLASS.to_string(),
        cfg.network.ingress_class.clone(),
    )]);
    let mut labels = BTreeMap::from([
        (LABEL_ROUTE.to_string(), name.clone()),
        (LABEL_ROUTE_NAMESPACE.to_string(), ns.clone()),
    ]);
    if let Some(svc) = route.metadata.labels.get(LABEL_SERVICE) {
        labels.insert(LABEL_SERVICE.to_string(), svc.clone());
    }
    ing.metadata.labels = labels;
    ing.metadata.owner_references = vec![route.owner_ref()];
    ing.spec = IngressSpec {
        tls: Vec::new(),
        rules,
        http_option: if cfg.network.http_protocol == "redirected" {
            "Redirected".into()
        } else {
            "Enabled".into()
        },
    };
    // As the defaulting webhook will store it, so the spec read back is the one written.
    rouse_api::defaults::default_ingress(&mut ing);
    ing
}
