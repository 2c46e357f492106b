//! The routing table: which revisions serve which host, and in what shares.

use std::collections::HashMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// One revision a host's traffic goes to, and its share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision.
    pub revision: String,
    /// Its share of the host's requests, in percent (0 gets none).
    pub percent: u32,
}

/// Host → weighted revisions. Hosts are matched lowercase and without a port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingTable {
    hosts: HashMap<String, Vec<RouteTarget>>,
    /// Hosts of routes that exist but have no traffic yet, with why (answered 503, not 404).
    unavailable: HashMap<String, String>,
    /// Hosts whose requests are routed by header too, or get headers set (Kubernetes
    /// Ingresses); most tables have none, and their requests skip the lookup.
    extras: HashMap<String, HostExtras>,
}

/// A header set on requests on their way to a revision.
pub type SetHeader = (HeaderName, HeaderValue);

/// What a host's requests get besides its weighted targets: header rules tried first, and
/// headers set on the way (an Ingress path's `appendHeaders`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostExtras {
    /// Tried in order; the first whose headers all match takes the request.
    pub rules: Vec<HeaderRule>,
    /// Set on requests that match no rule.
    pub append: Vec<SetHeader>,
}

/// Requests carrying these exact header values go to these targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRule {
    /// Every header must be present with exactly this value.
    pub matches: Vec<SetHeader>,
    /// Where matching requests go.
    pub targets: Vec<RouteTarget>,
    /// Set on matching requests.
    pub append: Vec<SetHeader>,
}

impl HostExtras {
    /// The targets and headers to set for a request with `headers`, `default` when no rule
    /// matches.
    pub fn select<'a>(
        &'a self,
        headers: &HeaderMap,
        default: &'a [RouteTarget],
    ) -> (&'a [RouteTarget], &'a [SetHeader]) {
        self.rules
            .iter()
            .find(|r| {
                r.matches
                    .iter()
                    .all(|(name, value)| headers.get(name) == Some(value))
            })
            .map_or((default, self.append.as_slice()), |r| {
                (r.targets.as_slice(), r.append.as_slice())
            })
    }
}

impl RoutingTable {
    /// An empty table (every host unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `host` (normalized: lowercase, port dropped) to `targets`, replacing any
    /// earlier entry for it.
    pub fn insert(&mut self, host: String, targets: Vec<RouteTarget>) {
        self.hosts.insert(normalize_host(&host), targets);
    }

    /// The targets of `host` (normalized as by [`RoutingTable::insert`]).
    pub fn get(&self, host: &str) -> Option<&[RouteTarget]> {
        let plain = !host.is_empty()
            && host
                .bytes()
                .all(|b| !b.is_ascii_uppercase() && !b.is_ascii_whitespace() && b != b':')
            && !host.ends_with('.');
        if plain {
            // Already normalized (the common case): no allocation.
            return self.hosts.get(host).map(Vec::as_slice);
        }
        self.hosts.get(&normalize_host(host)).map(Vec::as_slice)
    }

    /// Marks `host` (normalized) as a route that exists but cannot serve yet: requests for it
    /// get 503 with `why` instead of the 404 for unknown hosts. A routed host wins.
    pub fn insert_unavailable(&mut self, host: String, why: String) {
        self.unavailable.insert(normalize_host(&host), why);
    }

    /// Why `host` cannot serve, if it is a known route without traffic.
    pub fn unavailable(&self, host: &str) -> Option<&str> {
        self.unavailable
            .get(&normalize_host(host))
            .map(String::as_str)
    }

    /// Gives `host` (normalized) header rules and headers to set; see [`HostExtras`].
    pub fn set_extras(&mut self, host: String, extras: HostExtras) {
        if extras != HostExtras::default() {
            self.extras.insert(normalize_host(&host), extras);
        }
    }

