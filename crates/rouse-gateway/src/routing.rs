//! The routing table: which revisions serve which host, and in what shares.

use std::collections::HashMap;

use http::header::{HeaderName, HeaderValue};

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
    /// Tag-header-based routing (`config-features`): per host, the targets of each tag a
    /// request may name in `Knative-Serving-Tag`; a request naming no known tag takes the
    /// host's own targets.
    tags: HashMap<String, HashMap<String, Vec<RouteTarget>>>,
    /// Hosts of routes that exist but have no traffic yet, with why (answered 503, not 404).
    unavailable: HashMap<String, String>,
    /// Headers set on requests on their way (a Kubernetes Ingress path's `appendHeaders`):
    /// per host, per tag a request was routed by ("" for the host's own targets). Most
    /// tables have none.
    appended: HashMap<String, HashMap<String, Vec<SetHeader>>>,
    /// Hosts served as another host (a DomainMapping's domain → its target's host): looked up
    /// as that host, and forwarded with the Host header rewritten to it.
    aliases: HashMap<String, String>,
}

/// A header set on requests on their way to a revision.
pub type SetHeader = (HeaderName, HeaderValue);

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
        lookup(&self.hosts, host).map(Vec::as_slice)
    }

    /// Requests for `host` (normalized) carrying `Knative-Serving-Tag: tag` go to `targets`
    /// instead of the host's own (tag-header-based routing).
    pub fn insert_tag(&mut self, host: String, tag: String, targets: Vec<RouteTarget>) {
        self.tags
            .entry(normalize_host(&host))
            .or_default()
            .insert(tag, targets);
    }

    /// Whether requests for `host` are routed by their `Knative-Serving-Tag` header.
    pub fn routes_by_tag(&self, host: &str) -> bool {
        lookup(&self.tags, host).is_some()
    }

    /// The targets of a request for `host` naming `tag` in `Knative-Serving-Tag`: the tag's,
    /// or `None` when the host has no such tag (the request takes the host's own targets).
    pub fn get_tagged(&self, host: &str, tag: &str) -> Option<&[RouteTarget]> {
        lookup(&self.tags, host)
            .and_then(|tags| tags.get(tag))
            .map(Vec::as_slice)
    }

    /// Sets `headers` on requests for `host` (normalized) that take the targets of `tag`
    /// (`""`: the host's own), replacing what was set for them; see [`RoutingTable::appended`].
    pub fn insert_appended(&mut self, host: String, tag: String, headers: Vec<SetHeader>) {
        if !headers.is_empty() {
            self.appended
                .entry(normalize_host(&host))
                .or_default()
                .insert(tag, headers);
        }
    }

    /// Whether requests for `host` get headers set.
    pub fn appends_headers(&self, host: &str) -> bool {
        !self.appended.is_empty() && lookup(&self.appended, host).is_some()
    }

    /// The headers to set on a request for `host` that took the targets of `tag` (`None`:
    /// the host's own).
    pub fn appended(&self, host: &str, tag: Option<&str>) -> &[SetHeader] {
        if self.appended.is_empty() {
            return &[];
        }
        lookup(&self.appended, host)
            .and_then(|tags| tags.get(tag.unwrap_or("")))
            .map_or(&[], Vec::as_slice)
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

    /// Serves `host` (normalized) as `target` (normalized): requests for it take `target`'s
    /// traffic and reach the app with `Host: target`. A routed host wins over an alias.
    pub fn insert_alias(&mut self, host: String, target: String) {
        self.aliases
            .insert(normalize_host(&host), normalize_host(&target));
    }

    /// The host `host` is served as, if it is an alias (a mapped domain).
    pub fn alias(&self, host: &str) -> Option<&str> {
        if self.aliases.is_empty() {
            return None;
        }
        self.aliases.get(&normalize_host(host)).map(String::as_str)
    }

    /// The host to look `host` up as, and the Host to send when that is another (a mapped
    /// domain's target). A route's own host, served or not, always wins over a mapping of the
    /// same name, so no mapping can take a route's traffic.
    pub fn serving_host<'a>(&'a self, host: &'a str) -> (&'a str, Option<&'a str>) {
        if self.aliases.is_empty() || self.get(host).is_some() || self.unavailable(host).is_some() {
            return (host, None);
        }
        match self.alias(host) {
            Some(target) => (target, Some(target)),
            None => (host, None),
        }
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

/// `host`'s entry in a map keyed by normalized hosts.
fn lookup<'a, T>(map: &'a HashMap<String, T>, host: &str) -> Option<&'a T> {
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| !b.is_ascii_uppercase() && !b.is_ascii_whitespace() && b != b':')
        && !host.ends_with('.');
    if plain {
        // Already normalized (the common case): no allocation.
        return map.get(host);
    }
    map.get(&normalize_host(host))
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
        assert_eq!(table.alias("app.example.com"), None);
        table.insert_alias("App.Example.com".into(), "Hello.default.localhost".into());
        assert_eq!(
            table.alias("app.example.COM:8080"),
            Some("hello.default.localhost")
        );
        assert_eq!(
            table.serving_host("App.example.com"),
            ("hello.default.localhost", Some("hello.default.localhost"))
        );
        // A route's host is never taken over by a mapping of the same name.
        table.insert_alias(
            "hello.default.localhost".into(),
            "b.default.localhost".into(),
        );
        table.insert_alias(
            "other.default.localhost".into(),
            "b.default.localhost".into(),
        );
        assert_eq!(
            table.serving_host("hello.default.localhost"),
            ("hello.default.localhost", None)
        );
        assert_eq!(
            table.serving_host("other.default.localhost"),
            ("other.default.localhost", None)
        );
    }

    #[test]
    fn a_tag_names_its_own_targets_on_the_host() {
        let mut table = RoutingTable::new();
        table.insert("svc.default.localhost".into(), vec![t("two", 100)]);
        assert!(!table.routes_by_tag("svc.default.localhost"));
        table.insert_tag(
            "Svc.Default.localhost".into(),
            "rev1".into(),
            vec![t("one", 100)],
        );
        assert!(table.routes_by_tag("svc.default.localhost:80"));
        assert_eq!(
            table.get_tagged("svc.default.localhost", "rev1").unwrap()[0].revision,
            "one"
        );
        // Tags match exactly; an unknown tag or another host has none.
        assert!(table.get_tagged("svc.default.localhost", "REV1").is_none());
        assert!(table.get_tagged("svc.default.localhost", "rev2").is_none());
        assert!(
            table
                .get_tagged("other.default.localhost", "rev1")
                .is_none()
        );
    }

    #[test]
    fn appended_headers_follow_the_targets_a_request_took() {
        let set = |v: &'static str| {
            vec![(
                HeaderName::from_static("knative-serving-tag"),
                HeaderValue::from_static(v),
            )]
        };
        let mut table = RoutingTable::new();
        assert!(!table.appends_headers("h.example.com"));
        table.insert_appended("H.example.com:80".into(), String::new(), set("default"));
        table.insert_appended("h.example.com".into(), "blue".into(), set("blue"));
        table.insert_appended("empty.example.com".into(), String::new(), Vec::new());
        assert!(table.appends_headers("h.example.com"));
        assert!(!table.appends_headers("empty.example.com"));
        assert_eq!(table.appended("h.example.com", None)[0].1, "default");
        assert_eq!(
            table.appended("h.example.com:8080", Some("blue"))[0].1,
            "blue"
        );
        assert!(table.appended("h.example.com", Some("green")).is_empty());
        assert!(table.appended("other.example.com", None).is_empty());
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
