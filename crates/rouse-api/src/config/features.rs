//! `config-features`: feature flags (Enabled, Disabled, Allowed).

use std::collections::BTreeMap;

/// A feature flag's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Enabled,
    Disabled,
    Allowed,
}

/// Parsed `config-features`: every known flag with its state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeaturesConfig {
    /// Flags by key (e.g. `kubernetes.podspec-affinity`); missing keys take Knative's default.
    pub flags: BTreeMap<String, Flag>,
}