    /// The header rules and headers to set of `host`, if it has any.
    pub fn extras(&self, host: &str) -> Option<&HostExtras> {
        if self.extras.is_empty() {
            return None;
        }
        self.extras.get(&normalize_host(host))
    }

    /// The hosts routed, in no particular order.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// How many hosts are routed.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host is routed.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Lowercases a Host value and drops its port and any trailing dot
/// (`Hello.Default.Example.com:8080` → `hello.default.example.com`; `[::1]:80` → `[::1]`).
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// Picks a target by weight, given a number in `0..sum of percents`.
pub(crate) fn pick(targets: &[RouteTarget], mut roll: u64) -> Option<&RouteTarget> {
    targets.iter().find(|t| {
        let p = u64::from(t.percent);
        if roll < p {
            true
        } else {
            roll -= p;
            false
        }
    })
}

/// The sum of the targets' percents.
pub(crate) fn total(targets: &[RouteTarget]) -> u64 {
    targets.iter().map(|t| u64::from(t.percent)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rev: &str, percent: u32) -> RouteTarget {
        RouteTarget {
            namespace: "default".into(),
            revision: rev.into(),
            percent,
        }
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Hello.Default.Example.COM:8080"),
            "hello.default.example.com"
        );
        assert_eq!(
            normalize_host("hello.default.localhost."),
            "hello.default.localhost"
        );
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com:"), "example.com");
        let mut table = RoutingTable::new();
        table.insert("Hello.Default.localhost:80".into(), vec![t("a", 100)]);
        assert_eq!(
            table.get("hello.default.LOCALHOST:9999").unwrap()[0].revision,
            "a"
        );
        assert!(table.get("other.default.localhost").is_none());
        assert_eq!(table.unavailable("other.default.localhost"), None);
        table.insert_unavailable("Other.default.localhost".into(), "not ready".into());
        assert_eq!(
            table.unavailable("other.default.localhost:8080"),
            Some("not ready")
        );
    }

    #[test]
    fn header_rules_pick_targets_and_headers() {
        let set = |n: &'static str, v: &'static str| {
            (HeaderName::from_static(n), HeaderValue::from_static(v))
        };
        let mut table = RoutingTable::new();
        let default = vec![t("a", 100)];
        table.insert("h.example.com".into(), default.clone());
        assert!(table.extras("h.example.com").is_none());
        table.set_extras(
            "H.example.com:80".into(),
            HostExtras {
                rules: vec![HeaderRule {
                    matches: vec![set("knative-serving-tag", "blue")],
                    targets: vec![t("b", 100)],
                    append: vec![set("knative-serving-tag", "blue")],
                }],
                append: vec![set("knative-serving-default-route", "true")],
            },
        );
        let extras = table.extras("h.example.com").expect("extras kept");
        let mut headers = HeaderMap::new();
        let (targets, append) = extras.select(&headers, &default);
        assert_eq!(targets[0].revision, "a");
        assert_eq!(append[0].0, "knative-serving-default-route");
        headers.insert("knative-serving-tag", HeaderValue::from_static("green"));
        assert_eq!(extras.select(&headers, &default).0[0].revision, "a");
        headers.insert("knative-serving-tag", HeaderValue::from_static("blue"));
        let (targets, append) = extras.select(&headers, &default);
        assert_eq!(targets[0].revision, "b");
        assert_eq!(append[0].1, "blue");
        assert!(table.extras("other.example.com").is_none());
    }

    #[test]
    fn weighted_pick_covers_each_share_exactly() {
        let targets = [t("a", 20), t("zero", 0), t("b", 80)];
        assert_eq!(total(&targets), 100);
        let picks: Vec<&str> = (0..100)
            .map(|r| pick(&targets, r).unwrap().revision.as_str())
            .collect();
        assert_eq!(picks.iter().filter(|r| **r == "a").count(), 20);
        assert_eq!(picks.iter().filter(|r| **r == "b").count(), 80);
        assert!(pick(&targets, 100).is_none());
    }
}
