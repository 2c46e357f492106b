//! Knative's ConfigMaps (`config-defaults`, `config-autoscaler`, `config-network`,
//! `config-domain`, `config-gc`, `config-features`, `config-observability`) and Rouse's own `config-rouse`, parsed once into typed, immutable values
//! with Knative's keys and defaults.
//!
//! Parsing is stricter than Knative's on purpose: a key Knative does not know, or a value
//! Knative would silently ignore, stops start-up with the ConfigMap, the key and the reason.
//! Keys Knative knows but Rouse does not act on are accepted, so a Knative user's file works
//! unchanged.

pub mod autoscaler;
pub mod defaults;
pub mod domain;
pub mod features;
pub mod gc;
pub mod network;
pub mod observability;
pub mod rouse;

use std::collections::BTreeMap;

use serde_json::Value as Yaml;

/// A config error: which ConfigMap and key, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{configmap}: {key}: {reason}")]
pub struct ConfigError {
    /// The ConfigMap's name, e.g. `config-autoscaler`.
    pub configmap: String,
    /// The offending key.
    pub key: String,
    /// Why it was refused.
    pub reason: String,
}

impl ConfigError {
    /// A new error.
    pub fn new(configmap: &str, key: &str, reason: impl Into<String>) -> Self {
        Self {
            configmap: configmap.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// The data of one ConfigMap.
pub type ConfigData = BTreeMap<String, String>;

/// Every config Rouse reads, with Knative's defaults for what was not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub defaults: defaults::DefaultsConfig,
    pub autoscaler: autoscaler::AutoscalerConfig,
    pub network: network::NetworkConfig,
    /// The domains Routes are served under (`config-domain`); empty: `--domain`.
    pub domain: domain::DomainConfig,
    pub gc: gc::GcConfig,
    pub features: features::FeaturesConfig,
    pub observability: observability::ObservabilityConfig,
    /// Rouse's own limits (`config-rouse`).
    pub rouse: rouse::RouseConfig,
}

/// The ConfigMaps Rouse reads, by `metadata.name`.
pub const CONFIGMAP_NAMES: [&str; 8] = [
    defaults::NAME,
    AUTOSCALER_NAME,
    network::NAME,
    domain::NAME,
    gc::NAME,
    features::NAME,
    observability::NAME,
    rouse::NAME,
];

/// A function told of each new config.
type Listener = std::sync::Arc<dyn Fn(&Config) + Send + Sync>;

/// The platform's config, replaceable while running (the ConfigMaps written through the API):
/// readers take the current value with [`SharedConfig::get`] each time they act; parts that
/// keep their own copy on a hot path are told of changes ([`SharedConfig::on_change`]).
#[derive(Clone, Default)]
pub struct SharedConfig {
    current: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>,
    listeners: std::sync::Arc<std::sync::Mutex<Vec<Listener>>>,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedConfig").field(&self.get()).finish()
    }
}

impl SharedConfig {
    /// Shares `config`.
    pub fn new(config: Config) -> Self {
        Self {
            current: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(config))),
            listeners: Default::default(),
        }
    }

    /// The current config.
    pub fn get(&self) -> std::sync::Arc<Config> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the config; readers see it from their next [`SharedConfig::get`], and every
    /// listener is called with it.
    pub fn set(&self, config: Config) {
        let config = std::sync::Arc::new(config);
        match self.current.write() {
            Ok(mut c) => *c = config.clone(),
            Err(poisoned) => *poisoned.into_inner() = config.clone(),
        }
        let listeners = match self.listeners.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for listener in listeners {
            listener(&config);
        }
    }

    /// Calls `f` with the current config now and with each new one from then on.
    pub fn on_change(&self, f: impl Fn(&Config) + Send + Sync + 'static) {
        let f: Listener = std::sync::Arc::new(f);
        f(&self.get());
        match self.listeners.lock() {
            Ok(mut l) => l.push(f),
            Err(poisoned) => poisoned.into_inner().push(f),
        }
    }
}

