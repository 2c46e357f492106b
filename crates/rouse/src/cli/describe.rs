//! `rouse describe KIND NAME`: one object for people — metadata, a spec summary, traffic and
//! a conditions table.

use std::fmt::Write as _;

use rouse_api::Kind;
use serde_json::Value;

use super::client::ApiClient;
use super::get::now_secs;
use super::parse_kind;
use super::table::{Table, age, arr_at, str_at};
use crate::api::paths;

/// `rouse describe` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    /// The kind: a Knative name or short name.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// The object's name.
    pub name: String,
    #[command(flatten)]
    pub target: super::ApiTarget,
}

/// Runs `rouse describe`.
pub async fn run(client: &ApiClient, namespace: &str, args: &DescribeArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind).map_err(anyhow::Error::msg)?;
    let mut obj = client
        .get(&paths::item(kind, namespace, &args.name))
        .await?;
    // URLs a person can use from here: with the gateway's port.
    let port = super::gateway::gateway_port(client).await;
    if let Some(url) = obj.pointer_mut("/status/url") {
        *url = Value::String(super::gateway::display_url(
            url.as_str().unwrap_or(""),
            port,
        ));
    }
    if let Some(traffic) = obj
        .pointer_mut("/status/traffic")
        .and_then(Value::as_array_mut)
    {
        for t in traffic {
            if let Some(url) = t.get_mut("url") {
                *url = Value::String(super::gateway::display_url(
                    url.as_str().unwrap_or(""),
                    port,
                ));
            }
        }
    }
    print!("{}", describe(kind, &obj, now_secs()));
    Ok(())
}

/// The column values start at: top-level lines, and nested (indented) ones.
const TOP: usize = 14;
const NESTED: usize = 16;

fn kv(out: &mut String, indent: usize, key: &str, value: &str) {
    let col = if indent == 0 { TOP } else { NESTED };
    kv_at(out, indent, col, key, value);
}

/// A `key: value` line with the value at column `col` (or one space after a longer key).
fn kv_at(out: &mut String, indent: usize, col: usize, key: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let pad = " ".repeat(indent);
    let key = format!("{key}:");
    let w = col.saturating_sub(indent).max(key.len() + 1);
    let _ = writeln!(out, "{pad}{key:<w$}{value}");
}

/// Key/value lines of a map (labels, annotations), the first beside the key.
fn map_lines(out: &mut String, indent: usize, key: &str, map: Option<&Value>) {
    let Some(map) = map.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return;
    };
    for (i, (k, v)) in map.iter().enumerate() {
        let v = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let line = format!("{k}={v}");
        if i == 0 {
            kv(out, indent, key, &line);
        } else {
            let col = if indent == 0 { TOP } else { NESTED };
            let _ = writeln!(out, "{}{line}", " ".repeat(col.max(indent + key.len() + 2)));
        }
    }
}

