//! Tables for `rouse get`, with the columns `kn` and `kubectl` print for each kind.

use std::collections::BTreeMap;

use rouse_api::Kind;
use serde_json::Value;

/// A table: headers and rows of cells, printed in aligned columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Renders the table with columns three spaces apart, kubectl-style.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    let pad = widths[i] - cell.chars().count() + 3;
                    s.push_str(&" ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(self.headers.clone());
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }
}

/// The traffic a revision gets from the routes: its share and its tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionTraffic {
    pub percent: i64,
    pub tags: Vec<String>,
}

/// Sums, per `namespace/revision`, the resolved traffic of `routes` (their `status.traffic`).
pub fn traffic_by_revision(routes: &[Value]) -> BTreeMap<String, RevisionTraffic> {
    let mut out: BTreeMap<String, RevisionTraffic> = BTreeMap::new();
    for route in routes {
        let ns = str_at(route, "/metadata/namespace");
        for t in arr_at(route, "/status/traffic") {
            let rev = str_at(t, "/revisionName");
            if rev.is_empty() {
                continue;
            }
            let entry = out.entry(format!("{ns}/{rev}")).or_default();
            entry.percent += t.get("percent").and_then(Value::as_i64).unwrap_or(0);
            let tag = str_at(t, "/tag");
            if !tag.is_empty() && !entry.tags.iter().any(|x| x == tag) {
                entry.tags.push(tag.to_string());
            }
        }
    }
    out
}

/// What other kinds add to a table.
#[derive(Debug, Clone, Default)]
pub enum Extra {
    #[default]
    None,
    /// For revisions: their traffic and tags from the routes, by `namespace/revision`.
    Traffic(BTreeMap<String, RevisionTraffic>),
    /// For services and configurations: revisions by `namespace/name`, whose failure cause
    /// (a container's exit and output) goes into REASON.
    Revisions(BTreeMap<String, Value>),
}

/// Revisions by `namespace/name`.
pub fn revisions_by_name(revisions: &[Value]) -> BTreeMap<String, Value> {
    revisions
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    str_at(r, "/metadata/namespace"),
                    str_at(r, "/metadata/name")
                ),
                r.clone(),
            )
        })
        .collect()
}

/// Why a revision's container fails, when it does: `ContainerHealthy=False`'s message
/// (`Container failed with: ...`), kept by the revision when a later condition (the progress
/// deadline) decides its Ready.
pub fn container_failure(revision: &Value) -> Option<String> {
    let c = condition(arr_at(revision, "/status/conditions"), "ContainerHealthy")?;
    (str_at(c, "/status") == "False" && !str_at(c, "/message").is_empty())
        .then(|| str_at(c, "/message").to_string())
}

/// REASON for a service or configuration: Ready's reason (kubectl's column); when it is not
/// Ready and its newest revision's container failed, that failure too, since Ready's own
/// message may only say the deadline passed.
fn reason_with_cause(
    o: &Value,
    conds: &[Value],
    revisions: Option<&BTreeMap<String, Value>>,
) -> String {
    let reason = ready_reason(conds);
    if ready_status(conds) == "True" {
        return reason;
    }
    let ns = str_at(o, "/metadata/namespace");
    let latest = str_at(o, "/status/latestCreatedRevisionName");
    let cause = revisions
        .and_then(|r| r.get(&format!("{ns}/{latest}")))
        .and_then(container_failure);
    match cause {
        Some(cause) if reason.is_empty() => cause,
        Some(cause) => format!("{reason}: {cause}"),
        None => reason,
    }
}