/// A ConfigMap's data from key/value pairs (tests, here and in the crates using these types).
pub fn data(pairs: &[(&str, &str)]) -> ConfigData {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `config-autoscaler`'s name.
const AUTOSCALER_NAME: &str = "config-autoscaler";

/// The key Knative's ConfigMaps carry their commented example under; never read.
pub const EXAMPLE_KEY: &str = "_example";

impl Config {
    /// Parses one or more ConfigMap YAML documents (multi-document text, `kind: ConfigMap`,
    /// `metadata.name` one of config-defaults|config-autoscaler|config-network|config-domain|config-gc|
    /// config-features|config-observability|config-rouse; others -> error). Keys missing take Knative defaults; the `_example`
    /// key is ignored; an unknown key or invalid value -> ConfigError naming configmap+key+why.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_texts(&[text.to_string()])
    }

    /// Same, merging several texts (one per file) in order. A ConfigMap given twice takes the
    /// later one whole, as `kubectl apply` would.
    pub fn from_yaml_texts(texts: &[String]) -> Result<Config, ConfigError> {
        let mut maps: BTreeMap<String, ConfigData> = BTreeMap::new();
        for (t, text) in texts.iter().enumerate() {
            // Documents are numbered within their text (and texts, when there are several).
            let text_label = if texts.len() > 1 {
                format!("text {} ", t + 1)
            } else {
                String::new()
            };
            let docs = crate::decode::parse_documents(text).map_err(|e| {
                let (doc, reason) = match e {
                    crate::decode::DecodeError::Malformed { doc, reason } => (doc, reason),
                    other => (1, other.to_string()),
                };
                ConfigError::new(
                    &format!("{text_label}document {doc}"),
                    "yaml",
                    format!("malformed: {reason}"),
                )
            })?;
            for (d, value) in docs.iter().enumerate() {
                let label = format!("{text_label}document {}", d + 1);
                let (name, data) = configmap_of(&label, value)?;
                maps.insert(name, data);
            }
        }
        Self::from_maps(&maps)
    }

    /// The config from ConfigMaps' data by name (as a cluster's API server holds them); a
    /// ConfigMap not given takes Knative's defaults, a name Rouse does not read is refused.
    pub fn from_maps(maps: &BTreeMap<String, ConfigData>) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        for (name, data) in maps {
            match name.as_str() {
                defaults::NAME => cfg.defaults = defaults::DefaultsConfig::from_data(data)?,
                network::NAME => cfg.network = network::NetworkConfig::from_data(data)?,
                domain::NAME => cfg.domain = domain::DomainConfig::from_data(data)?,
                gc::NAME => cfg.gc = gc::GcConfig::from_data(data)?,
                features::NAME => cfg.features = features::FeaturesConfig::from_data(data)?,
                observability::NAME => {
                    cfg.observability = observability::ObservabilityConfig::from_data(data)?
                }
                rouse::NAME => cfg.rouse = rouse::RouseConfig::from_data(data)?,
                AUTOSCALER_NAME => cfg.autoscaler = parse_autoscaler(data)?,
                other => {
                    return Err(ConfigError::new(
                        other,
                        "metadata.name",
                        "not a ConfigMap Rouse reads",
                    ));
                }
            }
        }
        Ok(cfg)
    }
}

/// `config-autoscaler`'s parser lives with its type.
fn parse_autoscaler(data: &ConfigData) -> Result<autoscaler::AutoscalerConfig, ConfigError> {
    autoscaler::AutoscalerConfig::from_data(data)
}

