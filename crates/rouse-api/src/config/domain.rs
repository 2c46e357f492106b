//! `config-domain`: the domain each Route is served under. Every key is a domain; its value is
//! empty (the default for every Route) or a label selector (`selector:\n  app: prod`) choosing
//! the Routes, by their labels, that get that domain. The most specific match (most labels)
//! wins, ties going to the first domain in name order, as in Knative.
//!
//! As in Knative, when keys are configured but none is the default, the Routes no key selects
//! are cluster-local (`svc.{cluster-domain}`). Unlike Knative, an absent or empty ConfigMap
//! gives every Route the platform's own domain (`--domain`), so a fresh install serves.

use std::collections::BTreeMap;

use super::{ConfigData, ConfigError, EXAMPLE_KEY};
use crate::serving::LABEL_VISIBILITY;

/// The ConfigMap's name.
pub const NAME: &str = "config-domain";

/// One configured domain and the labels a Route needs to get it (none: every Route).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DomainRule {
    domain: String,
    selector: BTreeMap<String, String>,
}

/// Parsed `config-domain`; empty when the ConfigMap is absent or has no keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainConfig {
    /// In domain name order (the tie-break).
    rules: Vec<DomainRule>,
}

impl DomainConfig {
    /// Parses `config-domain`'s data: each key a lowercase DNS name, each value empty or a
    /// YAML map with only `selector`, itself a map of label names to string values.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        let mut rules = Vec::new();
        for (domain, value) in d {
            if domain == EXAMPLE_KEY {
                continue;
            }
            check_domain(domain).map_err(|why| ConfigError::new(NAME, domain, why))?;
            let selector =
                parse_selector(value).map_err(|why| ConfigError::new(NAME, domain, why))?;
            rules.push(DomainRule {
                domain: domain.clone(),
                selector,
            });
        }
        // ConfigData is a BTreeMap: the rules are already in domain name order.
        Ok(Self { rules })
    }

    /// True when no domain is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The domain for a Route with `labels`: the most specific selector they match, else
    /// `fallback`.
    pub fn domain_for<'a>(
        &'a self,
        labels: &BTreeMap<String, String>,
        fallback: &'a str,
    ) -> &'a str {
        let mut best: Option<&DomainRule> = None;
        for rule in &self.rules {
            let matches = rule.selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            // Strictly more labels replaces: among equals the first in name order stays.
            if matches && best.is_none_or(|b| rule.selector.len() > b.selector.len()) {
                best = Some(rule);
            }
        }
        best.map_or(fallback, |r| r.domain.as_str())
    }
}

impl DomainConfig {
    /// The domain a Route with `labels` is served under: the cluster-local domain
    /// (`svc.{cluster_domain}`) when it is labelled `networking.knative.dev/visibility:
    /// cluster-local`; with no domain configured, `fallback` (`--domain`); else what
    /// `config-domain` selects, and the cluster-local domain when no key does (Knative's
    /// default when no key has an empty value).
    pub fn route_domain(
        &self,
        labels: &BTreeMap<String, String>,
        fallback: &str,
        cluster_domain: &str,
    ) -> String {
        let cluster_local = format!("svc.{cluster_domain}");
        if labels.get(LABEL_VISIBILITY).map(String::as_str) == Some(CLUSTER_LOCAL) {
            return cluster_local;
        }
        if self.is_empty() {
            return fallback.to_string();
        }
        self.domain_for(labels, &cluster_local).to_string()
    }
}

impl super::Config {
    /// [`DomainConfig::route_domain`] with this config's cluster domain.
    pub fn route_domain(&self, labels: &BTreeMap<String, String>, fallback: &str) -> String {
        self.domain
            .route_domain(labels, fallback, &self.network.cluster_domain)
    }
}

/// The visibility label's value that keeps a Route off the external domain.
pub const CLUSTER_LOCAL: &str = "cluster-local";

