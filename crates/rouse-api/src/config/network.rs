//! `config-network`: the domain and tag templates the gateway's hosts are built from, plus the
//! Knative networking keys Rouse accepts (so a Knative file works) but does not act on yet.

use super::{ConfigData, ConfigError, check_keys, get, parse_bool};

/// The ConfigMap's name.
pub const NAME: &str = "config-network";

/// Knative's default `domain-template`.
pub const DEFAULT_DOMAIN_TEMPLATE: &str = "{{.Name}}.{{.Namespace}}.{{.Domain}}";
/// Knative's default `tag-template`.
pub const DEFAULT_TAG_TEMPLATE: &str = "{{.Tag}}-{{.Name}}";

/// Parsed `config-network`. The domain itself is not here: it is `rouse serve --domain`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Host template for a route, Go-template syntax: `{{.Name}}.{{.Namespace}}.{{.Domain}}`.
    pub domain_template: String,
    /// Name template for a tag: `{{.Tag}}-{{.Name}}`.
    pub tag_template: String,
    /// `rollout-duration` in seconds.
    pub rollout_duration_seconds: u64,
    /// `ingress-class` (accepted; Rouse's gateway is the only ingress).
    pub ingress_class: String,
    /// `certificate-class` (accepted; no TLS yet).
    pub certificate_class: String,
    /// `http-protocol`: `enabled`, `disabled` or `redirected` (lower-cased).
    pub http_protocol: String,
    /// `default-external-scheme` of route URLs.
    pub default_external_scheme: String,
    /// `external-domain-tls` (or its deprecated alias `auto-tls`).
    pub external_domain_tls: bool,
    /// `cluster-local-domain-tls`: `enabled` or `disabled`.
    pub cluster_local_domain_tls: String,
    /// `system-internal-tls`: `enabled` or `disabled`.
    pub system_internal_tls: String,
    /// `internal-encryption` (deprecated alias of `system-internal-tls`).
    pub internal_encryption: bool,
    /// `mesh-compatibility-mode`: `enabled`, `disabled` or `auto`.
    pub mesh_compatibility_mode: String,
    /// `enable-mesh-pod-addressability`.
    pub enable_mesh_pod_addressability: bool,
    /// `autocreate-cluster-domain-claims`.
    pub autocreate_cluster_domain_claims: bool,
    /// `namespace-wildcard-cert-selector`, as written (a label selector in YAML).
    pub namespace_wildcard_cert_selector: String,
    /// `cluster-domain` (accepted for older Knative files).
    pub cluster_domain: String,
    /// `allow-underscores-in-headers` (Rouse): pass request headers whose names contain `_`
    /// to apps. Off by default (nginx's `underscores_in_headers off`): CGI/WSGI apps would read
    /// `X_Forwarded_For` as `X-Forwarded-For`.
    pub allow_underscores_in_headers: bool,
    /// `trusted-proxies` (Rouse): address ranges (`10.0.0.0/8, ::1`) of proxies in front of
    /// the gateway whose `X-Forwarded-Proto` is kept; from anyone else the gateway sets it.
    pub trusted_proxies: Vec<String>,
    /// `request-body-min-rate` (Rouse): the least average rate, in bytes per second, an
    /// HTTP/1 request body must arrive at once its reader waited 10 s in all (slower: 408);
    /// 0 sets none. Default 512.
    pub request_body_min_rate: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            domain_template: DEFAULT_DOMAIN_TEMPLATE.to_string(),
            tag_template: DEFAULT_TAG_TEMPLATE.to_string(),
            rollout_duration_seconds: 0,
            ingress_class: "istio.ingress.networking.knative.dev".to_string(),
            certificate_class: "cert-manager.certificate.networking.knative.dev".to_string(),
            http_protocol: "enabled".to_string(),
            default_external_scheme: "http".to_string(),
            external_domain_tls: false,
            cluster_local_domain_tls: "disabled".to_string(),
            system_internal_tls: "disabled".to_string(),
            internal_encryption: false,
            mesh_compatibility_mode: "auto".to_string(),
            enable_mesh_pod_addressability: false,
            autocreate_cluster_domain_claims: false,
            namespace_wildcard_cert_selector: String::new(),
            cluster_domain: "cluster.local".to_string(),
            allow_underscores_in_headers: false,
            trusted_proxies: Vec::new(),
            request_body_min_rate: 512,
        }
    }
}

