//! DomainMapping → the domain's claim, the resolved target and the domain's entry in the
//! gateway's routing table: requests for the domain take the target route's traffic, with the
//! Host rewritten to the route's own host (Knative's `rewriteHost`).
//!
//! Claims are implicit (Knative's ClusterDomainClaim with `autocreate-cluster-domain-claims`):
//! of all mappings of one domain, the oldest (then the first namespace by name) owns it; the
//! others report `DomainClaimed=False DomainAlreadyClaimed` and serve nothing. Deleting the
//! owner hands the domain to the next one. A route's own host is never a mapping's: the
//! gateway serves the route first, and the mapping says so.

use rouse_api::Kind;
use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::domainmapping::{
    CONDITION_CERTIFICATE_PROVISIONED, CONDITION_DOMAIN_CLAIMED, CONDITION_INGRESS_READY,
    CONDITION_REFERENCE_RESOLVED, DomainMapping, DomainMappingStatus, READY_DEPENDENTS,
    claim_holder,
};
use rouse_api::serving::{Addressable, Route, Service};

use super::Requeue;
use super::route::program;
use crate::networking::{HostRoute, IngressState};
use crate::{Context, Key, ReconcileError};

/// The `apiVersion` of the kinds a mapping may point at.
const SERVING_V1: &str = "serving.knative.dev/v1";