/// A domain Routes can be served under: a lowercase DNS name (RFC 1123 labels).
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{domain:?} is not a domain name: {why}"));
    if domain.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad("use lowercase letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// A key's value: empty (no selector) or `selector:` with a map of label name to value.
fn parse_selector(value: &str) -> Result<BTreeMap<String, String>, String> {
    let docs = crate::decode::parse_documents(value)
        .map_err(|e| format!("expected empty or `selector:` with labels, not YAML: {e}"))?;
    let doc = match docs.as_slice() {
        [] => return Ok(BTreeMap::new()),
        [doc] if doc.is_null() => return Ok(BTreeMap::new()),
        [doc] => doc,
        _ => return Err("expected one YAML document".into()),
    };
    let map = doc
        .as_object()
        .ok_or("expected empty or a map with `selector:`")?;
    if let Some(k) = map.keys().find(|k| *k != "selector") {
        return Err(format!(
            "unknown field {k:?} (want only `selector:` with labels)"
        ));
    }
    let mut out = BTreeMap::new();
    let Some(selector) = map.get("selector").filter(|s| !s.is_null()) else {
        return Ok(out);
    };
    let labels = selector
        .as_object()
        .ok_or("selector: expected a map of label names to values")?;
    for (name, v) in labels {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(format!("selector: label {name:?}: value must be a string")),
        };
        if name.is_empty() {
            return Err("selector: empty label name".into());
        }
        out.insert(name.clone(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, data};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_or_empty_takes_the_fallback() {
        let c = DomainConfig::from_data(&data(&[])).unwrap();
        assert!(c.is_empty());
        assert_eq!(
            c.domain_for(&labels(&[("app", "x")]), "localhost"),
            "localhost"
        );
        let c = DomainConfig::from_data(&data(&[("_example", "anything: [")])).unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn the_most_specific_selector_wins() {
        let c = DomainConfig::from_data(&data(&[
            ("example.com", ""),
            ("prod.example.com", "selector:\n  app: prod\n"),
            (
                "eu.prod.example.com",
                "selector:\n  app: prod\n  region: eu\n",
            ),
            ("staging.example.com", "selector: {app: staging}"),
        ]))
        .unwrap();
        assert_eq!(c.domain_for(&labels(&[]), "localhost"), "example.com");
        assert_eq!(
            c.domain_for(&labels(&[("app", "prod")]), "localhost"),
            "prod.example.com"
        );
        assert_eq!(
            c.domain_for(&labels(&[("app", "prod"), ("region", "eu")]), "l"),
            "eu.prod.example.com"
        );
        assert_eq!(
            c.domain_for(&labels(&[("app", "staging"), ("region", "eu")]), "l"),
            "staging.example.com"
        );
        assert_eq!(
            c.domain_for(&labels(&[("app", "other")]), "l"),
            "example.com"
        );
    }

    #[test]
    fn without_a_default_unselected_routes_take_the_fallback() {
        let c = DomainConfig::from_data(&data(&[("prod.example.com", "selector:\n  app: prod")]))
            .unwrap();
        assert_eq!(
            c.domain_for(&labels(&[("app", "dev")]), "localhost"),
            "localhost"
        );
        assert_eq!(
            c.domain_for(&labels(&[("app", "prod")]), "localhost"),
            "prod.example.com"
        );
    }

    #[test]
    fn equally_specific_selectors_go_to_the_first_domain_by_name() {
        let c = DomainConfig::from_data(&data(&[
            ("b.example.com", "selector: {team: x}"),
            ("a.example.com", "selector: {app: y}"),
            ("z.example.com", ""),
            ("c.example.com", "selector: {}"),
        ]))
        .unwrap();
        assert_eq!(c.domain_for(&labels(&[]), "l"), "c.example.com");
        assert_eq!(
            c.domain_for(&labels(&[("team", "x"), ("app", "y")]), "l"),
            "a.example.com"
        );
    }

    #[test]
    fn cluster_local_routes_stay_cluster_local() {
        let cfg = Config {
            domain: DomainConfig::from_data(&data(&[("example.com", "")])).unwrap(),
            ..Config::default()
        };
        let local = labels(&[(LABEL_VISIBILITY, "cluster-local")]);
        assert_eq!(cfg.route_domain(&local, "localhost"), "svc.cluster.local");
        assert_eq!(cfg.route_domain(&labels(&[]), "localhost"), "example.com");
        assert_eq!(
            Config::default().route_domain(&labels(&[]), "localhost"),
            "localhost"
        );
    }

    #[test]
    fn without_a_default_key_unselected_routes_are_cluster_local() {
        let cfg = Config {
            domain: DomainConfig::from_data(&data(&[(
                "prod.example.com",
                "selector: {app: prod}",
            )]))
            .unwrap(),
            ..Config::default()
        };
        assert_eq!(
            cfg.route_domain(&labels(&[("app", "prod")]), "localhost"),
            "prod.example.com"
        );
        assert_eq!(
            cfg.route_domain(&labels(&[("app", "dev")]), "localhost"),
            "svc.cluster.local"
        );
        // The cluster domain is config-network's.
        let mut cfg = cfg;
        cfg.network.cluster_domain = "corp.internal".into();
        assert_eq!(cfg.route_domain(&labels(&[]), "l"), "svc.corp.internal");
        // Only the example key: nothing configured, the platform's domain serves.
        let only_example = Config {
            domain: DomainConfig::from_data(&data(&[("_example", "x")])).unwrap(),
            ..Config::default()
        };
        assert_eq!(
            only_example.route_domain(&labels(&[]), "localhost"),
            "localhost"
        );
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "Example.com",
                "",
                "config-domain: Example.com: \"Example.com\" is not a domain name: use lowercase letters, digits, '-' and '.'",
            ),
            (
                "example..com",
                "",
                "config-domain: example..com: \"example..com\" is not a domain name: empty label",
            ),
            (
                "-a.com",
                "",
                "config-domain: -a.com: \"-a.com\" is not a domain name: a label starts or ends with '-'",
            ),
            (
                "a.com",
                "app: prod",
                "config-domain: a.com: unknown field \"app\" (want only `selector:` with labels)",
            ),
            (
                "a.com",
                "selector: [app]",
                "config-domain: a.com: selector: expected a map of label names to values",
            ),
            (
                "a.com",
                "selector: {app: {x: y}}",
                "config-domain: a.com: selector: label \"app\": value must be a string",
            ),
            (
                "a.com",
                "just text",
                "config-domain: a.com: expected empty or a map with `selector:`",
            ),
        ];
        for (key, value, want) in cases {
            let err = DomainConfig::from_data(&data(&[(key, value)])).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        let err = DomainConfig::from_data(&data(&[("a.com", "selector: [")])).unwrap_err();
        assert_eq!(err.key, "a.com");
        assert!(
            err.reason.starts_with("expected empty or `selector:`"),
            "{err}"
        );
    }
}
