//! The reconcilers, one module per kind, and the dispatch from a [`Key`].

mod autoscaler;
mod configuration;
mod revision;
mod route;
mod service;
mod sks;

use std::time::Duration;

use rouse_api::Kind;

use crate::{Context, Key, ReconcileError};

/// What a reconcile asks for next: nothing, or another look after a delay.
pub type Requeue = Option<Duration>;

/// Reconciles one key.
pub async fn reconcile(ctx: &Context, key: &Key) -> Result<Requeue, ReconcileError> {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    match key.kind {
        Kind::Service => service::reconcile(ctx, ns, name),
        Kind::Configuration => configuration::reconcile(ctx, ns, name),
        Kind::Revision => revision::reconcile(ctx, ns, name),
        Kind::Route => route::reconcile(ctx, ns, name).await,
        Kind::PodAutoscaler => autoscaler::reconcile(ctx, ns, name),
        Kind::ServerlessService => sks::reconcile(ctx, ns, name),
    }
}

/// Copies labels and annotations Knative propagates from a parent to a generated child.
pub(crate) fn propagated(
    map: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    map.iter()
        .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
