//! `config-network`: the domain and tag templates the gateway's hosts are built from.

/// Parsed `config-network` (plus the domain Rouse serves under).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Host template for a route, Go-template syntax: `{{.Name}}.{{.Namespace}}.{{.Domain}}`.
    pub domain_template: String,
    /// Name template for a tag: `{{.Tag}}-{{.Name}}`.
    pub tag_template: String,
    /// `rollout-duration` in seconds.
    pub rollout_duration_seconds: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            domain_template: "{{.Name}}.{{.Namespace}}.{{.Domain}}".to_string(),
            tag_template: "{{.Tag}}-{{.Name}}".to_string(),
            rollout_duration_seconds: 0,
        }
    }
}