/// Every key Knative's networking config reads, current names and legacy camelCase ones.
const KEYS: &[&str] = &[
    "allow-underscores-in-headers",
    "autocreate-cluster-domain-claims",
    "autocreateClusterDomainClaims",
    "auto-tls",
    "autoTLS",
    "certificate-class",
    "certificate.class",
    "cluster-domain",
    "cluster-local-domain-tls",
    "default-external-scheme",
    "defaultExternalScheme",
    "domain-template",
    "domainTemplate",
    "enable-mesh-pod-addressability",
    "external-domain-tls",
    "http-protocol",
    "httpProtocol",
    "ingress-class",
    "ingress.class",
    "internal-encryption",
    "mesh-compatibility-mode",
    "namespace-wildcard-cert-selector",
    "request-body-min-rate",
    "rollout-duration",
    "rolloutDuration",
    "system-internal-tls",
    "tag-template",
    "tagTemplate",
    "trusted-proxies",
];

impl NetworkConfig {
    /// Parses `config-network`'s data: missing keys take Knative's defaults, unknown keys and
    /// invalid values are refused.
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        check_keys(NAME, d, KEYS)?;
        let mut c = Self::default();
        // Knative reads the legacy camelCase key first, then lets the current key override it.
        let pick = |key: &'static str, legacy: Option<&'static str>| {
            get(d, key)
                .map(|v| (key, v))
                .or_else(|| legacy.and_then(|l| get(d, l).map(|v| (l, v))))
        };
        if let Some((_, v)) = pick("ingress-class", Some("ingress.class")) {
            c.ingress_class = v.to_string();
        }
        if let Some((_, v)) = pick("certificate-class", Some("certificate.class")) {
            c.certificate_class = v.to_string();
        }
        if let Some((k, v)) = pick("domain-template", Some("domainTemplate")) {
            check_domain_template(v).map_err(|why| ConfigError::new(NAME, k, why))?;
            c.domain_template = v.to_string();
        }
        if let Some((k, v)) = pick("tag-template", Some("tagTemplate")) {
            check_tag_template(v).map_err(|why| ConfigError::new(NAME, k, why))?;
            c.tag_template = v.to_string();
        }
        if let Some((k, v)) = pick("rollout-duration", Some("rolloutDuration")) {
            let n: i64 = v.parse().map_err(|_| {
                ConfigError::new(NAME, k, format!("invalid integer {v:?} (seconds)"))
            })?;
            if n < 0 {
                return Err(ConfigError::new(
                    NAME,
                    k,
                    format!("must be a non-negative integer, but was {n}"),
                ));
            }
            c.rollout_duration_seconds = n as u64;
        }
        if let Some((k, v)) = pick(
            "autocreate-cluster-domain-claims",
            Some("autocreateClusterDomainClaims"),
        ) {
            c.autocreate_cluster_domain_claims = parse_bool(NAME, k, v)?;
        }
        if let Some((k, v)) = pick("enable-mesh-pod-addressability", None) {
            c.enable_mesh_pod_addressability = parse_bool(NAME, k, v)?;
        }
        if let Some((_, v)) = pick("default-external-scheme", Some("defaultExternalScheme")) {
            c.default_external_scheme = v.to_string();
        }
        if let Some((k, v)) = pick("internal-encryption", None) {
            c.internal_encryption = parse_bool(NAME, k, v)?;
        }
        if let Some((k, v)) = pick("mesh-compatibility-mode", None) {
            c.mesh_compatibility_mode = one_of(k, v, &["enabled", "disabled", "auto"])?;
        }
        if let Some((_, v)) = pick("namespace-wildcard-cert-selector", None) {
            if !v.is_empty() {
                let ok = crate::decode::parse_documents(v)
                    .is_ok_and(|d| d.is_empty() || (d.len() == 1 && d[0].is_object()));
                if !ok {
                    return Err(ConfigError::new(
                        NAME,
                        "namespace-wildcard-cert-selector",
                        "expected a label selector (YAML map)",
                    ));
                }
            }
            c.namespace_wildcard_cert_selector = v.to_string();
        }
        let auto_tls = match pick("auto-tls", Some("autoTLS")) {
            Some((k, v)) => Some(tls_switch(k, v)?),
            None => None,
        };
        c.external_domain_tls = match pick("external-domain-tls", None) {
            Some((k, v)) => tls_switch(k, v)?,
            None => auto_tls.unwrap_or(false),
        };
        if let Some((k, v)) = pick("http-protocol", Some("httpProtocol")) {
            c.http_protocol = one_of(k, v, &["enabled", "disabled", "redirected"])?;
        }
        if let Some((k, v)) = pick("system-internal-tls", None) {
            c.system_internal_tls = one_of(k, v, &["enabled", "disabled"])?;
        }
        if c.internal_encryption {
            c.system_internal_tls = "enabled".to_string();
        }
        if c.system_internal_tls == "enabled" {
            c.internal_encryption = true;
        }
        if let Some((k, v)) = pick("cluster-local-domain-tls", None) {
            c.cluster_local_domain_tls = one_of(k, v, &["enabled", "disabled"])?;
        }
        if let Some((_, v)) = pick("cluster-domain", None) {
            c.cluster_domain = v.to_string();
        }
        if let Some((k, v)) = pick("allow-underscores-in-headers", None) {
            c.allow_underscores_in_headers = parse_bool(NAME, k, v)?;
        }
        if let Some((k, v)) = pick("request-body-min-rate", None) {
            c.request_body_min_rate = v.parse().map_err(|_| {
                ConfigError::new(
                    NAME,
                    k,
                    format!("invalid rate {v:?}: want bytes per second"),
                )
            })?;
        }
        if let Some((k, v)) = pick("trusted-proxies", None) {
            c.trusted_proxies = parse_ranges(v).map_err(|why| ConfigError::new(NAME, k, why))?;
        }
        Ok(c)
    }

    /// Host of a route: applies domain-template with Name, Namespace, Domain.
    pub fn route_host(&self, name: &str, namespace: &str, domain: &str) -> String {
        render(
            &self.domain_template,
            &[("Name", name), ("Namespace", namespace), ("Domain", domain)],
        )
    }

    /// Host of a tag: applies tag-template to get the name, then domain-template.
    pub fn tag_host(&self, tag: &str, name: &str, namespace: &str, domain: &str) -> String {
        self.route_host(&self.traffic_name(tag, name), namespace, domain)
    }

    /// The name of a route's traffic name before any domain: the route's own for the
    /// default (`tag` empty), else tag-template's (`{tag}-{route}`). Its cluster-local
    /// Service is named so.
    pub fn traffic_name(&self, tag: &str, name: &str) -> String {
        if tag.is_empty() {
            return name.to_string();
        }
        render(&self.tag_template, &[("Tag", tag), ("Name", name)])
    }

    /// The cluster-local host of `name` (a route or a tag's [`NetworkConfig::traffic_name`]):
    /// `{name}.{namespace}.svc.{cluster-domain}`, whatever domain-template says (Knative's).
    pub fn cluster_local_host(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.cluster_domain)
    }
}

