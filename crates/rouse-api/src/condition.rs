//! Knative conditions (`type`, `status`, `reason`, `message`, `lastTransitionTime`) and the
//! helpers reconcilers use to set them without churning `lastTransitionTime`.

use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// The string kubectl prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// One condition of a resource's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub severity: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Reads and writes a condition list.
pub trait Conditions {
    /// The list.
    fn conditions(&self) -> &Vec<Condition>;
    /// The list, mutably.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;

    /// The condition of this type.
    fn get_condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// True when the condition is present and `True`.
    fn is_true(&self, type_: &str) -> bool {
        self.get_condition(type_)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// Sets a condition; `lastTransitionTime` only moves when the status changes.
    fn set_condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: &str) {
        let now = crate::clock::now_rfc3339();
        let list = self.conditions_mut();
        match list.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status;
                c.reason = reason.to_string();
                c.message = message.to_string();
            }
            None => {
                list.push(Condition {
                    type_: type_.to_string(),
                    status,
                    severity: String::new(),
                    last_transition_time: now,
                    reason: reason.to_string(),
                    message: message.to_string(),
                });
                list.sort_by(|a, b| a.type_.cmp(&b.type_));
            }
        }
    }

    /// Sets a condition `True` with no reason.
    fn mark_true(&mut self, type_: &str) {
        self.set_condition(type_, ConditionStatus::True, "", "");
    }

    /// Sets a condition `False`.
    fn mark_false(&mut self, type_: &str, reason: &str, message: &str) {
        self.set_condition(type_, ConditionStatus::False, reason, message);
    }

    /// Sets a condition `Unknown`.
    fn mark_unknown(&mut self, type_: &str, reason: &str, message: &str) {
        self.set_condition(type_, ConditionStatus::Unknown, reason, message);
    }

    /// Sets `Ready` from its dependents, the way Knative's living condition sets do: the first
    /// `False` dependent makes Ready False with its reason, else the first `Unknown` makes it
    /// Unknown, else Ready is True.
    fn derive_ready(&mut self, dependents: &[&str]) {
        let mut verdict: Option<(ConditionStatus, String, String)> = None;
        for d in dependents {
            let (status, reason, message) = match self.get_condition(d) {
                Some(c) => (c.status, c.reason.clone(), c.message.clone()),
                None => (ConditionStatus::Unknown, String::new(), String::new()),
            };
            match status {
                ConditionStatus::False => {
                    verdict = Some((status, reason, message));
                    break;
                }
                ConditionStatus::Unknown if verdict.is_none() => {
                    verdict = Some((status, reason, message))
                }
                _ => {}
            }
        }
        match verdict {
            Some((s, r, m)) => self.set_condition("Ready", s, &r, &m),
            None => self.mark_true("Ready"),
        }
    }
}

macro_rules! impl_conditions {
    ($($t:ty),*) => {$(
        impl $crate::condition::Conditions for $t {
            fn conditions(&self) -> &Vec<$crate::condition::Condition> { &self.conditions }
            fn conditions_mut(&mut self) -> &mut Vec<$crate::condition::Condition> { &mut self.conditions }
        }
    )*};
}
pub(crate) use impl_conditions;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct S(Vec<Condition>);
    impl Conditions for S {
        fn conditions(&self) -> &Vec<Condition> {
            &self.0
        }
        fn conditions_mut(&mut self) -> &mut Vec<Condition> {
            &mut self.0
        }
    }

    #[test]
    fn ready_follows_dependents() {
        let mut s = S::default();
        s.mark_true("A");
        s.mark_unknown("B", "Waiting", "waiting for B");
        s.derive_ready(&["A", "B"]);
        assert_eq!(
            s.get_condition("Ready").unwrap().status,
            ConditionStatus::Unknown
        );
        assert_eq!(s.get_condition("Ready").unwrap().reason, "Waiting");
        s.mark_false("A", "Broken", "A broke");
        s.derive_ready(&["A", "B"]);
        assert_eq!(s.get_condition("Ready").unwrap().reason, "Broken");
        s.mark_true("A");
        s.mark_true("B");
        s.derive_ready(&["A", "B"]);
        assert!(s.is_true("Ready"));
    }
}
