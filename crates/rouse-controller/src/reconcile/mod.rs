//! The reconcilers, one module per kind, and the dispatch from a [`Key`].

mod autoscaler;
mod configuration;
mod domainmapping;
mod gc;
mod revision;
mod route;
mod route_hosts;
mod route_rollout;
mod routing_state;
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
        Kind::DomainMapping => domainmapping::reconcile(ctx, ns, name).await,
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

/// A generated child: ours, or a same-named object someone else owns.
pub(crate) enum Child<T> {
    Owned(T),
    NotOwned,
}

/// The parts of a child its parent decides: compared and copied on reconcile.
pub(crate) trait SpecMeta {
    /// True when `self` already carries everything `want` asks for.
    fn matches(&self, want: &Self) -> bool;
    /// Copies the parent-decided parts of `want` (status and identity stay).
    fn copy_from(&mut self, want: &Self);
}

macro_rules! spec_meta_whole {
    ($($t:ty),*) => {$(
        impl SpecMeta for $t {
            fn matches(&self, want: &Self) -> bool {
                self.spec == want.spec
                    && self.metadata.labels == want.metadata.labels
                    && self.metadata.annotations == want.metadata.annotations
            }
            fn copy_from(&mut self, want: &Self) {
                self.spec = want.spec.clone();
                self.metadata.labels = want.metadata.labels.clone();
                self.metadata.annotations = want.metadata.annotations.clone();
            }
        }
    )*};
}
spec_meta_whole!(
    rouse_api::serving::Configuration,
    rouse_api::serving::Route,
    rouse_api::autoscaling::PodAutoscaler
);

impl SpecMeta for rouse_api::networking::ServerlessService {
    fn matches(&self, want: &Self) -> bool {
        self.spec.object_ref == want.spec.object_ref
            && self.spec.protocol_type == want.spec.protocol_type
            && self.metadata.labels == want.metadata.labels
    }
    fn copy_from(&mut self, want: &Self) {
        // The mode belongs to the autoscaler; only the target's identity is copied.
        self.spec.object_ref = want.spec.object_ref.clone();
        self.spec.protocol_type = want.spec.protocol_type.clone();
        self.metadata.labels = want.metadata.labels.clone();
    }
}

/// Creates `want`, or brings the stored child in line with it; a same-named object not owned
/// by `owner_uid` is left alone and reported.
pub(crate) fn ensure_child<T: rouse_api::meta::Resource + SpecMeta>(
    ctx: &Context,
    owner_uid: &str,
    want: T,
) -> Result<Child<T>, ReconcileError> {
    let meta = want.meta();
    match ctx.client.get::<T>(&meta.namespace, &meta.name)? {
        None => Ok(Child::Owned(ctx.client.create(&want)?)),
        Some(have) if !have.meta().is_owned_by(owner_uid) => Ok(Child::NotOwned),
        Some(have) if have.matches(&want) => Ok(Child::Owned(have)),
        Some(have) => {
            let mut next = have;
            next.copy_from(&want);
            Ok(Child::Owned(ctx.client.update(&next)?))
        }
    }
}
