//! Gradual rollout (reference §7): when a `latestRevision` target's Configuration gets a new
//! ready revision, the new revision starts at 1 % and takes the rest of the target's share in
//! equal steps spread over the rollout duration, instead of all at once.
//!
//! The state is one [`Rollout`] per Route, kept as JSON in an annotation (Knative's field names,
//! so the stored form reads the same), and stepped on each reconcile from the state stored last
//! time and the traffic the spec asks for now. Times are Unix nanoseconds, so the state means
//! the same after a controller restart.

use serde::{Deserialize, Serialize};

/// Annotation holding the serialized [`Rollout`] (Knative keeps it on the Route's Ingress
/// under the same key; Rouse keeps it in the Route's `status.annotations`).
pub const ANNOTATION_ROLLOUT: &str = "networking.internal.knative.dev/rollout";

const NANOS_PER_SEC: f64 = 1e9;

/// Every rolling target of one Route, sorted by tag, then configuration name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configurations: Vec<ConfigurationRollout>,
}

/// One Configuration's share of one traffic name (the default, "", or a tag).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRollout {
    pub configuration_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The share of the Route's traffic this target has; the revisions' shares sum to it.
    pub percent: i64,
    /// Oldest first; the last is the one being rolled out. One entry when nothing rolls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionShare>,
    #[serde(default)]
    pub step_params: StepParams,
}

/// A revision's share of the Route's traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionShare {
    pub revision_name: String,
    pub percent: i64,
}

/// When the rollout started and how it steps; all zero when nothing rolls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepParams {
    /// When the new revision got its first 1 % (ns).
    #[serde(rename = "starttime", default, skip_serializing_if = "is_zero")]
    pub start_time: i64,
    /// When the next step is due (ns).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_step_time: i64,
    /// Time between steps (ns); zero until the first 1 % is known to be served.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_duration: i64,
    /// Percent moved to the newest revision per step.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_size: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Rollout {
    /// The steady state the spec asks for: each `(tag, configuration, revision, percent)` of
    /// a `latestRevision` target, merged per tag and configuration; 0 % targets roll nothing.
    pub fn desired<'a>(
        targets: impl IntoIterator<Item = (&'a str, &'a str, &'a str, i64)>,
    ) -> Self {
        let mut out = Rollout::default();
        for (tag, config, revision, percent) in targets {
            if percent <= 0 {
                continue;
            }
            match out
                .configurations
                .iter_mut()
                .find(|c| c.tag == tag && c.configuration_name == config)
            {
                Some(c) => {
                    c.percent += percent;
                    c.revisions[0].percent += percent;
                }
                None => out.configurations.push(ConfigurationRollout {
                    configuration_name: config.to_string(),
                    tag: tag.to_string(),
                    percent,
                    revisions: vec![RevisionShare {
                        revision_name: revision.to_string(),
                        percent,
                    }],
                    step_params: StepParams::default(),
                }),
            }
        }
        out.sort();
        out
    }

    /// Reads a stored rollout; `None` when it is missing, unreadable or inconsistent (a
    /// hand-edited annotation restarts from the spec's traffic rather than failing).
    pub fn parse(text: Option<&str>) -> Option<Self> {
        let ro: Rollout = serde_json::from_str(text?).ok()?;
        ro.is_consistent().then_some(ro)
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a rollout serializes")
    }

    fn is_consistent(&self) -> bool {
        self.configurations.iter().all(|c| {
            (0..=100).contains(&c.percent)
                && (0..=c.percent).contains(&c.step_params.step_size)
                && c.revisions.iter().all(|r| r.percent >= 0)
                && c.revisions.iter().map(|r| r.percent).sum::<i64>() == c.percent
        })
    }

    /// True when no target is between two or more revisions.
    pub fn done(&self) -> bool {
        self.configurations.iter().all(|c| c.revisions.len() < 2)
    }

    /// The rollout of one traffic name's configuration.
    pub fn get(&self, tag: &str, config: &str) -> Option<&ConfigurationRollout> {
        self.configurations
            .iter()
            .find(|c| c.tag == tag && c.configuration_name == config)
    }

    /// Called once the data plane serves the current shares: a rollout that has just given
    /// its new revision 1 % learns how long that took and plans its steps from it.
    pub fn observe_ready(&mut self, now: i64, duration_secs: u64) {
        for c in &mut self.configurations {
            if c.step_params.step_duration == 0 && c.step_params.start_time > 0 {
                let first_step_secs = ((now - c.step_params.start_time) as f64 / NANOS_PER_SEC)
                    .ceil()
                    .max(1.0);
                c.plan_steps(now, first_step_secs, duration_secs as f64);
            }
        }
    }

    /// Moves from `prev` (what was served) towards `self` (what the spec asks for) by what
    /// is due at `now`. Returns the shares to serve now and when the next step is due (ns),
    /// if one is.
    pub fn step(&self, prev: Option<&Rollout>, now: i64) -> (Rollout, Option<i64>) {
        let Some(prev) = prev.filter(|p| !p.configurations.is_empty()) else {
            return (self.clone(), None);
        };
        let mut out = Rollout::default();
        let mut next: Option<i64> = None;
        for goal in &self.configurations {
            let stepped = match prev.get(&goal.tag, &goal.configuration_name) {
                // A new target, or one at 1 % (a test share): nothing to roll from.
                None => goal.clone(),
                Some(_) if goal.percent <= 1 => goal.clone(),
                Some(before) => goal.step_from(before.clone(), now),
            };
            if stepped.step_params.next_step_time > 0 {
                let t = stepped.step_params.next_step_time;
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            out.configurations.push(stepped);
        }
        out.sort();
        (out, next)
    }

    fn sort(&mut self) {
        self.configurations.sort_by(|a, b| {
            (a.tag.as_str(), a.configuration_name.as_str())
                .cmp(&(b.tag.as_str(), b.configuration_name.as_str()))
        });
    }
}