pub(super) async fn reconcile(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Requeue, ReconcileError> {
    let Some(dm) = ctx.client.get::<DomainMapping>(ns, name)? else {
        program(ctx, Kind::DomainMapping, ns, name, Vec::new()).await;
        return Ok(None);
    };
    let mut status = dm.status.clone();
    status.observed_generation = dm.metadata.generation;
    let scheme = if dm.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    status.url = format!("{scheme}://{name}");
    status.address = Some(Addressable {
        url: status.url.clone(),
    });
    certificate(&dm, &mut status);

    let target = claim_and_resolve(ctx, &dm, &mut status)?;

    let entries: Vec<HostRoute> = target
        .iter()
        .map(|host| HostRoute {
            host: name.to_ascii_lowercase(),
            targets: Vec::new(),
            unavailable: None,
            tags: Vec::new(),
            rewrite_host: Some(host.clone()),
        })
        .collect();
    let serving = !entries.is_empty();
    // Programmed before the status is written, and IngressReady says whether the data plane
    // serves it yet (the networking seam wakes the mapping when that changes), so a client
    // that waits for Ready finds the domain served.
    program(ctx, Kind::DomainMapping, ns, name, entries).await;
    if serving {
        match ctx
            .networking
            .ingress_state(&Key::new(Kind::DomainMapping, ns, name))
        {
            IngressState::Ready => status.mark_true(CONDITION_INGRESS_READY),
            IngressState::NotReady {
                status: s,
                reason,
                message,
            } => status.set_condition(CONDITION_INGRESS_READY, s, &reason, &message),
        }
    } else {
        status.mark_unknown(
            CONDITION_INGRESS_READY,
            "IngressNotConfigured",
            "Ingress has not yet been reconciled.",
        );
    }
    status.derive_ready(&READY_DEPENDENTS);
    if status != dm.status {
        let mut updated = dm;
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

/// Sets `DomainClaimed` and `ReferenceResolved`; the host to serve the domain as when both
/// hold.
fn claim_and_resolve(
    ctx: &Context,
    dm: &DomainMapping,
    status: &mut DomainMappingStatus,
) -> Result<Option<String>, ReconcileError> {
    if let Some(route) = route_with_host(ctx, &dm.metadata.name)? {
        // The gateway serves a route's own host first: the mapping would serve nothing.
        let message = format!("The domain name is the host of Route {route}");
        status.mark_false(CONDITION_DOMAIN_CLAIMED, "DomainAlreadyClaimed", &message);
        return Ok(None);
    }
    if !claimed(ctx, dm)? {
        status.mark_false(
            CONDITION_DOMAIN_CLAIMED,
            "DomainAlreadyClaimed",
            "The domain name is already in use by another DomainMapping",
        );
        return Ok(None);
    }
    status.mark_true(CONDITION_DOMAIN_CLAIMED);
    Ok(match resolve(ctx, dm)? {
        Ok(host) => {
            status.mark_true(CONDITION_REFERENCE_RESOLVED);
            Some(host)
        }
        Err(why) => {
            status.mark_false(CONDITION_REFERENCE_RESOLVED, "ResolveFailed", &why);
            None
        }
    })
}

/// `CertificateProvisioned`: a given secret is the ingress's to use; without one, no TLS.
fn certificate(dm: &DomainMapping, status: &mut DomainMappingStatus) {
    let (reason, message) = match dm.spec.tls {
        Some(_) => (
            "CertificateExternallyProvided",
            "TLS certificate was provided externally",
        ),
        None => ("TLSNotEnabled", "autoTLS is not enabled"),
    };
    status.set_condition(
        CONDITION_CERTIFICATE_PROVISIONED,
        ConditionStatus::True,
        reason,
        message,
    );
}

/// True when the mapping's namespace holds its domain's claim ([`claim_holder`]).
fn claimed(ctx: &Context, dm: &DomainMapping) -> Result<bool, ReconcileError> {
    let all = ctx.client.list::<DomainMapping>(None)?;
    Ok(claim_holder(&all, &dm.metadata.name)
        .is_some_and(|holder| holder.metadata.namespace == dm.metadata.namespace))
}

/// The Route (`namespace/name`) whose own host, or one of its tags' hosts, is `domain`.
fn route_with_host(ctx: &Context, domain: &str) -> Result<Option<String>, ReconcileError> {
    let config = ctx.config.get();
    let network = &config.network;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    for r in ctx.client.list::<Route>(None)? {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let tags = r.status.traffic.iter().filter(|t| !t.tag.is_empty());
        let route_domain = config.route_domain(&r.metadata.labels, &ctx.domain);
        let taken = network.route_host(name, ns, &route_domain) == domain
            || tags
                .into_iter()
                .any(|t| network.tag_host(&t.tag, name, ns, &route_domain) == domain);
        if taken {
            return Ok(Some(format!("{ns}/{name}")));
        }
    }
    Ok(None)
}

/// The host the mapping's target is served at, or why it cannot be resolved (Knative's
/// `ResolveFailed` message). A Knative Service is reached through its Route of the same name.
fn resolve(ctx: &Context, dm: &DomainMapping) -> Result<Result<String, String>, ReconcileError> {
    let ns = &dm.metadata.namespace;
    let r = &dm.spec.ref_;
    if !r.namespace.is_empty() && r.namespace != *ns {
        return Ok(Err(format!(
            "the reference {}/{} must be in same namespace as DomainMapping",
            r.namespace, r.name
        )));
    }
    // The target's labels choose its domain (config-domain): a Service's Route carries them
    // once created; until then the Service's own.
    let route = ctx.client.get::<Route>(ns, &r.name)?;
    let labels = match (r.api_version.as_str(), r.kind.as_str()) {
        (SERVING_V1, "Service") => match ctx.client.get::<Service>(ns, &r.name)? {
            Some(svc) => Some(route.map_or(svc.metadata.labels, |r| r.metadata.labels)),
            None => None,
        },
        (SERVING_V1, "Route") => route.map(|r| r.metadata.labels),
        (api_version, kind) => {
            return Ok(Err(format!(
                "a DomainMapping can point at a Knative Service or Route ({SERVING_V1}), not {kind} in {api_version}"
            )));
        }
    };
    let Some(labels) = labels else {
        let plural = match r.kind.as_str() {
            "Service" => Kind::Service.plural(),
            _ => Kind::Route.plural(),
        };
        return Ok(Err(format!(
            "{plural}.serving.knative.dev {:?} not found",
            r.name
        )));
    };
    Ok(Ok(ctx.config.get().network.route_host(
        &r.name,
        ns,
        &ctx.route_domain(&labels),
    )))
}
