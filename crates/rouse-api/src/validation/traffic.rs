//! Traffic rules of a Route's or Service's `spec.traffic`. Paths are relative to the list
//! (`[0].percent`, or empty for the list itself); the caller prefixes `spec.traffic`.

use std::collections::BTreeMap;

use super::names::{dns1035_label_errors, go_list, qualified_name_errors, quote};
use crate::error::{FieldError, FieldErrors};
use crate::serving::TrafficTarget;

/// Validates a spec's traffic list. In a Service (`in_service`) the configuration is implied,
/// so `configurationName` is refused and a target may name neither.
pub(crate) fn traffic(targets: &[TrafficTarget], in_service: bool) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum: i64 = 0;
    for (i, t) in targets.iter().enumerate() {
        errs.extend_via(&format!("[{i}]"), target(t, in_service));
        sum += t.percent.unwrap_or(0);
        if t.tag.is_empty() {
            continue;
        }
        let msgs = dns1035_label_errors(&t.tag);
        if !msgs.is_empty() {
            // Knative builds this path as `tag[i]` (an array-value error on the field `tag`).
            errs.push(FieldError::invalid_value(
                format!("not a DNS 1035 label: {}", go_list(&msgs)),
                &format!("tag[{i}]"),
            ));
        }
        match tags.get(t.tag.as_str()) {
            Some(first) => errs.push(FieldError::new(
                format!("Multiple definitions for {}", quote(&t.tag)),
                &[&format!("[{first}].tag"), &format!("[{i}].tag")],
            )),
            None => {
                tags.insert(&t.tag, i);
            }
        }
    }
    if sum != 100 {
        errs.push(FieldError::new(
            format!("Traffic targets sum to {sum}, want 100"),
            &[""],
        ));
    }
    errs
}

/// One target's own rules, paths relative to the target.
fn target(t: &TrafficTarget, in_service: bool) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if let Some(latest) = t.latest_revision {
        let pinned = !t.revision_name.is_empty();
        if pinned == latest {
            errs.push(FieldError::new(
                format!(
                    "may not set revisionName {} when latestRevision is {latest}",
                    quote(&t.revision_name)
                ),
                &["latestRevision"],
            ));
        }
    }
    let has_rev = !t.revision_name.is_empty();
    let has_cfg = !t.configuration_name.is_empty();
    if in_service && has_cfg {
        errs.push(FieldError::disallowed(&["configurationName"]));
    } else if has_rev && has_cfg {
        errs.push(FieldError::multiple_one_of(&[
            "configurationName",
            "revisionName",
        ]));
    } else if has_rev {
        errs.extend(name_check(&t.revision_name, "revisionName"));
    } else if has_cfg {
        errs.extend(name_check(&t.configuration_name, "configurationName"));
    } else if !in_service {
        errs.push(FieldError::missing_one_of(&[
            "configurationName",
            "revisionName",
        ]));
    }
    if let Some(p) = t.percent
        && !(0..=100).contains(&p)
    {
        errs.push(FieldError::out_of_bounds(p, 0, 100, "percent"));
    }
    if !t.url.is_empty() {
        // Only the status carries URLs (and only for tagged targets).
        errs.push(FieldError::disallowed(&["url"]));
    }
    errs
}

fn name_check(name: &str, field: &str) -> FieldErrors {
    let msgs = qualified_name_errors(name);
    if msgs.is_empty() {
        return FieldErrors::new();
    }
    FieldError::new(format!("invalid key name {}", quote(name)), &[field])
        .with_details(msgs.join(", "))
        .into()
}
