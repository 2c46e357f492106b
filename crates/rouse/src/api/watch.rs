//! List options and watches as Kubernetes serves them: `labelSelector`, `fieldSelector`
//! (`metadata.name`, `metadata.namespace`), `limit`/`continue`, and `?watch=1` from a
//! `resourceVersion` as a stream of `WatchEvent`s (newline-delimited JSON), with bookmarks and
//! an `ERROR` event carrying 410 Expired once the history asked for is gone.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::StreamBody;
use hyper::body::Frame;
use rouse_api::Kind;
use rouse_store::{EventType, StoreError};
use serde_json::{Value, json};

use super::status::ApiError;
use super::{ApiState, table};
use crate::cli::selector::{Selector, parse_selector};

/// How long a watch runs when the client names no `timeoutSeconds` (kube-apiserver picks
/// 30–60 min; clients re-watch from their last resourceVersion).
const DEFAULT_WATCH: Duration = Duration::from_secs(30 * 60);
/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);
/// Events buffered for a slow watcher before the watch waits on it.
const WATCH_BUFFER: usize = 64;

/// The query parameters of a list or watch.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub watch: bool,
    pub resource_version: Option<u64>,
    pub labels: Option<Selector>,
    /// `(field, wanted, equal)` from `fieldSelector`.
    pub fields: Vec<(String, String, bool)>,
    pub limit: Option<usize>,
    pub continue_after: Option<(String, String)>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
}

/// The value of each `key=value` of a query string, percent-decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True")
}

impl ListOptions {
    /// Parses a list/watch query; unusable values are 400s naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<ListOptions, ApiError> {
        let mut o = ListOptions::default();
        for (k, v) in query_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "watch" => o.watch = truthy(&v),
                "resourceVersion" if !v.is_empty() => {
                    let rv: u64 = v.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "resourceVersion: Invalid value: {v:?}: must be an integer"
                        ))
                    })?;
                    o.resource_version = (rv != 0).then_some(rv);
                }
                "labelSelector" if !v.is_empty() => {
                    o.labels = Some(parse_selector(&v).map_err(|e| {
                        ApiError::bad_request(format!("unable to parse requirement: {e}"))
                    })?);
                }
                "fieldSelector" => o.fields = parse_fields(&v)?,
                "limit" => {
                    o.limit = v.parse::<usize>().ok().filter(|n| *n > 0);
                }
                "continue" if !v.is_empty() => {
                    let (ns, name) = v.split_once('/').ok_or_else(|| {
                        ApiError::bad_request("continue: the token is not one this API gave out")
                    })?;
                    o.continue_after = Some((ns.to_string(), name.to_string()));
                }
                "allowWatchBookmarks" => o.bookmarks = truthy(&v),
                "timeoutSeconds" => {
                    o.timeout = v.parse::<u64>().ok().map(Duration::from_secs);
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// True when `obj` passes the label and field selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(sel) = &self.labels
            && !sel.matches(obj)
        {
            return false;
        }
        self.fields.iter().all(|(field, want, equal)| {
            let got = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            };
            (got == Some(want.as_str())) == *equal
        })
    }
}

fn parse_fields(s: &str) -> Result<Vec<(String, String, bool)>, ApiError> {
    let mut out = Vec::new();
    for req in s.split(',').filter(|r| !r.is_empty()) {
        let (field, want, equal) = if let Some((f, w)) = req.split_once("!=") {
            (f, w, false)
        } else if let Some((f, w)) = req.split_once("==") {
            (f, w, true)
        } else if let Some((f, w)) = req.split_once('=') {
            (f, w, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {req:?}: expected field=value"
            )));
        };
        let field = field.trim();
        if field != "metadata.name" && field != "metadata.namespace" {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        out.push((field.to_string(), want.trim().to_string(), equal));
    }
    Ok(out)
}

