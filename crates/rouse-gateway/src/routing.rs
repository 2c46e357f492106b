//! The routing table: which revisions serve which host, and in what shares.
//!
//! Most hosts route on their Host alone (looked up without allocating, so the fast path
//! stays cheap). A host with path rules or header matches (a Kubernetes Ingress's
//! `http.paths`) has an ordered list of [`PathRule`]s instead, tried in turn; a host whose
//! plain-HTTP requests are redirected to HTTPS is marked so, and a host only callers inside
//! the cluster may reach (a `ClusterLocal` Ingress rule's) is marked cluster-local: a
//! listener of [`Visibility::External`] answers it as unknown.

use foldhash::HashMap;

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
    /// Hosts routed by path and headers: their rules, in the order they are tried.
    rules: HashMap<String, Vec<PathRule>>,
    /// Hosts whose plain-HTTP requests are answered with a redirect to HTTPS.
    redirected: HashMap<String, ()>,
    /// Hosts served only on cluster-local listeners ([`Visibility::ClusterLocal`]).
    cluster_local: HashMap<String, ()>,
    /// Hosts the fast path (which sees neither headers nor TLS) must leave to the general
    /// path: routed by tag, setting headers, or redirected.
    general: HashMap<String, ()>,
}

/// One of a host's path rules (a Kubernetes Ingress path): a request whose path starts with
/// `prefix` and that carries every header of `headers` with exactly that value takes
/// `targets`, with `appended` set on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// The path prefix (`""` and `"/"` match every path).
    pub prefix: String,
    /// Headers the request must carry, each with exactly this value (its first, if repeated).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the matching requests go.
    pub targets: Vec<RouteTarget>,
    /// Headers set on them on their way.
    pub appended: Vec<SetHeader>,
    /// Headers set on the requests each target takes (by index into `targets`; shorter, or
    /// empty: none), after `appended` (an Ingress split's own `appendHeaders`).
    pub target_appended: Vec<Vec<SetHeader>>,
}

impl PathRule {
    /// Whether a request for `path` with `headers` takes this rule. The prefix is a plain
    /// string prefix, as Knative's ingresses (Envoy's prefix match) apply it.
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        path.starts_with(self.prefix.as_str())
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get(name) == Some(value))
    }
}

/// A header set on requests on their way to a revision.
pub type SetHeader = (HeaderName, HeaderValue);

/// Who a listener is for, as Knative's two gateways: the external one (behind the load
/// balancer) serves only the hosts of `ExternalIP` rules; the cluster-local one serves those
/// and the hosts of `ClusterLocal` rules (in-cluster callers may call a public host too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Reached from outside the cluster: cluster-local hosts are unknown here.
    External,
    /// Reached from inside the cluster (or one machine): every host.
    ClusterLocal,
}

impl Visibility {
    /// Whether a listener of this visibility serves `host`. Allocation-free for a
    /// normalized host.
    pub fn serves(self, table: &RoutingTable, host: &str) -> bool {
        self == Visibility::ClusterLocal || !table.is_cluster_local(host)
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
        lookup(&self.hosts, host).map(Vec::as_slice)
    }

    /// Requests for `host` (normalized) carrying `Knative-Serving-Tag: tag` go to `targets`
    /// instead of the host's own (tag-header-based routing).
    pub fn insert_tag(&mut self, host: String, tag: String, targets: Vec<RouteTarget>) {
        let host = normalize_host(&host);
        self.general.insert(host.clone(), ());
        self.tags.entry(host).or_default().insert(tag, targets);
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
            let host = normalize_host(&host);
            self.general.insert(host.clone(), ());
            self.appended.entry(host).or_default().insert(tag, headers);
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
        if self.aliases.is_empty()
            || self.get(host).is_some()
            || self.rules(host).is_some()
            || self.unavailable(host).is_some()
        {
            return (host, None);
        }
        match self.alias(host) {
            Some(target) => (target, Some(target)),
            None => (host, None),
        }
    }

    /// Routes `host` (normalized) by `rules`, replacing any earlier ones. They are tried with
    /// those matching headers first, then the longest prefix first, else in the order given
    /// (as Knative's Routes write them: tag-header paths before the default one).
    pub fn insert_rules(&mut self, host: String, mut rules: Vec<PathRule>) {
        rules.sort_by_key(|r| (r.headers.is_empty(), std::cmp::Reverse(r.prefix.len())));
        let host = normalize_host(&host);
        self.general.insert(host.clone(), ());
        self.rules.insert(host, rules);
    }

