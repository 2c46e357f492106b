//! The networking seam: what the controller programs into the data plane. Local mode programs
//! the in-process gateway; Kubernetes mode will program Services/EndpointSlices and HTTPRoutes.

use std::net::SocketAddr;

use rouse_gateway::{Gateway, RouteTarget, RoutingTable};

/// One host and where its traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRoute {
    /// Lowercase host without port.
    pub host: String,
    /// Revisions and their shares (summing to 100).
    pub targets: Vec<(String, String, u32)>,
}

/// Programs routing and endpoints.
pub trait Networking: Send + Sync + 'static {
    /// Replaces the whole routing table at once.
    fn set_routes(&self, routes: Vec<HostRoute>);
    /// Replaces a revision's public endpoints at once.
    fn set_endpoints(&self, namespace: &str, revision: &str, endpoints: Vec<SocketAddr>);
}

impl Networking for Gateway {
    fn set_routes(&self, routes: Vec<HostRoute>) {
        let mut table = RoutingTable::new();
        for r in routes {
            let targets = r
                .targets
                .into_iter()
                .map(|(namespace, revision, percent)| RouteTarget {
                    namespace,
                    revision,
                    percent,
                })
                .collect();
            table.insert(r.host, targets);
        }
        Gateway::set_routes(self, table);
    }

    fn set_endpoints(&self, namespace: &str, revision: &str, endpoints: Vec<SocketAddr>) {
        Gateway::set_endpoints(self, namespace, revision, endpoints);
    }
}