/// A list page: the items after `continue`, at most `limit`, and the token for the next page.
pub fn page(items: Vec<Value>, opts: &ListOptions) -> (Vec<Value>, Option<String>) {
    let key = |o: &Value| {
        (
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            o["metadata"]["name"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|o| opts.matches(o))
        .filter(|o| {
            opts.continue_after
                .as_ref()
                .is_none_or(|after| key(o) > *after)
        })
        .collect();
    match opts.limit {
        Some(limit) if items.len() > limit => {
            items.truncate(limit);
            let (ns, name) = key(items.last().expect("limit > 0"));
            (items, Some(format!("{ns}/{name}")))
        }
        _ => (items, None),
    }
}

/// The body type of a streamed response.
pub type StreamedBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Starts a watch of `kind` in `namespace` and returns its stream.
pub fn start(
    state: ApiState,
    kind: Kind,
    namespace: Option<String>,
    opts: ListOptions,
    as_table: bool,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> StreamedBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WATCH_BUFFER);
    tokio::spawn(async move {
        tokio::select! {
            _ = run(state, kind, namespace, opts, as_table, tx) => {}
            // Shutdown ends the stream; clients re-watch from their last resourceVersion.
            _ = stopping.wait_for(|stopped| *stopped) => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
    });
    StreamBody::new(Box::pin(stream))
}

fn line(event_type: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": event_type, "object": object}))
        .expect("JSON values serialize");
    v.push(b'\n');
    Bytes::from(v)
}

async fn run(
    state: ApiState,
    kind: Kind,
    namespace: Option<String>,
    opts: ListOptions,
    as_table: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let shown = |obj: Value, rv: u64| {
        if as_table {
            table::table(kind, &[obj], json!({"resourceVersion": rv.to_string()}))
        } else {
            obj
        }
    };
    let in_scope = |obj: &Value| {
        namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && opts.matches(obj)
    };
    let mut from = match opts.resource_version {
        Some(rv) => rv,
        None => {
            // No resourceVersion: the current state as ADDED events, then what follows.
            let store = state.store.clone();
            let ns = namespace.clone();
            let listed = tokio::task::spawn_blocking(move || store.list(kind, ns.as_deref())).await;
            let Ok(Ok((items, rv))) = listed else { return };
            for obj in items.into_iter().filter(|o| in_scope(o)) {
                if tx.send(line("ADDED", shown(obj, rv))).await.is_err() {
                    return;
                }
            }
            rv
        }
    };
    let mut watch = match state.store.watch(from) {
        Ok(w) => w,
        Err(e) => {
            let err = match e {
                StoreError::Expired { .. } => ApiError::new(
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {e}"),
                ),
                other => ApiError::from_store(other, kind, ""),
            };
            let _ = tx.send(line("ERROR", err.to_status())).await;
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + opts.timeout.unwrap_or(DEFAULT_WATCH);
    let mut bookmark = tokio::time::interval(BOOKMARK_EVERY);
    bookmark.tick().await;
    loop {
        tokio::select! {
            ev = watch.recv() => {
                let Some(ev) = ev else { return };
                from = ev.resource_version;
                if ev.kind != kind || !in_scope(&ev.object) {
                    continue;
                }
                let ty = match ev.event_type {
                    EventType::Added => "ADDED",
                    EventType::Modified => "MODIFIED",
                    EventType::Deleted => "DELETED",
                };
                if tx.send(line(ty, shown(ev.object, from))).await.is_err() {
                    return;
                }
            }
            _ = bookmark.tick(), if opts.bookmarks => {
                let obj = if as_table {
                    table::table(kind, &[], json!({"resourceVersion": from.to_string()}))
                } else {
                    json!({"kind": kind.name(), "apiVersion": kind.api_version(),
                           "metadata": {"resourceVersion": from.to_string()}})
                };
                if tx.send(line("BOOKMARK", obj)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_options() {
        let o = ListOptions::parse(Some(
            "watch=1&resourceVersion=12&fieldSelector=metadata.name%3Dhello&labelSelector=a%3Db&limit=2&allowWatchBookmarks=true",
        ))
        .unwrap();
        assert!(o.watch && o.bookmarks);
        assert_eq!(o.resource_version, Some(12));
        assert!(o.matches(&json!({"metadata": {"name": "hello", "labels": {"a": "b"}}})));
        assert!(!o.matches(&json!({"metadata": {"name": "other", "labels": {"a": "b"}}})));
        assert!(!o.matches(&json!({"metadata": {"name": "hello"}})));
        assert!(ListOptions::parse(Some("fieldSelector=spec.x%3D1")).is_err());
        let items: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|n| json!({"metadata": {"namespace": "d", "name": n}}))
            .collect();
        let o = ListOptions::parse(Some("limit=2")).unwrap();
        let (first, next) = page(items.clone(), &o);
        assert_eq!(first.len(), 2);
        let o = ListOptions::parse(Some(&format!("limit=2&continue={}", next.unwrap()))).unwrap();
        let (second, next) = page(items, &o);
        assert_eq!(second[0]["metadata"]["name"], "c");
        assert_eq!(next, None);
    }
}