    /// The path rules of `host`, if it is routed by path and headers.
    pub fn rules(&self, host: &str) -> Option<&[PathRule]> {
        if self.rules.is_empty() {
            return None;
        }
        lookup(&self.rules, host).map(Vec::as_slice)
    }

    /// Answers plain-HTTP requests for `host` (normalized) with a redirect to HTTPS (an
    /// Ingress's `httpOption: Redirected`); over TLS it is served as routed.
    pub fn insert_redirect(&mut self, host: String) {
        let host = normalize_host(&host);
        self.general.insert(host.clone(), ());
        self.redirected.insert(host, ());
    }

    /// Whether plain-HTTP requests for `host` are redirected to HTTPS.
    pub fn redirects(&self, host: &str) -> bool {
        !self.redirected.is_empty() && lookup(&self.redirected, host).is_some()
    }

    /// Marks `host` (normalized) as cluster-local: only listeners of
    /// [`Visibility::ClusterLocal`] serve it, whatever it is routed by.
    pub fn insert_cluster_local(&mut self, host: String) {
        self.cluster_local.insert(normalize_host(&host), ());
    }

    /// Whether `host` is served only on cluster-local listeners. Allocation-free for a
    /// normalized host.
    pub fn is_cluster_local(&self, host: &str) -> bool {
        !self.cluster_local.is_empty() && lookup(&self.cluster_local, host).is_some()
    }

    /// Whether requests for `host` need the general path: it sees their headers (tags,
    /// header matches), sets headers, or redirects. Allocation-free for a normalized host.
    pub fn needs_general(&self, host: &str) -> bool {
        !self.general.is_empty() && lookup(&self.general, host).is_some()
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

/// The bytes [`normalize_host`] may change or drop: uppercase letters, blanks and `:`.
static NOT_NORMALIZED: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_uppercase() || b.is_ascii_whitespace() || b == b':';
        i += 1;
    }
    table
};

/// `host`'s entry in a map keyed by normalized hosts.
fn lookup<'a, T>(map: &'a HashMap<String, T>, host: &str) -> Option<&'a T> {
    // One table look a byte: this runs for every request.
    let plain = !host.is_empty()
        && !host.bytes().any(|b| NOT_NORMALIZED[usize::from(b)])
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
    without_port(host.trim())
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A Host value without its port (`example.com:8080` → `example.com`; `[::1]:80` → `[::1]`).
pub fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    }
}

/// Picks a target by weight, given a number in `0..sum of percents`.
pub(crate) fn pick(targets: &[RouteTarget], roll: u64) -> Option<&RouteTarget> {
    pick_index(targets, roll).map(|i| &targets[i])
}

