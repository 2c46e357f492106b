//! Revision garbage collection (`config-gc`), run as part of a Configuration's reconcile, the
//! way Knative's v2 collector works: a Configuration's non-active revisions (not its latest
//! created or ready one, and named by no route's traffic) are ordered newest first; past the
//! `min-non-active-revisions` newest, those outside both retention times are deleted; then,
//! while more than `max-non-active-revisions` remain, the oldest go. A revision's last
//! activity is its `routingStateModified` time (when it went to reserve), else its creation.

use rouse_api::Kind;
use rouse_api::config::gc::GcConfig;
use rouse_api::serving::{Configuration, LABEL_CONFIGURATION_GENERATION, Revision};
use rouse_store::StoreError;

use super::routing_state::ANNOTATION_ROUTING_STATE_MODIFIED;
use crate::{Context, ReconcileError, RouteRef};

/// Deletes the revisions of `config` that `config-gc` no longer keeps; returns their names.
pub(super) fn collect(
    ctx: &Context,
    config: &Configuration,
    latest_created: &str,
    latest_ready: &str,
) -> Result<Vec<String>, ReconcileError> {
    let platform = ctx.config.get();
    let gc = &platform.gc;
    let ns = config.metadata.namespace.as_str();
    let owned: Vec<Revision> = ctx
        .client
        .list::<Revision>(Some(ns))?
        .into_iter()
        .filter(|r| r.metadata.is_owned_by(&config.metadata.uid))
        .collect();
    let candidates: Vec<Candidate> = owned
        .iter()
        .filter(|r| {
            let name = r.metadata.name.as_str();
            name != latest_created
                && name != latest_ready
                && !ctx.route_refs.any(ns, RouteRef::Revision(name.to_string()))
                && !ctx.route_refs.any(ns, RouteRef::Serving(name.to_string()))
        })
        .map(Candidate::of)
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doomed = choose(gc, candidates, now);
    for name in &doomed {
        match ctx.client.store().delete(Kind::Revision, ns, name) {
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                tracing::info!(namespace = ns, revision = %name, "revision garbage-collected (config-gc)");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(doomed)
}

/// What the collector needs of a non-active revision.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    /// Seconds since the epoch.
    created: u64,
    /// When it was last routed (seconds since the epoch): its routing state's last change,
    /// else its creation.
    last_active: u64,
    /// The Configuration generation it was made from (orders revisions created the same second).
    generation: u64,
}

impl Candidate {
    fn of(r: &Revision) -> Self {
        let created = rouse_api::clock::parse_rfc3339(&r.metadata.creation_timestamp).unwrap_or(0);
        let modified = r
            .metadata
            .annotations
            .get(ANNOTATION_ROUTING_STATE_MODIFIED)
            .and_then(|t| rouse_api::clock::parse_rfc3339(t));
        Self {
            name: r.metadata.name.clone(),
            created,
            last_active: modified.unwrap_or(created).max(created),
            generation: r
                .metadata
                .labels
                .get(LABEL_CONFIGURATION_GENERATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
        }
    }
}

/// The candidates to delete at time `now`, by Knative's rules.
fn choose(gc: &GcConfig, mut revs: Vec<Candidate>, now: u64) -> Vec<String> {
    let min = usize::try_from(gc.min_non_active_revisions.max(0)).unwrap_or(usize::MAX);
    if revs.len() <= min {
        return Vec::new();
    }
    // Newest first.
    revs.sort_by(|a, b| {
        (b.created, b.generation, &b.name).cmp(&(a.created, a.generation, &a.name))
    });
    let stale = |r: &Candidate| {
        let (create, active) = (
            gc.retain_since_create_time,
            gc.retain_since_last_active_time,
        );
        if create.is_none() && active.is_none() {
            return false;
        }
        let (age, idle) = (
            now.saturating_sub(r.created),
            now.saturating_sub(r.last_active),
        );
        !(create.is_some_and(|keep| age < keep) || active.is_some_and(|keep| idle < keep))
    };
    let mut doomed = Vec::new();
    let mut kept = revs[..min].to_vec();
    for r in &revs[min..] {
        if stale(r) {
            doomed.push(r.name.clone());
        } else {
            kept.push(r.clone());
        }
    }
    if let Some(max) = gc.max_non_active_revisions {
        let max = usize::try_from(max.max(0)).unwrap_or(usize::MAX);
        // `kept` is still newest first: drop from its end (the oldest), never below `min`.
        while kept.len() > max.max(min) {
            let r = kept.pop().expect("longer than max");
            doomed.push(r.name);
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, created: u64, generation: u64) -> Candidate {
        Candidate {
            name: name.to_string(),
            created,
            last_active: created,
            generation,
        }
    }

    fn cfg(min: i64, max: Option<i64>, create: Option<u64>, active: Option<u64>) -> GcConfig {
        GcConfig {
            retain_since_create_time: create,
            retain_since_last_active_time: active,
            min_non_active_revisions: min,
            max_non_active_revisions: max,
        }
    }

    #[test]
    fn max_keeps_the_newest() {
        let revs = vec![rev("a-1", 100, 1), rev("a-2", 100, 2), rev("a-3", 101, 3)];
        let mut got = choose(&cfg(0, Some(1), None, None), revs.clone(), 200);
        got.sort();
        assert_eq!(got, ["a-1", "a-2"]);
        assert!(choose(&cfg(0, None, None, None), revs.clone(), 200).is_empty());
        assert!(choose(&cfg(0, Some(3), None, None), revs.clone(), 200).is_empty());
        // min wins over max.
        assert_eq!(choose(&cfg(2, Some(1), None, None), revs, 200), ["a-1"]);
    }

    #[test]
    fn stale_beyond_min_go() {
        let h = 3600;
        let revs = vec![
            rev("old-1", 0, 1),
            rev("old-2", 1, 2),
            rev("new-3", 100 * h, 3),
        ];
        let now = 100 * h + 10;
        // Defaults (48h/15h, min 20): nothing goes with three revisions.
        assert!(choose(&GcConfig::default(), revs.clone(), now).is_empty());
        // min 1 keeps the newest; the old two are past both retention times.
        let mut got = choose(
            &cfg(1, Some(1000), Some(48 * h), Some(15 * h)),
            revs.clone(),
            now,
        );
        got.sort();
        assert_eq!(got, ["old-1", "old-2"]);
        // min 0: the recent one stays by its age.
        let got = choose(&cfg(0, Some(1000), Some(48 * h), Some(15 * h)), revs, now);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn an_old_revision_routed_until_lately_stays() {
        let h = 3600;
        let mut lately = rev("old-but-lately-routed", 0, 1);
        lately.last_active = 100 * h;
        let revs = vec![rev("old", 1, 2), lately];
        // Created long ago, but in reserve only for 10 s: within 15 h of its last activity.
        let got = choose(
            &cfg(0, None, Some(48 * h), Some(15 * h)),
            revs,
            100 * h + 10,
        );
        assert_eq!(got, ["old"]);
    }
}
