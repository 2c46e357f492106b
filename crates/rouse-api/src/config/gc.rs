//! `config-gc`: how long and how many inactive revisions are kept.

/// Parsed `config-gc`. Durations in seconds; `None` means "disabled".
#[derive(Debug, Clone, PartialEq)]
pub struct GcConfig {
    pub retain_since_create_time: Option<u64>,
    pub retain_since_last_active_time: Option<u64>,
    pub min_non_active_revisions: i64,
    pub max_non_active_revisions: Option<i64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            retain_since_create_time: Some(48 * 3600),
            retain_since_last_active_time: Some(15 * 3600),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}
