//! Configuration → its latest Revision (`{config}-{generation:05}` or the BYO name), and
//! `latestCreatedRevisionName` / `latestReadyRevisionName` from the revisions' readiness.

use rouse_api::condition::{ConditionStatus, Conditions};
use rouse_api::meta::Resource;
use rouse_api::serving::{
    Configuration, LABEL_CONFIGURATION, LABEL_CONFIGURATION_GENERATION, LABEL_CONFIGURATION_UID,
    LABEL_ROUTING_STATE, LABEL_SERVICE, LABEL_SERVICE_UID, Revision,
};

use super::{Requeue, propagated};
use crate::names::revision_name;
use crate::{Context, ReconcileError};

pub(super) fn reconcile(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    let Some(config) = ctx.client.get::<Configuration>(ns, name)? else {
        return Ok(None);
    };
    let mut status = config.status.clone();
    status.observed_generation = config.metadata.generation;
    let rev_name = if config.spec.template.metadata.name.is_empty() {
        revision_name(name, config.metadata.generation)
    } else {
        config.spec.template.metadata.name.clone()
    };

    let latest = match ctx.client.get::<Revision>(ns, &rev_name)? {
        Some(rev) if !rev.metadata.is_owned_by(&config.metadata.uid) => {
            status.mark_false(
                "Ready",
                "RevisionFailed",
                &format!(
                    "Revision creation failed with message: revisions.serving.knative.dev {rev_name:?} already exists and is not owned by this Configuration."
                ),
            );
            return write(ctx, &config, status);
        }
        Some(rev) if rev.spec != config.spec.template.spec => {
            status.mark_false(
                "Ready",
                "RevisionFailed",
                &format!(
                    "Revision creation failed with message: revision {rev_name:?} already exists with a different spec; give the template a new name."
                ),
            );
            return write(ctx, &config, status);
        }
        Some(rev) => rev,
        None => ctx.client.create(&make_revision(&config, &rev_name))?,
    };
    status.latest_created_revision_name = rev_name.clone();

    match latest.status.get_condition("Ready").map(|c| c.status) {
        Some(ConditionStatus::True) => {
            status.latest_ready_revision_name = rev_name.clone();
            status.mark_true("Ready");
        }
        Some(ConditionStatus::False) => {
            let msg = latest
                .status
                .get_condition("Ready")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            status.mark_false(
                "Ready",
                "RevisionFailed",
                &revision_failed_message(&rev_name, &msg),
            );
        }
        _ => {
            if status.latest_ready_revision_name.is_empty() {
                status.mark_unknown("Ready", "", "");
            } else {
                // An older revision still serves; Ready follows the newest.
                status.mark_unknown(
                    "Ready",
                    "",
                    &format!("Waiting for Revision {rev_name:?} to become ready."),
                );
            }
        }
    }
    super::gc::collect(
        ctx,
        &config,
        &status.latest_created_revision_name,
        &status.latest_ready_revision_name,
    )?;
    write(ctx, &config, status)
}

fn write(
    ctx: &Context,
    config: &Configuration,
    status: rouse_api::serving::ConfigurationStatus,
) -> Result<Requeue, ReconcileError> {
    if status != config.status {
        let mut updated = config.clone();
        updated.status = status;
        ctx.client.update_status(&updated)?;
    }
    Ok(None)
}

fn make_revision(config: &Configuration, rev_name: &str) -> Revision {
    let meta = &config.metadata;
    let template = &config.spec.template;
    let mut rev = Revision::new_named(&meta.namespace, rev_name);
    rev.metadata.labels = propagated(&template.metadata.labels);
    rev.metadata.annotations = propagated(&template.metadata.annotations);
    let labels = &mut rev.metadata.labels;
    labels.insert(LABEL_CONFIGURATION.to_string(), meta.name.clone());
    labels.insert(
        LABEL_CONFIGURATION_GENERATION.to_string(),
        meta.generation.to_string(),
    );
    labels.insert(LABEL_CONFIGURATION_UID.to_string(), meta.uid.clone());
    labels.insert(LABEL_ROUTING_STATE.to_string(), "pending".to_string());
    if let Some(svc) = meta.labels.get(LABEL_SERVICE) {
        labels.insert(LABEL_SERVICE.to_string(), svc.clone());
        if let Some(owner) = meta.controller_owner() {
            labels.insert(LABEL_SERVICE_UID.to_string(), owner.uid.clone());
        }
    }
    rev.metadata.owner_references = vec![config.owner_ref()];
    rev.spec = template.spec.clone();
    rev
}

/// Knative's "Revision %q failed with message: %s." — the revision's message often ends a
/// sentence already: one period, not two ("within 15s..").
fn revision_failed_message(rev_name: &str, msg: &str) -> String {
    format!(
        "Revision {rev_name:?} failed with message: {}.",
        msg.trim_end().trim_end_matches('.')
    )
}

#[cfg(test)]
mod tests {
    use super::revision_failed_message;

    #[test]
    fn one_period_at_the_end() {
        assert_eq!(
            revision_failed_message("r-00001", "did not become ready within 15s."),
            "Revision \"r-00001\" failed with message: did not become ready within 15s."
        );
        assert_eq!(
            revision_failed_message("r-00001", "Container failed with: boom"),
            "Revision \"r-00001\" failed with message: Container failed with: boom."
        );
    }
}