/// [`pick`]'s choice as an index into `targets`.
pub(crate) fn pick_index(targets: &[RouteTarget], mut roll: u64) -> Option<usize> {
    targets.iter().position(|t| {
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

    fn rule(prefix: &str, headers: &[(&'static str, &'static str)], rev: &str) -> PathRule {
        PathRule {
            prefix: prefix.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect(),
            targets: vec![t(rev, 100)],
            appended: Vec::new(),
            target_appended: Vec::new(),
        }
    }

    /// The revision the first matching rule of `host` sends `path` with `headers` to.
    fn routed(
        table: &RoutingTable,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::try_from(*n).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        table
            .rules(host)?
            .iter()
            .find(|r| r.matches(path, &map))
            .map(|r| r.targets[0].revision.clone())
    }

    #[test]
    fn path_rules_match_by_prefix_longest_first_and_headers_before_plain() {
        let mut table = RoutingTable::new();
        table.insert("plain.example.com".into(), vec![t("plain", 100)]);
        assert!(!table.needs_general("plain.example.com"));
        table.insert_rules(
            "Api.Example.com".into(),
            vec![
                rule("", &[], "root"),
                rule("/v1", &[], "v1"),
                rule("/v1/admin", &[], "admin"),
                rule("/v1", &[("x-canary", "yes"), ("x-team", "a")], "canary"),
            ],
        );
        let host = "api.example.com:8080";
        assert!(table.needs_general(host));
        assert!(table.rules("plain.example.com").is_none());
        assert_eq!(routed(&table, host, "/", &[]).as_deref(), Some("root"));
        assert_eq!(routed(&table, host, "/v1/x", &[]).as_deref(), Some("v1"));
        // A plain prefix, as Envoy's: /v10 starts with /v1.
        assert_eq!(routed(&table, host, "/v10", &[]).as_deref(), Some("v1"));
        assert_eq!(
            routed(&table, host, "/v1/admin/users", &[]).as_deref(),
            Some("admin")
        );
        // Header matches win over a longer plain prefix, only when every header matches.
        assert_eq!(
            routed(
                &table,
                host,
                "/v1/admin",
                &[("X-Canary", "yes"), ("x-team", "a")]
            )
            .as_deref(),
            Some("canary")
        );
        assert_eq!(
            routed(&table, host, "/v1/admin", &[("x-canary", "yes")]).as_deref(),
            Some("admin")
        );
        assert_eq!(
            routed(&table, host, "/v1", &[("x-canary", "YES"), ("x-team", "a")]).as_deref(),
            Some("v1")
        );
        // Outside the header rule's prefix, its headers do not matter.
        assert_eq!(
            routed(
                &table,
                host,
                "/other",
                &[("x-canary", "yes"), ("x-team", "a")]
            )
            .as_deref(),
            Some("root")
        );

        // Without a catch-all, a path no rule covers matches nothing.
        table.insert_rules("only.example.com".into(), vec![rule("/a", &[], "a")]);
        assert_eq!(routed(&table, "only.example.com", "/b", &[]), None);
        // A mapping never takes over a host routed by rules.
        table.insert_alias("api.example.com".into(), "plain.example.com".into());
        assert_eq!(
            table.serving_host("api.example.com"),
            ("api.example.com", None)
        );
    }

    #[test]
    fn redirected_hosts_are_marked_and_leave_the_fast_path() {
        let mut table = RoutingTable::new();
        table.insert("secure.example.com".into(), vec![t("a", 100)]);
        table.insert("open.example.com".into(), vec![t("a", 100)]);
        assert!(!table.redirects("secure.example.com"));
        table.insert_redirect("Secure.Example.com".into());
        assert!(table.redirects("secure.example.com:80"));
        assert!(table.needs_general("secure.example.com"));
        assert!(!table.redirects("open.example.com"));
        assert!(!table.needs_general("open.example.com"));
        // Tags and appended headers need the general path too.
        table.insert_tag("open.example.com".into(), "x".into(), vec![t("b", 100)]);
        assert!(table.needs_general("open.example.com"));
    }

    #[test]
    fn a_cluster_local_host_is_unknown_to_external_listeners_only() {
        let mut table = RoutingTable::new();
        table.insert("hello.shop.svc.cluster.local".into(), vec![t("a", 100)]);
        table.insert("hello.shop.example.com".into(), vec![t("a", 100)]);
        // Nothing marked: every listener serves every host.
        assert!(Visibility::External.serves(&table, "hello.shop.svc.cluster.local"));
        table.insert_cluster_local("Hello.Shop.svc.cluster.local".into());
        table.insert_cluster_local("pending.shop.svc".into());
        table.insert_unavailable("pending.shop.svc".into(), "not ready".into());
        for host in [
            "hello.shop.svc.cluster.local",
            "HELLO.shop.svc.cluster.local:80",
            "hello.shop.svc.cluster.local.",
            "pending.shop.svc",
        ] {
            assert!(table.is_cluster_local(host), "{host}");
            assert!(!Visibility::External.serves(&table, host), "{host}");
            assert!(Visibility::ClusterLocal.serves(&table, host), "{host}");
        }
        // The public host is served on both; an unknown one is no business of visibility.
        for host in ["hello.shop.example.com", "other.example.com"] {
            assert!(!table.is_cluster_local(host));
            assert!(Visibility::External.serves(&table, host));
            assert!(Visibility::ClusterLocal.serves(&table, host));
        }
        // Being cluster-local does not send the host off the fast path on its own.
        assert!(!table.needs_general("hello.shop.svc.cluster.local"));
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