fn num(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .map(|n| match n {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// Renders `obj` of `kind`; `now` is seconds since the epoch.
pub fn describe(kind: Kind, obj: &Value, now: u64) -> String {
    let mut out = String::new();
    kv(&mut out, 0, "Name", str_at(obj, "/metadata/name"));
    kv(&mut out, 0, "Namespace", str_at(obj, "/metadata/namespace"));
    kv(
        &mut out,
        0,
        "Kind",
        &format!("{} ({})", kind.name(), kind.api_version()),
    );
    kv(&mut out, 0, "Age", &age(obj, now));
    let generation = num(obj, "/metadata/generation");
    if !generation.is_empty() {
        let observed = num(obj, "/status/observedGeneration");
        let observed = if observed.is_empty() {
            "none".to_string()
        } else {
            observed
        };
        kv(
            &mut out,
            0,
            "Generation",
            &format!("{generation} (observed: {observed})"),
        );
    }
    kv(&mut out, 0, "URL", str_at(obj, "/status/url"));
    map_lines(&mut out, 0, "Labels", obj.pointer("/metadata/labels"));
    map_lines(
        &mut out,
        0,
        "Annotations",
        obj.pointer("/metadata/annotations"),
    );
    for owner in arr_at(obj, "/metadata/ownerReferences") {
        kv(
            &mut out,
            0,
            "Owner",
            &format!("{}/{}", str_at(owner, "/kind"), str_at(owner, "/name")),
        );
    }

    match kind {
        Kind::Service | Kind::Configuration => {
            out.push_str("\nRevision template:\n");
            let tmpl = obj
                .pointer("/spec/template")
                .cloned()
                .unwrap_or(Value::Null);
            kv(&mut out, 2, "Name", str_at(&tmpl, "/metadata/name"));
            map_lines(
                &mut out,
                2,
                "Annotations",
                tmpl.pointer("/metadata/annotations"),
            );
            revision_spec(&mut out, tmpl.get("spec").unwrap_or(&Value::Null));
            out.push('\n');
            kv_at(
                &mut out,
                0,
                NESTED,
                "Latest created",
                str_at(obj, "/status/latestCreatedRevisionName"),
            );
            kv_at(
                &mut out,
                0,
                NESTED,
                "Latest ready",
                str_at(obj, "/status/latestReadyRevisionName"),
            );
        }
        Kind::Revision => {
            out.push_str("\nSpec:\n");
            revision_spec(&mut out, obj.get("spec").unwrap_or(&Value::Null));
            out.push('\n');
            kv(&mut out, 0, "Desired", &num(obj, "/status/desiredReplicas"));
            kv(&mut out, 0, "Actual", &num(obj, "/status/actualReplicas"));
        }
        Kind::Route => {}
        Kind::DomainMapping => {
            out.push('\n');
            kv(
                &mut out,
                0,
                "Reference",
                &format!(
                    "{} {}/{}",
                    str_at(obj, "/spec/ref/kind"),
                    str_at(obj, "/spec/ref/namespace"),
                    str_at(obj, "/spec/ref/name")
                ),
            );
            let secret = str_at(obj, "/spec/tls/secretName");
            if !secret.is_empty() {
                kv(&mut out, 0, "TLS secret", secret);
            }
        }
        Kind::PodAutoscaler => {
            out.push('\n');
            kv(
                &mut out,
                0,
                "Target",
                str_at(obj, "/spec/scaleTargetRef/name"),
            );
            kv(
                &mut out,
                0,
                "Concurrency",
                &num(obj, "/spec/containerConcurrency"),
            );
            kv(
                &mut out,
                0,
                "Reachability",
                str_at(obj, "/spec/reachability"),
            );
            kv(&mut out, 0, "Protocol", str_at(obj, "/spec/protocolType"));
            kv(
                &mut out,
                0,
                "Desired scale",
                &num(obj, "/status/desiredScale"),
            );
            kv(
                &mut out,
                0,
                "Actual scale",
                &num(obj, "/status/actualScale"),
            );
        }
        Kind::ServerlessService => {
            out.push('\n');
            kv(&mut out, 0, "Mode", str_at(obj, "/spec/mode"));
            kv(&mut out, 0, "Activators", &num(obj, "/spec/numActivators"));
            kv(&mut out, 0, "Target", str_at(obj, "/spec/objectRef/name"));
            kv(&mut out, 0, "Service", str_at(obj, "/status/serviceName"));
            kv(
                &mut out,
                0,
                "Private",
                str_at(obj, "/status/privateServiceName"),
            );
            let eps: Vec<&str> = arr_at(obj, "/status/endpoints")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            kv(&mut out, 0, "Endpoints", &eps.join(", "));
        }
    }

    if matches!(kind, Kind::Service | Kind::Route) {
        // Resolved traffic once the controller has written it, else what the spec asks.
        let status = arr_at(obj, "/status/traffic");
        let targets = if status.is_empty() {
            arr_at(obj, "/spec/traffic")
        } else {
            status
        };
        if !targets.is_empty() {
            out.push_str("\nTraffic:\n");
            for t in targets {
                out.push_str(&traffic_line(t));
            }
        }
    }

    let conds = arr_at(obj, "/status/conditions");
    if !conds.is_empty() {
        out.push_str("\nConditions:\n");
        let rows = conds
            .iter()
            .map(|c| {
                let symbol = match str_at(c, "/status") {
                    "True" => "++",
                    "False" if str_at(c, "/severity") == "Warning" => " W",
                    "False" => "!!",
                    _ => "??",
                };
                let since = rouse_api::clock::parse_rfc3339(str_at(c, "/lastTransitionTime"))
                    .map(|t| super::table::human_duration(now.saturating_sub(t)))
                    .unwrap_or_default();
                vec![
                    symbol.to_string(),
                    str_at(c, "/type").to_string(),
                    since,
                    str_at(c, "/reason").to_string(),
                    str_at(c, "/message").to_string(),
                ]
            })
            .collect();
        let t = Table {
            headers: vec!["OK", "TYPE", "AGE", "REASON", "MESSAGE"],
            rows,
        };
        for line in t.render().lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn traffic_line(t: &Value) -> String {
    let percent = t.get("percent").and_then(Value::as_i64).unwrap_or(0);
    let rev = str_at(t, "/revisionName");
    let latest = t.get("latestRevision").and_then(Value::as_bool) == Some(true);
    let mut target = match (latest, rev.is_empty()) {
        (true, true) => match str_at(t, "/configurationName") {
            "" => "@latest".to_string(),
            c => format!("@latest of {c}"),
        },
        (true, false) => format!("@latest ({rev})"),
        (false, _) => rev.to_string(),
    };
    let tag = str_at(t, "/tag");
    if !tag.is_empty() {
        target.push_str(&format!(" #{tag}"));
    }
    let url = str_at(t, "/url");
    if !url.is_empty() {
        target.push_str(&format!(" {url}"));
    }
    format!("  {percent:>3}%  {target}\n")
}

fn revision_spec(out: &mut String, spec: &Value) {
    for c in arr_at(spec, "/containers") {
        kv(out, 2, "Container", str_at(c, "/name"));
        let mut cmd: Vec<&str> = arr_at(c, "/command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        cmd.extend(arr_at(c, "/args").iter().filter_map(Value::as_str));
        kv(out, 4, "Command", &cmd.join(" "));
        kv(out, 4, "Image", str_at(c, "/image"));
        kv(out, 4, "Working dir", str_at(c, "/workingDir"));
        let ports: Vec<String> = arr_at(c, "/ports")
            .iter()
            .map(|p| match str_at(p, "/name") {
                "" => num(p, "/containerPort"),
                n => format!("{} ({n})", num(p, "/containerPort")),
            })
            .collect();
        kv(out, 4, "Port", &ports.join(", "));
        let env: Vec<String> = arr_at(c, "/env")
            .iter()
            .map(|e| match e.get("value").and_then(Value::as_str) {
                Some(v) => format!("{}={v}", str_at(e, "/name")),
                None => format!("{} (from a reference)", str_at(e, "/name")),
            })
            .collect();
        kv(out, 4, "Env", &env.join(", "));
        if let Some(probe) = c.get("readinessProbe") {
            let how = if let Some(h) = probe.get("httpGet") {
                format!(
                    "http-get {}",
                    match str_at(h, "/path") {
                        "" => "/",
                        p => p,
                    }
                )
            } else if probe.get("tcpSocket").is_some() {
                "tcp-socket".to_string()
            } else if probe.get("grpc").is_some() {
                "grpc".to_string()
            } else {
                "exec".to_string()
            };
            kv(out, 4, "Readiness", &how);
        }
    }
    kv(out, 2, "Concurrency", &num(spec, "/containerConcurrency"));
    let timeout = num(spec, "/timeoutSeconds");
    if !timeout.is_empty() {
        kv(out, 2, "Timeout", &format!("{timeout}s"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn describes_a_service() {
        let svc = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "generation": 2,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"team": "a"}},
            "spec": {
                "template": {
                    "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}},
                    "spec": {"containerConcurrency": 10, "timeoutSeconds": 300, "containers": [{
                        "name": "user-container", "command": ["/bin/app"], "args": ["--v"],
                        "env": [{"name": "TARGET", "value": "World"}],
                        "ports": [{"containerPort": 8080}]
                    }]}
                },
                "traffic": [{"latestRevision": true, "percent": 100}]
            },
            "status": {
                "observedGeneration": 2,
                "url": "http://hello.default.localhost",
                "latestCreatedRevisionName": "hello-00002",
                "latestReadyRevisionName": "hello-00001",
                "traffic": [
                    {"revisionName": "hello-00001", "latestRevision": false, "percent": 90},
                    {"revisionName": "hello-00002", "latestRevision": true, "percent": 10, "tag": "next",
                     "url": "http://next-hello.default.localhost"}
                ],
                "conditions": [
                    {"type": "ConfigurationsReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "boom",
                     "lastTransitionTime": "2026-01-01T00:04:00Z"}
                ]
            }
        });
        let text = describe(Kind::Service, &svc, 1_767_225_600 + 300);
        for want in [
            "Name:         hello\n",
            "Kind:         Service (serving.knative.dev/v1)\n",
            "Age:          5m\n",
            "Generation:   2 (observed: 2)\n",
            "URL:          http://hello.default.localhost\n",
            "Labels:       team=a\n",
            "  Annotations:  autoscaling.knative.dev/min-scale=1\n",
            "  Container:    user-container\n",
            "    Command:    /bin/app --v\n",
            "    Env:        TARGET=World\n",
            "  Concurrency:  10\n",
            "  Timeout:      300s\n",
            "Latest created: hello-00002\n",
            "Latest ready:   hello-00001\n",
            "   90%  hello-00001\n",
            "   10%  @latest (hello-00002) #next http://next-hello.default.localhost\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("  !!")
                && l.contains("Ready")
                && l.contains("60s")
                && l.ends_with("RevisionFailed   boom")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("  ++") && l.contains("ConfigurationsReady")),
            "{text}"
        );
    }
}