impl ConfigurationRollout {
    /// `self` is the goal (one revision at the target's whole share); `prev` the state served.
    fn step_from(&self, mut prev: ConfigurationRollout, now: i64) -> ConfigurationRollout {
        if !prev.revisions.is_empty() {
            prev.resize(self.percent);
        }
        let newest = &self.revisions[0];
        let same_revision = prev
            .revisions
            .last()
            .is_none_or(|r| r.revision_name == newest.revision_name);
        if same_revision {
            if prev.revisions.len() < 2 {
                return self.clone();
            }
            // Still rolling towards the same revision: keep the plan, step if due (not
            // before the plan exists, see `observe_ready`).
            let mut out = ConfigurationRollout {
                percent: self.percent,
                ..prev
            };
            if out.step_params.step_size > 0 {
                out.step_revisions(now);
            }
            return out;
        }
        // A new revision: it takes 1 % from the newest revision that has traffic, and the
        // plan is made once that 1 % is served.
        if let Some(r) = prev.revisions.iter_mut().rev().find(|r| r.percent > 0) {
            r.percent -= 1;
        }
        let mut revisions: Vec<RevisionShare> = prev
            .revisions
            .into_iter()
            .filter(|r| r.percent > 0)
            .collect();
        revisions.push(RevisionShare {
            revision_name: newest.revision_name.clone(),
            percent: 1,
        });
        ConfigurationRollout {
            configuration_name: self.configuration_name.clone(),
            tag: self.tag.clone(),
            percent: self.percent,
            revisions,
            step_params: StepParams {
                start_time: now,
                ..StepParams::default()
            },
        }
    }

    /// The target's share changed to `goal`: a gain goes to the newest revision, a loss is
    /// taken from the oldest ones first.
    fn resize(&mut self, goal: i64) {
        let diff = goal - self.percent;
        if goal == 0 {
            self.revisions.clear();
        } else if diff > 0 {
            if let Some(newest) = self.revisions.last_mut() {
                newest.percent += diff;
            }
        } else if diff < 0 {
            let mut cut = -diff;
            for r in &mut self.revisions {
                let taken = cut.min(r.percent);
                r.percent -= taken;
                cut -= taken;
                if cut == 0 {
                    break;
                }
            }
            self.revisions.retain(|r| r.percent > 0);
        }
        self.percent = goal;
    }

    /// One step, if due: `step_size` moves to the newest revision, drained from the
    /// next-newest backwards; revisions left with nothing drop out. The last step ends the
    /// rollout and clears the plan.
    fn step_revisions(&mut self, now: i64) {
        if now < self.step_params.next_step_time || self.revisions.len() < 2 {
            return;
        }
        let Some(mut newest) = self.revisions.pop() else {
            return;
        };
        let mut to_move = self.step_params.step_size;
        while to_move > 0 {
            let Some(older) = self.revisions.last_mut() else {
                break;
            };
            if older.percent > to_move {
                older.percent -= to_move;
                break;
            }
            to_move -= older.percent;
            self.revisions.pop();
        }
        newest.percent = (newest.percent + self.step_params.step_size).min(self.percent);
        self.revisions.push(newest);
        if self.revisions.len() > 1 {
            self.step_params.next_step_time = now + self.step_params.step_duration;
        } else {
            self.step_params = StepParams::default();
        }
    }

