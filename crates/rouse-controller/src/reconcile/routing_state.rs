//! Revisions' routing state, as Knative's labeler keeps it: label
//! `serving.knative.dev/routingState` is `pending` from creation until a route first sends the
//! revision traffic, `active` while some route's traffic names it, and `reserve` once none does;
//! annotation `serving.knative.dev/routingStateModified` says when it last changed (config-gc's
//! `retain-since-last-active-time` counts from there).

use std::collections::BTreeSet;

use rouse_api::serving::{LABEL_ROUTING_STATE, Revision};

use crate::{Context, ReconcileError, RouteRef};

/// When a revision's routing state last changed (RFC 3339).
pub(crate) const ANNOTATION_ROUTING_STATE_MODIFIED: &str =
    "serving.knative.dev/routingStateModified";

/// After route `route` (in `ns`) went from serving `before` to serving `after` (revision
/// names): those it serves are active; those it stopped serving, if no other route serves
/// them, are in reserve.
pub(super) fn relabel(
    ctx: &Context,
    ns: &str,
    route: &str,
    before: &BTreeSet<String>,
    after: &BTreeSet<String>,
) -> Result<(), ReconcileError> {
    for rev in after {
        set(ctx, ns, rev, "active")?;
    }
    for rev in before.difference(after) {
        // The index may still list this route's old traffic; other routes count.
        let others = ctx
            .route_refs
            .routes(ns, RouteRef::Serving(rev.clone()))
            .into_iter()
            .any(|r| r != route);
        if !others {
            set(ctx, ns, rev, "reserve")?;
        }
    }
    Ok(())
}

/// Sets a revision's routing state (a revision gone is left alone).
fn set(ctx: &Context, ns: &str, name: &str, state: &str) -> Result<(), ReconcileError> {
    let Some(rev) = ctx.client.get::<Revision>(ns, name)? else {
        return Ok(());
    };
    if rev
        .metadata
        .labels
        .get(LABEL_ROUTING_STATE)
        .map(String::as_str)
        == Some(state)
    {
        return Ok(());
    }
    let mut next = rev.clone();
    next.metadata
        .labels
        .insert(LABEL_ROUTING_STATE.to_string(), state.to_string());
    next.metadata.annotations.insert(
        ANNOTATION_ROUTING_STATE_MODIFIED.to_string(),
        rouse_api::clock::now_rfc3339(),
    );
    ctx.client.update(&next)?;
    tracing::debug!(namespace = ns, revision = name, state, "routing state");
    Ok(())
}
