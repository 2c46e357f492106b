//! Where a Route's traffic names (the default, `""`, and each tag) are served, as Knative
//! decides it: every name has its cluster-local host `{name}.{ns}.svc.{cluster-domain}`; a
//! name also has its external host unless it is cluster-local: the whole Route is (its domain
//! is the cluster-local one: the visibility label, or `config-domain`), or the user labelled
//! that name's cluster-local Service `networking.knative.dev/visibility: cluster-local` (the
//! lower visibility wins).

use std::collections::BTreeSet;

use rouse_api::config::network::NetworkConfig;
use rouse_api::serving::Route;

use crate::Context;

/// A Route's hosts under the config in force.
pub(super) struct RouteHosts {
    network: NetworkConfig,
    name: String,
    namespace: String,
    domain: String,
    /// The whole Route is cluster-local.
    route_local: bool,
    /// Its cluster-local Services labelled cluster-local, by name.
    labelled: BTreeSet<String>,
}

impl RouteHosts {
    pub(super) fn new(ctx: &Context, route: &Route) -> RouteHosts {
        let (name, namespace) = (&route.metadata.name, &route.metadata.namespace);
        let network = ctx.config.get().network.clone();
        let domain = ctx.route_domain(&route.metadata.labels);
        RouteHosts {
            route_local: domain == format!("svc.{}", network.cluster_domain),
            labelled: ctx.networking.cluster_local_services(namespace, name),
            network,
            name: name.clone(),
            namespace: namespace.clone(),
            domain,
        }
    }

    /// True when traffic name `tag` is served cluster-local only.
    pub(super) fn local_only(&self, tag: &str) -> bool {
        self.route_local
            || self
                .labelled
                .contains(&self.network.traffic_name(tag, &self.name))
    }

    /// The cluster-local host of traffic name `tag`.
    pub(super) fn cluster_local(&self, tag: &str) -> String {
        self.network
            .cluster_local_host(&self.network.traffic_name(tag, &self.name), &self.namespace)
    }

    /// The external host of traffic name `tag` (domain-template, tag-template and the Route's
    /// domain); `None` when it is cluster-local only.
    pub(super) fn external(&self, tag: &str) -> Option<String> {
        if self.local_only(tag) {
            return None;
        }
        Some(if tag.is_empty() {
            self.network
                .route_host(&self.name, &self.namespace, &self.domain)
        } else {
            self.network
                .tag_host(tag, &self.name, &self.namespace, &self.domain)
        })
    }

    /// Every host of traffic name `tag`: the external one (if any) first.
    pub(super) fn all(&self, tag: &str) -> Vec<String> {
        let local = self.cluster_local(tag);
        let mut out: Vec<String> = self.external(tag).into_iter().collect();
        if !out.contains(&local) {
            out.push(local);
        }
        out
    }

    /// The URL of traffic name `tag` (`status.url`, `status.traffic[].url`): its external
    /// host, else its cluster-local one.
    pub(super) fn url(&self, tag: &str) -> String {
        let host = self
            .external(tag)
            .unwrap_or_else(|| self.cluster_local(tag));
        format!("http://{host}")
    }
}