/// The table of `items` of `kind`; `now` (seconds since the epoch) is for the AGE column, and
/// `extra` fills the revisions' TRAFFIC and TAGS and the services' failure causes. With
/// `namespaces`, a NAMESPACE column leads.
pub fn table(kind: Kind, items: &[Value], now: u64, extra: &Extra, namespaces: bool) -> Table {
    let no_traffic = BTreeMap::new();
    let traffic = match extra {
        Extra::Traffic(t) => t,
        _ => &no_traffic,
    };
    let revisions = match extra {
        Extra::Revisions(r) => Some(r),
        _ => None,
    };
    let headers: Vec<&'static str> = match kind {
        // As Knative's `kubectl get ksvc` prints them.
        Kind::Service => vec![
            "NAME",
            "URL",
            "LATESTCREATED",
            "LATESTREADY",
            "READY",
            "REASON",
        ],
        Kind::Revision => vec![
            "NAME",
            "SERVICE",
            "TRAFFIC",
            "TAGS",
            "GENERATION",
            "AGE",
            "CONDITIONS",
            "READY",
            "REASON",
        ],
        Kind::Route => vec!["NAME", "URL", "READY"],
        Kind::Configuration => vec!["NAME", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
        Kind::PodAutoscaler => vec!["NAME", "DESIREDSCALE", "ACTUALSCALE", "READY", "REASON"],
        Kind::ServerlessService => vec![
            "NAME",
            "MODE",
            "ACTIVATORS",
            "SERVICENAME",
            "PRIVATESERVICENAME",
            "ENDPOINTS",
            "READY",
            "REASON",
        ],
        Kind::DomainMapping => vec!["NAME", "URL", "READY", "REASON"],
    };
    let rows = items
        .iter()
        .map(|o| {
            let name = str_at(o, "/metadata/name").to_string();
            let age = age(o, now);
            let conds = arr_at(o, "/status/conditions");
            let ready = ready_status(conds);
            let mut row = match kind {
                Kind::Service => vec![
                    name,
                    str_at(o, "/status/url").to_string(),
                    str_at(o, "/status/latestCreatedRevisionName").to_string(),
                    str_at(o, "/status/latestReadyRevisionName").to_string(),
                    ready,
                    reason_with_cause(o, conds, revisions),
                ],
                Kind::Revision => {
                    let ns = str_at(o, "/metadata/namespace");
                    let t = traffic.get(&format!("{ns}/{name}"));
                    vec![
                        name.clone(),
                        label(o, rouse_api::serving::LABEL_SERVICE),
                        t.map(|t| format!("{}%", t.percent)).unwrap_or_default(),
                        t.map(|t| t.tags.join(",")).unwrap_or_default(),
                        label(o, rouse_api::serving::LABEL_CONFIGURATION_GENERATION),
                        age,
                        conditions_summary(conds),
                        ready,
                        not_ready_reason(conds),
                    ]
                }
                Kind::Route => vec![name, str_at(o, "/status/url").to_string(), ready],
                Kind::Configuration => vec![
                    name,
                    str_at(o, "/status/latestCreatedRevisionName").to_string(),
                    str_at(o, "/status/latestReadyRevisionName").to_string(),
                    ready,
                    reason_with_cause(o, conds, revisions),
                ],
                Kind::PodAutoscaler => vec![
                    name,
                    num_at(o, "/status/desiredScale"),
                    num_at(o, "/status/actualScale"),
                    ready,
                    ready_reason(conds),
                ],
                Kind::ServerlessService => vec![
                    name,
                    str_at(o, "/spec/mode").to_string(),
                    num_at(o, "/spec/numActivators"),
                    str_at(o, "/status/serviceName").to_string(),
                    str_at(o, "/status/privateServiceName").to_string(),
                    arr_at(o, "/status/endpoints")
                        .iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    ready,
                    ready_reason(conds),
                ],
                Kind::DomainMapping => vec![
                    name,
                    str_at(o, "/status/url").to_string(),
                    ready,
                    ready_reason(conds),
                ],
            };
            if namespaces {
                row.insert(0, str_at(o, "/metadata/namespace").to_string());
            }
            row
        })
        .collect();
    let mut headers = headers;
    if namespaces {
        headers.insert(0, "NAMESPACE");
    }
    Table { headers, rows }
}

/// A string at a JSON pointer, "" when absent.
pub fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// An array at a JSON pointer, empty when absent.
pub fn arr_at<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn num_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_i64)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn label(o: &Value, key: &str) -> String {
    o.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The condition of `type_`.
pub fn condition<'a>(conds: &'a [Value], type_: &str) -> Option<&'a Value> {
    conds.iter().find(|c| str_at(c, "/type") == type_)
}

/// `Ready`'s status (`True`, `False`, `Unknown`), or `<unknown>` when there is none yet.
pub fn ready_status(conds: &[Value]) -> String {
    condition(conds, "Ready")
        .map(|c| str_at(c, "/status").to_string())
        .unwrap_or_else(|| "<unknown>".to_string())
}

/// `Ready`'s reason (kubectl's REASON column).
fn ready_reason(conds: &[Value]) -> String {
    condition(conds, "Ready")
        .map(|c| str_at(c, "/reason").to_string())
        .unwrap_or_default()
}

/// kn's REASON: empty when Ready, else the reason and message of Ready.
pub fn not_ready_reason(conds: &[Value]) -> String {
    let Some(c) = condition(conds, "Ready") else {
        return "<unknown>".to_string();
    };
    if str_at(c, "/status") == "True" {
        return String::new();
    }
    let (reason, message) = (str_at(c, "/reason"), str_at(c, "/message"));
    match (reason.is_empty(), message.is_empty()) {
        (_, true) => reason.to_string(),
        (true, false) => message.to_string(),
        (false, false) => format!("{reason} : {message}"),
    }
}

/// kn's CONDITIONS: how many conditions are True, of how many, e.g. `3 OK / 3`.
pub fn conditions_summary(conds: &[Value]) -> String {
    let ok = conds
        .iter()
        .filter(|c| str_at(c, "/status") == "True")
        .count();
    format!("{ok} OK / {}", conds.len())
}

/// The object's age from `creationTimestamp`.
pub fn age(o: &Value, now: u64) -> String {
    rouse_api::clock::parse_rfc3339(str_at(o, "/metadata/creationTimestamp"))
        .map(|t| human_duration(now.saturating_sub(t)))
        .unwrap_or_default()
}