    /// Plans equal steps for the rest of the share over what is left of the duration, given
    /// that the first 1 % took `first_step_secs` (so no step is shorter than that).
    fn plan_steps(&mut self, now: i64, first_step_secs: f64, duration_secs: f64) {
        let left_secs = (duration_secs - first_step_secs).max(1.0);
        let to_move = (self.percent - 1).max(1) as f64;
        let steps = (left_secs / first_step_secs).max(1.0).min(to_move);
        let step_duration = (left_secs / steps * NANOS_PER_SEC) as i64;
        self.step_params.step_size = (to_move / steps).round() as i64;
        self.step_params.step_duration = step_duration;
        self.step_params.next_step_time = now + step_duration;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn shares(c: &ConfigurationRollout) -> Vec<(&str, i64)> {
        c.revisions
            .iter()
            .map(|r| (r.revision_name.as_str(), r.percent))
            .collect()
    }

    fn one(rev: &str, percent: i64) -> Rollout {
        Rollout::desired([("", "cfg", rev, percent)])
    }

    #[test]
    fn no_previous_state_serves_the_spec_at_once() {
        let (ro, next) = one("r2", 100).step(None, 5 * S);
        assert_eq!(ro, one("r2", 100));
        assert_eq!(next, None);
        assert!(ro.done());
    }

    #[test]
    fn a_new_revision_starts_at_one_percent() {
        let (ro, next) = one("r2", 100).step(Some(&one("r1", 100)), 7 * S);
        let c = ro.get("", "cfg").unwrap();
        assert_eq!(shares(c), vec![("r1", 99), ("r2", 1)]);
        assert_eq!(c.step_params.start_time, 7 * S);
        assert_eq!(
            c.step_params.step_size, 0,
            "no plan before the 1 % is served"
        );
        assert_eq!(next, None);
        assert!(!ro.done());
    }

    #[test]
    fn the_plan_spreads_the_rest_over_the_duration() {
        let (mut ro, _) = one("r2", 100).step(Some(&one("r1", 100)), 10 * S);
        // Served within the first second: steps of 1 s over the 9 s left, 99 % in 9 steps.
        ro.observe_ready(10 * S + S / 2, 10);
        let p = &ro.get("", "cfg").unwrap().step_params;
        assert_eq!(p.step_size, 11);
        assert_eq!(p.step_duration, S);
        assert_eq!(p.next_step_time, 11 * S + S / 2);

        // A slow first step (3 s of a 60 s rollout): 19 steps of 3 s, 5 % each.
        let (mut slow, _) = one("r2", 100).step(Some(&one("r1", 100)), 10 * S);
        slow.observe_ready(13 * S - 1, 60);
        let p = &slow.get("", "cfg").unwrap().step_params;
        assert_eq!((p.step_size, p.step_duration), (5, 3 * S));

        // More time than percent: 1 % steps.
        let (mut long, _) = one("r2", 50).step(Some(&one("r1", 50)), 0);
        long.configurations[0].step_params.start_time = 1;
        long.observe_ready(1 + S / 10, 600);
        let p = &long.get("", "cfg").unwrap().step_params;
        assert_eq!(p.step_size, 1);
        assert_eq!(p.step_duration, 599 * S / 49);
    }

    #[test]
    fn steps_move_traffic_until_the_new_revision_has_it_all() {
        let goal = one("r2", 100);
        let (mut ro, _) = goal.step(Some(&one("r1", 100)), 0);
        ro.configurations[0].step_params.start_time = 1;
        ro.observe_ready(S / 2, 10);
        let mut now = S / 2;
        let mut seen = vec![shares(&ro.configurations[0])[1].1];
        for _ in 0..20 {
            // Not due yet: unchanged.
            let (same, next) = goal.step(Some(&ro), now);
            assert_eq!(same, ro);
            let Some(due) = next else { break };
            now = due;
            let (stepped, _) = goal.step(Some(&ro), now);
            ro = stepped;
            let c = &ro.configurations[0];
            assert_eq!(c.revisions.iter().map(|r| r.percent).sum::<i64>(), 100);
            seen.push(c.revisions.last().unwrap().percent);
        }
        assert!(ro.done());
        assert_eq!(shares(&ro.configurations[0]), vec![("r2", 100)]);
        assert_eq!(ro.configurations[0].step_params, StepParams::default());
        assert_eq!(seen, vec![1, 12, 23, 34, 45, 56, 67, 78, 89, 100]);
        assert_eq!(now, S / 2 + 9 * S, "nine steps of a second each");
    }

    #[test]
    fn a_newer_revision_during_a_rollout_stacks_on_top() {
        let mut prev = one("r2", 100);
        prev.configurations[0].revisions = vec![
            RevisionShare {
                revision_name: "r1".into(),
                percent: 60,
            },
            RevisionShare {
                revision_name: "r2".into(),
                percent: 40,
            },
        ];
        prev.configurations[0].step_params = StepParams {
            start_time: S,
            next_step_time: 9 * S,
            step_duration: S,
            step_size: 20,
        };
        let (ro, next) = one("r3", 100).step(Some(&prev), 5 * S);
        let c = &ro.configurations[0];
        assert_eq!(shares(c), vec![("r1", 60), ("r2", 39), ("r3", 1)]);
        assert_eq!(c.step_params.start_time, 5 * S);
        assert_eq!(c.step_params.step_size, 0);
        assert_eq!(next, None);

        // A step drains the next-newest first, then older ones; emptied ones drop out.
        let mut rolling = ro.clone();
        rolling.configurations[0].step_params = StepParams {
            start_time: 5 * S,
            next_step_time: 6 * S,
            step_duration: S,
            step_size: 50,
        };
        let (after, next) = one("r3", 100).step(Some(&rolling), 6 * S);
        assert_eq!(
            shares(&after.configurations[0]),
            vec![("r1", 49), ("r3", 51)]
        );
        assert_eq!(next, Some(7 * S));
    }

    #[test]
    fn a_changed_share_resizes_the_rollout() {
        let mut prev = one("r2", 100);
        prev.configurations[0].revisions = vec![
            RevisionShare {
                revision_name: "r1".into(),
                percent: 70,
            },
            RevisionShare {
                revision_name: "r2".into(),
                percent: 30,
            },
        ];
        prev.configurations[0].step_params.step_size = 10;
        prev.configurations[0].step_params.next_step_time = 100 * S;
        // Down to 50 %: the oldest loses 50.
        let (down, _) = one("r2", 50).step(Some(&prev), S);
        assert_eq!(
            shares(&down.configurations[0]),
            vec![("r1", 20), ("r2", 30)]
        );
        // Down to 20 %: the oldest is gone, and with it the rollout.
        let (gone, next) = one("r2", 20).step(Some(&prev), S);
        assert_eq!(shares(&gone.configurations[0]), vec![("r2", 20)]);
        assert!(gone.done());
        assert_eq!(next, None);
        // Up: the newest gains.
        let (up, _) = Rollout::desired([("", "cfg", "r2", 100)]).step(Some(&down), S);
        assert_eq!(shares(&up.configurations[0]), vec![("r1", 20), ("r2", 80)]);
    }

    #[test]
    fn targets_without_history_or_at_one_percent_do_not_roll() {
        let prev = Rollout::desired([("", "a", "a1", 99), ("", "b", "b1", 1)]);
        let goal = Rollout::desired([
            ("", "a", "a2", 99),
            ("", "b", "b2", 1),
            ("x", "c", "c1", 100),
        ]);
        let (ro, _) = goal.step(Some(&prev), S);
        assert_eq!(
            shares(ro.get("", "a").unwrap()),
            vec![("a1", 98), ("a2", 1)]
        );
        assert_eq!(shares(ro.get("", "b").unwrap()), vec![("b2", 1)]);
        assert_eq!(shares(ro.get("x", "c").unwrap()), vec![("c1", 100)]);
        // A removed target is forgotten.
        assert!(ro.get("", "gone").is_none());
    }

    #[test]
    fn the_stored_form_round_trips_and_rejects_inconsistent_state() {
        let (mut ro, _) = one("r2", 100).step(Some(&one("r1", 100)), 3 * S);
        ro.observe_ready(4 * S, 60);
        let text = ro.to_json();
        assert!(text.contains("\"configurationName\":\"cfg\""), "{text}");
        assert!(text.contains("\"starttime\":3000000000"), "{text}");
        assert_eq!(Rollout::parse(Some(&text)), Some(ro));
        assert_eq!(Rollout::parse(None), None);
        assert_eq!(Rollout::parse(Some("{not json")), None);
        let bad = r#"{"configurations":[{"configurationName":"c","percent":100,"revisions":[{"revisionName":"a","percent":60}],"stepParams":{}}]}"#;
        assert_eq!(Rollout::parse(Some(bad)), None, "shares must add up");
        let over = r#"{"configurations":[{"configurationName":"c","percent":120,"revisions":[{"revisionName":"a","percent":120}],"stepParams":{}}]}"#;
        assert_eq!(Rollout::parse(Some(over)), None);
    }

    #[test]
    fn desired_merges_targets_of_one_configuration_and_skips_zero() {
        let ro = Rollout::desired([
            ("", "cfg", "r1", 30),
            ("", "cfg", "r1", 20),
            ("t", "cfg", "r1", 0),
            ("", "other", "o1", 50),
        ]);
        assert_eq!(ro.configurations.len(), 2);
        assert_eq!(ro.get("", "cfg").unwrap().percent, 50);
        assert_eq!(shares(ro.get("", "cfg").unwrap()), vec![("r1", 50)]);
        assert!(ro.get("t", "cfg").is_none());
    }
}
