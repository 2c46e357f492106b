//! Local mode's networking seam: the controller programs the in-process gateway, which hands
//! Proxy-mode revisions to the in-process activator.

use std::sync::Arc;

use rouse_activator::{Activator, RevisionParams};
use rouse_api::networking::SksMode;
use rouse_controller::Key;
use rouse_controller::networking::{
    ActivatorLoad, HostRoute, IngressState, Networking, RevisionTraffic, Targets,
};
use rouse_gateway::{Gateway, Mode, RouteTarget, RoutingTable};

/// Local mode: the in-process gateway hands Proxy-mode revisions to the in-process activator.
pub struct LocalNetworking {
    pub gateway: Arc<Gateway>,
    pub activator: Arc<Activator>,
}

fn route_targets(targets: Targets) -> Vec<RouteTarget> {
    targets
        .into_iter()
        .map(|(namespace, revision, percent)| RouteTarget {
            namespace,
            revision,
            percent,
        })
        .collect()
}

impl Networking for LocalNetworking {
    fn set_routes(&self, routes: Vec<HostRoute>) {
        let mut table = RoutingTable::new();
        for r in routes {
            if let Some(target) = r.rewrite_host {
                table.insert_alias(r.host, target);
                continue;
            }
            if r.targets.is_empty() {
                if let Some(why) = r.unavailable {
                    table.insert_unavailable(r.host, why);
                }
                continue;
            }
            for (tag, targets) in r.tags {
                table.insert_tag(r.host.clone(), tag, route_targets(targets));
            }
            table.insert(r.host, route_targets(r.targets));
        }
        self.gateway.set_routes(table);
    }

    /// The in-process gateway serves a table from the moment it is set.
    fn ingress_state(&self, _owner: &Key) -> IngressState {
        IngressState::Ready
    }

    fn subscribe_ingresses(&self) -> Option<tokio::sync::broadcast::Receiver<Key>> {
        None
    }

    fn set_revision(&self, namespace: &str, revision: &str, t: RevisionTraffic) {
        // The activator learns the instances before the gateway may send it anything.
        self.activator.set_revision(
            namespace,
            revision,
            RevisionParams {
                container_concurrency: t.container_concurrency,
                timeout: t.timeout,
                response_start_timeout: t.response_start_timeout,
                h2c: t.h2c,
                request_body_buffer: t.request_body_buffer,
            },
        );
        self.activator.set_backends(namespace, revision, t.backends);
        let mode = match t.mode {
            SksMode::Serve => Mode::Serve,
            SksMode::Proxy => Mode::Proxy,
        };
        self.gateway
            .set_revision(namespace, revision, mode, t.ready, t.h2c);
    }

    fn remove_revision(&self, namespace: &str, revision: &str) {
        // Routes may still name it: its requests are answered 503 at once from now on.
        self.gateway.mark_removed(namespace, revision);
        self.activator.remove_revision(namespace, revision);
    }

    fn serving_through_activator(&self, namespace: &str, revision: &str) -> bool {
        self.gateway.mode(namespace, revision) == Some(Mode::Proxy)
    }

    fn set_scale_refusal(&self, namespace: &str, revision: &str, why: Option<String>) {
        self.activator.set_refusal(namespace, revision, why);
    }

    fn take_activator_stats(&self) -> Vec<ActivatorLoad> {
        self.activator
            .take_stats()
            .into_iter()
            .map(|s| ActivatorLoad {
                namespace: s.namespace,
                revision: s.revision,
                average_concurrency: s.average_concurrency,
                request_count: s.request_count,
            })
            .collect()
    }
}
