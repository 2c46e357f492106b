//! `config-defaults`: revision timeouts, container concurrency and other template defaults.

/// Parsed `config-defaults`.
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultsConfig {
    pub revision_timeout_seconds: i64,
    pub max_revision_timeout_seconds: i64,
    pub revision_response_start_timeout_seconds: i64,
    pub revision_idle_timeout_seconds: i64,
    pub container_concurrency: i64,
    pub container_concurrency_max_limit: i64,
    pub allow_container_concurrency_zero: bool,
    pub enable_service_links: Option<bool>,
    pub user_container_name_template: String,
    pub init_container_name_template: String,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: 300,
            revision_idle_timeout_seconds: 0,
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
            allow_container_concurrency_zero: true,
            enable_service_links: Some(false),
            user_container_name_template: "user-container".to_string(),
            init_container_name_template: "init-container".to_string(),
        }
    }
}