/// A case-insensitive choice among `allowed`, returned lower-cased.
fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<String, ConfigError> {
    let lower = v.to_ascii_lowercase();
    if allowed.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(ConfigError::new(
            NAME,
            key,
            format!(
                "{v:?} is not supported (want one of {})",
                allowed.join(", ")
            ),
        ))
    }
}

/// `Enabled`/`Disabled` (Knative's spelling) or a boolean.
fn tls_switch(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "enabled" | "true" => Ok(true),
        "disabled" | "false" => Ok(false),
        _ => Err(ConfigError::new(
            NAME,
            key,
            format!("{v:?} is not supported (want Enabled or Disabled)"),
        )),
    }
}

// === A tiny Go-template subset: literal text and `{{.Field}}` actions ===

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
}

/// Parses `{{.Field}}` actions (with optional spaces and `-` trim markers), refusing any other
/// action or a field outside `fields`.
pub(crate) fn parse_template<'a>(t: &'a str, fields: &[&str]) -> Result<Vec<Piece<'a>>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action in template {t:?}"))?;
        let raw = &after[..end];
        let action = raw.strip_prefix('-').unwrap_or(raw);
        let action = action.strip_suffix('-').unwrap_or(action).trim();
        match action.strip_prefix('.') {
            Some(f) if fields.contains(&f) => out.push(Piece::Field(f)),
            _ => {
                let want: Vec<String> = fields.iter().map(|f| format!("{{{{.{f}}}}}")).collect();
                return Err(format!(
                    "unsupported template action {{{{{raw}}}}} (Rouse supports {})",
                    want.join(", ")
                ));
            }
        }
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Renders a template, tolerating anything `parse_template` would refuse (unknown actions
/// render empty) so hosts can be built from a config that was checked at load.
pub(crate) fn render(t: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let raw = &after[..end];
        let action = raw.strip_prefix('-').unwrap_or(raw);
        let action = action.strip_suffix('-').unwrap_or(action).trim();
        if let Some(f) = action.strip_prefix('.')
            && let Some((_, v)) = values.iter().find(|(k, _)| *k == f)
        {
            out.push_str(v);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Knative renders the domain template with sample values and wants a bare host; Rouse also
/// wants `{{.Name}}` in it, or every route would share one host.
fn check_domain_template(t: &str) -> Result<(), String> {
    let pieces = parse_template(t, &["Name", "Namespace", "Domain"])?;
    if !pieces.contains(&Piece::Field("Name")) {
        return Err("must contain {{.Name}}".to_string());
    }
    let host = render(
        t,
        &[("Name", "foo"), ("Namespace", "bar"), ("Domain", "baz.com")],
    );
    if host.is_empty() || host.contains(['/', '?', '#', ' ', '\t', '\n']) {
        return Err(format!(
            "renders to {host:?}, which is not a host name (no path, query or spaces)"
        ));
    }
    Ok(())
}

/// The tag template must name both the tag and the route, or tag hosts would collide.
fn check_tag_template(t: &str) -> Result<(), String> {
    let pieces = parse_template(t, &["Tag", "Name"])?;
    for f in ["Tag", "Name"] {
        if !pieces.contains(&Piece::Field(f)) {
            return Err(format!("must contain {{{{.{f}}}}}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn defaults_build_knative_hosts() {
        let c = NetworkConfig::from_data(&data(&[])).unwrap();
        assert_eq!(c, NetworkConfig::default());
        assert_eq!(
            c.route_host("hello", "default", "localhost"),
            "hello.default.localhost"
        );
        assert_eq!(
            c.tag_host("v2", "hello", "default", "localhost"),
            "v2-hello.default.localhost"
        );
    }

    #[test]
    fn custom_templates_apply() {
        let c = NetworkConfig::from_data(&data(&[
            ("domain-template", "{{ .Name }}-{{.Namespace}}.{{.Domain}}"),
            ("tag-template", "{{.Name}}--{{.Tag}}"),
        ]))
        .unwrap();
        assert_eq!(c.route_host("a", "ns", "example.com"), "a-ns.example.com");
        assert_eq!(
            c.tag_host("t", "a", "ns", "example.com"),
            "a--t-ns.example.com"
        );
    }

    #[test]
    fn legacy_keys_are_read_and_current_keys_win() {
        let c = NetworkConfig::from_data(&data(&[
            ("domainTemplate", "{{.Name}}.{{.Domain}}"),
            ("rolloutDuration", "30"),
            ("rollout-duration", "60"),
        ]))
        .unwrap();
        assert_eq!(c.route_host("a", "ns", "d"), "a.d");
        assert_eq!(c.rollout_duration_seconds, 60);
    }

    #[test]
    fn knative_example_keys_are_accepted() {
        let c = NetworkConfig::from_data(&data(&[
            ("ingress-class", "kourier.ingress.networking.knative.dev"),
            ("certificate-class", "x"),
            ("namespace-wildcard-cert-selector", ""),
            ("auto-tls", "Disabled"),
            ("external-domain-tls", "Enabled"),
            ("cluster-local-domain-tls", "Disabled"),
            ("internal-encryption", "false"),
            ("system-internal-tls", "Disabled"),
            ("http-protocol", "Redirected"),
            ("autocreate-cluster-domain-claims", "false"),
            ("enable-mesh-pod-addressability", "false"),
            ("mesh-compatibility-mode", "auto"),
            ("default-external-scheme", "https"),
            ("_example", "anything: at all"),
        ]))
        .unwrap();
        assert!(c.external_domain_tls);
        assert_eq!(c.http_protocol, "redirected");
        assert_eq!(c.default_external_scheme, "https");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "domain-template",
                "{{.Namespace}}.{{.Domain}}",
                "config-network: domain-template: must contain {{.Name}}",
            ),
            (
                "domain-template",
                "{{.Name}}.{{.Domain}}/path",
                "config-network: domain-template: renders to \"foo.baz.com/path\", which is not a host name (no path, query or spaces)",
            ),
            (
                "domain-template",
                "{{.Name}}.{{index .Annotations \"x\"}}",
                "config-network: domain-template: unsupported template action {{index .Annotations \"x\"}} (Rouse supports {{.Name}}, {{.Namespace}}, {{.Domain}})",
            ),
            (
                "domain-template",
                "{{.Name",
                "config-network: domain-template: unclosed action in template \"{{.Name\"",
            ),
            (
                "tag-template",
                "{{.Name}}",
                "config-network: tag-template: must contain {{.Tag}}",
            ),
            (
                "tag-template",
                "{{.Tag}}",
                "config-network: tag-template: must contain {{.Name}}",
            ),
            (
                "rollout-duration",
                "-5",
                "config-network: rollout-duration: must be a non-negative integer, but was -5",
            ),
            (
                "rollout-duration",
                "5m",
                "config-network: rollout-duration: invalid integer \"5m\" (seconds)",
            ),
            (
                "http-protocol",
                "sometimes",
                "config-network: http-protocol: \"sometimes\" is not supported (want one of enabled, disabled, redirected)",
            ),
            (
                "enable-mesh-pod-addressability",
                "yes",
                "config-network: enable-mesh-pod-addressability: invalid boolean \"yes\" (want true or false)",
            ),
            (
                "domain-templat",
                "x",
                "config-network: domain-templat: unknown key (did you mean \"domain-template\"?)",
            ),
        ];
        for (k, v, want) in cases {
            let err = NetworkConfig::from_data(&data(&[(k, v)])).unwrap_err();
            assert_eq!(err.to_string(), *want, "{k}={v}");
        }
    }
}

/// A comma- or space-separated list of IP addresses, each optionally with `/prefix-length`.
fn parse_ranges(v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in v
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let bad = || {
            format!(
                "invalid address range {item:?}: want an IP address, optionally with /prefix-length"
            )
        };
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (item, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix.is_some_and(|p| p > max) {
            return Err(bad());
        }
        out.push(item.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod data_path_keys_tests {
    use super::*;

    #[test]
    fn header_keys_parse_and_bad_ranges_are_refused() {
        let mut d = ConfigData::new();
        d.insert("allow-underscores-in-headers".into(), "true".into());
        d.insert("trusted-proxies".into(), "10.0.0.0/8, ::1".into());
        d.insert("request-body-min-rate".into(), "0".into());
        let c = NetworkConfig::from_data(&d).unwrap();
        assert_eq!(c.request_body_min_rate, 0);
        assert_eq!(NetworkConfig::default().request_body_min_rate, 512);
        assert!(c.allow_underscores_in_headers);
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8", "::1"]);
        let mut d = ConfigData::new();
        d.insert("trusted-proxies".into(), "10.0.0.0/40".into());
        let e = NetworkConfig::from_data(&d).unwrap_err();
        assert!(e.to_string().contains("trusted-proxies"), "{e}");
    }
}