/// Checks one YAML document is a ConfigMap Rouse reads; returns its name and string data.
fn configmap_of(doc: &str, v: &Yaml) -> Result<(String, ConfigData), ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| ConfigError::new(doc, "kind", "expected a ConfigMap object"))?;
    let field = |k: &str| map.get(k);
    let kind = field("kind").and_then(Yaml::as_str).unwrap_or("");
    if kind != "ConfigMap" {
        return Err(ConfigError::new(
            doc,
            "kind",
            format!("expected ConfigMap, got {kind:?}"),
        ));
    }
    let api_version = field("apiVersion").and_then(Yaml::as_str).unwrap_or("v1");
    if api_version != "v1" {
        return Err(ConfigError::new(
            doc,
            "apiVersion",
            format!("expected v1, got {api_version:?}"),
        ));
    }
    let name = field("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Yaml::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err(ConfigError::new(doc, "metadata.name", "missing"));
    }
    if !CONFIGMAP_NAMES.contains(&name) {
        return Err(ConfigError::new(
            name,
            "metadata.name",
            format!(
                "not a ConfigMap Rouse reads (expected one of {})",
                CONFIGMAP_NAMES.join(", ")
            ),
        ));
    }
    for k in map.keys() {
        let k = k.as_str();
        if !matches!(
            k,
            "apiVersion" | "kind" | "metadata" | "data" | "binaryData" | "immutable"
        ) {
            return Err(ConfigError::new(name, k, "unknown ConfigMap field"));
        }
    }
    if field("binaryData").is_some_and(|b| !b.is_null()) {
        return Err(ConfigError::new(
            name,
            "binaryData",
            "not read by Rouse; put the keys under data",
        ));
    }
    let mut data = ConfigData::new();
    if let Some(d) = field("data").filter(|d| !d.is_null()) {
        let d = d
            .as_object()
            .ok_or_else(|| ConfigError::new(name, "data", "expected a map of strings"))?;
        for (k, v) in d {
            let key = k.clone();
            let value = scalar_string(v)
                .ok_or_else(|| ConfigError::new(name, &key, "value must be a string (quote it)"))?;
            data.insert(key, value);
        }
    }
    Ok((name.to_string(), data))
}

/// A YAML scalar as the string Kubernetes would have stored (numbers and bools unquoted by
/// mistake are taken as written).
fn scalar_string(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Null => Some(String::new()),
        _ => None,
    }
}

// === Value parsing shared by the ConfigMap parsers ===

/// Refuses keys outside `known` (and ignores `_example`), suggesting a near miss.
pub(crate) fn check_keys(cm: &str, data: &ConfigData, known: &[&str]) -> Result<(), ConfigError> {
    for key in data.keys() {
        if key == EXAMPLE_KEY || known.contains(&key.as_str()) {
            continue;
        }
        let hint = known
            .iter()
            .filter(|k| edit_distance(k, key) <= 2)
            .min_by_key(|k| edit_distance(k, key))
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        return Err(ConfigError::new(cm, key, format!("unknown key{hint}")));
    }
    Ok(())
}

/// The value of `key`, unless absent (Knative treats a missing key as "use the default").
pub(crate) fn get<'a>(data: &'a ConfigData, key: &str) -> Option<&'a str> {
    data.get(key).map(|s| s.trim())
}

/// Go's `strconv.ParseBool`, as Knative's `cm.AsBool` uses it.
pub(crate) fn parse_bool(cm: &str, key: &str, raw: &str) -> Result<bool, ConfigError> {
    match raw {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ConfigError::new(
            cm,
            key,
            format!("invalid boolean {raw:?} (want true or false)"),
        )),
    }
}

/// A base-10 64-bit integer, as Knative's `cm.AsInt64` parses it.
pub(crate) fn parse_i64(cm: &str, key: &str, raw: &str) -> Result<i64, ConfigError> {
    raw.parse::<i64>()
        .map_err(|_| ConfigError::new(cm, key, format!("invalid integer {raw:?}")))
}