/// Ages the way kubectl prints them: `45s`, `5m30s`, `42m`, `5h10m`, `20h`, `3d4h`, `20d`, `2y10d`.
pub fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    let y = d / 365;
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        }
    } else if y < 2 {
        format!("{d}d")
    } else if y < 8 {
        match d % 365 {
            0 => format!("{y}y"),
            dd => format!("{y}y{dd}d"),
        }
    } else {
        format!("{y}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ksvc(name: &str, ready: &str, reason: &str, message: &str) -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {
                "url": format!("http://{name}.default.localhost"),
                "latestCreatedRevisionName": format!("{name}-00001"),
                "conditions": [
                    {"type": "ConfigurationsReady", "status": "True"},
                    {"type": "Ready", "status": ready, "reason": reason, "message": message},
                    {"type": "RoutesReady", "status": ready},
                ]
            }
        })
    }

    const JAN1: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn service_table_like_kubectl_with_the_failure_cause() {
        let mut broken = ksvc(
            "broken",
            "False",
            "RevisionFailed",
            "Revision \"broken-00001\" failed with message: Initial scale was never achieved.",
        );
        broken["status"]["latestReadyRevisionName"] = json!("");
        let mut hello = ksvc("hello", "True", "", "");
        hello["status"]["latestReadyRevisionName"] = json!("hello-00001");
        let items = vec![hello, broken];
        let revs = revisions_by_name(&[json!({
            "metadata": {"name": "broken-00001", "namespace": "default"},
            "status": {"conditions": [
                {"type": "ContainerHealthy", "status": "False", "reason": "ExitCode1",
                 "message": "Container failed with: boom: missing DATABASE_URL"},
                {"type": "ResourcesAvailable", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "Initial scale was never achieved"},
            ]}
        })]);
        let t = table(
            Kind::Service,
            &items,
            JAN1 + 300,
            &Extra::Revisions(revs),
            false,
        );
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME     URL                               LATESTCREATED   LATESTREADY   READY   REASON"
        );
        assert_eq!(
            lines[1],
            "hello    http://hello.default.localhost    hello-00001     hello-00001   True"
        );
        assert_eq!(
            lines[2],
            "broken   http://broken.default.localhost   broken-00001                  False   RevisionFailed: Container failed with: boom: missing DATABASE_URL"
        );
        // Without the revisions, Ready's reason alone.
        let t = table(Kind::Service, &items, JAN1, &Extra::None, false);
        assert_eq!(t.rows[1][5], "RevisionFailed");
    }

    #[test]
    fn revision_traffic_and_tags_come_from_routes() {
        let routes = vec![json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "status": {"traffic": [
                {"revisionName": "hello-00001", "percent": 50, "tag": "blue"},
                {"revisionName": "hello-00002", "percent": 50, "tag": "green"},
                {"revisionName": "hello-00002", "percent": 0, "tag": "latest"},
            ]}
        })];
        let traffic = traffic_by_revision(&routes);
        let rev = json!({
            "metadata": {"name": "hello-00002", "namespace": "default",
                "labels": {"serving.knative.dev/service": "hello", "serving.knative.dev/configurationGeneration": "2"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Deploying"}]}
        });
        let t = table(
            Kind::Revision,
            &[rev],
            JAN1,
            &Extra::Traffic(traffic),
            false,
        );
        assert_eq!(
            t.headers,
            vec![
                "NAME",
                "SERVICE",
                "TRAFFIC",
                "TAGS",
                "GENERATION",
                "AGE",
                "CONDITIONS",
                "READY",
                "REASON"
            ]
        );
        assert_eq!(
            t.rows[0],
            vec![
                "hello-00002",
                "hello",
                "50%",
                "green,latest",
                "2",
                "",
                "0 OK / 1",
                "Unknown",
                "Deploying"
            ]
        );
    }

    #[test]
    fn internal_kinds_and_namespaces() {
        let kpa = json!({"metadata": {"name": "r-00001", "namespace": "ns1"},
            "status": {"desiredScale": 1, "actualScale": 0,
                "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Queued"}]}});
        let t = table(Kind::PodAutoscaler, &[kpa], 0, &Extra::None, true);
        assert_eq!(
            t.headers,
            vec![
                "NAMESPACE",
                "NAME",
                "DESIREDSCALE",
                "ACTUALSCALE",
                "READY",
                "REASON"
            ]
        );
        assert_eq!(
            t.rows[0],
            vec!["ns1", "r-00001", "1", "0", "Unknown", "Queued"]
        );
        let sks = json!({"metadata": {"name": "r-00001"}, "spec": {"mode": "Proxy", "numActivators": 1},
            "status": {"serviceName": "r-00001", "privateServiceName": "r-00001-private",
                "endpoints": ["activator"]}});
        let t = table(Kind::ServerlessService, &[sks], 0, &Extra::None, false);
        assert_eq!(
            t.rows[0],
            vec![
                "r-00001",
                "Proxy",
                "1",
                "r-00001",
                "r-00001-private",
                "activator",
                "<unknown>",
                ""
            ]
        );
    }

    #[test]
    fn ages_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (330, "5m30s"),
            (42 * 60, "42m"),
            (5 * 3600 + 600, "5h10m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (20 * 86_400, "20d"),
            (3 * 365 * 86_400 + 10 * 86_400, "3y10d"),
            (9 * 365 * 86_400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