/// True when `s` is a Kubernetes resource quantity (`100m`, `1.5Gi`, `2e3`, `128974848`).
pub(crate) fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let digits = num.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || num.matches('.').count() > 1 {
        return false;
    }
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        exp => {
            let Some(rest) = exp.strip_prefix(['e', 'E']) else {
                return false;
            };
            let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on mistyped keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNATIVE_STYLE: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-defaults
  namespace: knative-serving
  labels:
    app.kubernetes.io/name: knative-serving
  annotations:
    knative.dev/example-checksum: "e7973912"
data:
  _example: |
    revision-timeout-seconds: "300"
  revision-timeout-seconds: "120"
  container-concurrency: 10
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-network
data:
  domain-template: "{{.Name}}-{{.Namespace}}.{{.Domain}}"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-features
data:
  kubernetes.podspec-affinity: "enabled"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-gc
data:
  max-non-active-revisions: "disabled"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
data:
  enable-scale-to-zero: "false"
"#;

    #[test]
    fn parses_multi_document_configmaps() {
        let c = Config::from_yaml(KNATIVE_STYLE).unwrap();
        assert_eq!(c.defaults.revision_timeout_seconds, 120);
        assert_eq!(c.defaults.container_concurrency, 10);
        assert_eq!(c.network.route_host("a", "b", "c"), "a-b.c");
        assert_eq!(
            c.features.get(features::PODSPEC_AFFINITY),
            features::Flag::Enabled
        );
        assert_eq!(c.gc.max_non_active_revisions, None);
        assert!(!c.autoscaler.enable_scale_to_zero);
    }

    #[test]
    fn empty_text_gives_knative_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("---\n---\n").unwrap(), Config::default());
    }

    #[test]
    fn later_texts_replace_earlier_configmaps() {
        let a = "kind: ConfigMap\nmetadata: {name: config-defaults}\ndata: {container-concurrency: \"5\"}\n";
        let b = "kind: ConfigMap\nmetadata: {name: config-defaults}\ndata: {revision-timeout-seconds: \"60\"}\n";
        let c = Config::from_yaml_texts(&[a.to_string(), b.to_string()]).unwrap();
        assert_eq!(c.defaults.revision_timeout_seconds, 60);
        assert_eq!(c.defaults.container_concurrency, 0);
    }

    #[test]
    fn document_level_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "kind: Service\nmetadata: {name: config-defaults}\n",
                "document 1: kind: expected ConfigMap, got \"Service\"",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: config-deployment}\n",
                "config-deployment: metadata.name: not a ConfigMap Rouse reads (expected one of config-defaults, config-autoscaler, config-network, config-domain, config-gc, config-features, config-observability, config-rouse)",
            ),
            (
                "kind: ConfigMap\nmetadata: {}\n",
                "document 1: metadata.name: missing",
            ),
            (
                "apiVersion: v2\nkind: ConfigMap\nmetadata: {name: config-gc}\n",
                "document 1: apiVersion: expected v1, got \"v2\"",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: config-gc}\ndata: {min-non-active-revisions: [1]}\n",
                "config-gc: min-non-active-revisions: value must be a string (quote it)",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: config-gc}\ndat: {}\n",
                "config-gc: dat: unknown ConfigMap field",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: config-gc}\ndata: {retain-since-create-time: \"1y\"}\n",
                "config-gc: retain-since-create-time: unknown unit \"y\" in duration \"1y\" (want a duration or disabled)",
            ),
        ];
        for (text, want) in cases {
            let err = Config::from_yaml(text).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        let err = Config::from_yaml("kind: [\n").unwrap_err();
        assert!(
            err.to_string().starts_with("document 1: yaml: malformed: "),
            "{err}"
        );
        let err = Config::from_yaml("just text").unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 1: kind: expected a ConfigMap object"
        );
        let texts = [
            "kind: ConfigMap\nmetadata: {name: config-gc}\n".to_string(),
            "---\nkind: Pod\n".to_string(),
        ];
        let err = Config::from_yaml_texts(&texts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "text 2 document 1: kind: expected ConfigMap, got \"Pod\""
        );
    }

    #[test]
    fn errors_from_a_second_document_name_the_configmap_and_key() {
        let text = "kind: ConfigMap\nmetadata: {name: config-gc}\n---\nkind: ConfigMap\nmetadata: {name: config-network}\ndata: {tag-template: \"{{.Tag}}\"}\n";
        let err = Config::from_yaml(text).unwrap_err();
        assert_eq!(err.configmap, "config-network");
        assert_eq!(err.key, "tag-template");
        assert_eq!(err.reason, "must contain {{.Name}}");
    }
}
