//! The activators' push to the autoscaler, as it travels between processes (Kubernetes mode):
//! one long HTTP request, `POST` [`PATH`] with `Authorization: Bearer <token>`, whose chunked
//! body is a stream of messages, one JSON object per line:
//!
//! - `{"poke":{"namespace":"ns","revision":"rev"}}`: a request arrived for a revision with no
//!   ready instance; sent at once.
//! - `{"stats":[{"namespace":"ns","revision":"rev","averageConcurrency":1.5,"requestCount":3}]}`:
//!   the last second's load per revision, every second (an empty list keeps the stream alive).
//!
//! The autoscaler refuses a stream at once (401 for a wrong token, 503 when it is not the
//! leader) or accepts it with a 200 whose body stays open and ends with one line saying why
//! the stream ended (closed, silent for [`IDLE_LIMIT`], a malformed line, no longer the
//! leader). The activator writes nothing before the 200, and connects again whenever a stream
//! ends. The pull side (the queue-proxy's `Stat`) is
//! `rouse_queue::QueueStats`' wire format.

use serde::{Deserialize, Serialize};

/// The stream's path on the autoscaler.
pub const PATH: &str = "/v1/activator-stats";
/// The stream's content type.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// The longest line the autoscaler reads.
pub const MAX_LINE: usize = 1024 * 1024;
/// How often the activator sends its stats (Knative's 1 s); also the stream's heartbeat.
pub const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A stream silent for this long is dead: the autoscaler closes it.
pub const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest namespace or revision name (a Kubernetes DNS subdomain).
const MAX_NAME: usize = 253;

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Message {
    /// The first request for a revision without ready instances.
    Poke(RevisionRef),
    /// The last second's load, per revision with any.
    Stats(Vec<RevisionLoad>),
}

/// A revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub revision: String,
}

/// The load one activator saw for one revision over a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionLoad {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub revision: String,
    /// Time-weighted average of its requests in the activator (waiting or proxied).
    pub average_concurrency: f64,
    /// Requests received.
    pub request_count: f64,
}

/// A line that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl Message {
    /// The message as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Reads one line (without its newline), checking names and figures.
    pub fn decode(line: &[u8]) -> Result<Message, WireError> {
        if line.len() > MAX_LINE {
            return Err(WireError(format!("line longer than {MAX_LINE} bytes")));
        }
        let msg: Message = serde_json::from_slice(line).map_err(|e| WireError(e.to_string()))?;
        match &msg {
            Message::Poke(r) => check_names("poke", &r.namespace, &r.revision)?,
            Message::Stats(loads) => {
                for (i, l) in loads.iter().enumerate() {
                    let at = format!("stats[{i}]");
                    check_names(&at, &l.namespace, &l.revision)?;
                    for (field, v) in [
                        ("averageConcurrency", l.average_concurrency),
                        ("requestCount", l.request_count),
                    ] {
                        if !v.is_finite() || v < 0.0 {
                            return Err(WireError(format!(
                                "{at}.{field}: {v} is not a finite, non-negative number"
                            )));
                        }
                    }
                }
            }
        }
        Ok(msg)
    }
}

fn check_names(at: &str, namespace: &str, revision: &str) -> Result<(), WireError> {
    for (field, v) in [("namespace", namespace), ("revision", revision)] {
        if v.is_empty() || v.len() > MAX_NAME {
            return Err(WireError(format!(
                "{at}.{field}: must be 1 to {MAX_NAME} characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_lines_and_read_back() {
        let poke = Message::Poke(RevisionRef {
            namespace: "ns".into(),
            revision: "hello-00001".into(),
        });
        assert_eq!(
            poke.encode(),
            b"{\"poke\":{\"namespace\":\"ns\",\"revision\":\"hello-00001\"}}\n"
        );
        let stats = Message::Stats(vec![RevisionLoad {
            namespace: "ns".into(),
            revision: "hello-00001".into(),
            average_concurrency: 1.5,
            request_count: 3.0,
        }]);
        let line = stats.encode();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"stats\":[{\"namespace\":\"ns\",\"revision\":\"hello-00001\",\"averageConcurrency\":1.5,\"requestCount\":3.0}]}\n"
        );
        for m in [poke, stats, Message::Stats(Vec::new())] {
            let line = m.encode();
            assert_eq!(Message::decode(&line[..line.len() - 1]), Ok(m));
        }
    }

    #[test]
    fn bad_lines_are_refused_with_the_field() {
        let bad = |line: &str| Message::decode(line.as_bytes()).unwrap_err().to_string();
        assert!(
            bad("{\"poke\":{\"namespace\":\"\",\"revision\":\"r\"}}").contains("poke.namespace")
        );
        let neg = "{\"stats\":[{\"namespace\":\"n\",\"revision\":\"r\",\"averageConcurrency\":-1,\"requestCount\":0}]}";
        assert!(bad(neg).contains("stats[0].averageConcurrency"));
        assert!(bad("{\"shout\":1}").contains("unknown variant"));
        assert!(
            bad("{\"poke\":{\"namespace\":\"n\",\"revision\":\"r\",\"extra\":1}}")
                .contains("extra")
        );
        assert!(bad("not json").contains("expected"));
        let long = format!(
            "{{\"poke\":{{\"namespace\":\"{}\",\"revision\":\"r\"}}}}",
            "n".repeat(300)
        );
        assert!(bad(&long).contains("1 to 253"));
        assert!(bad(&"x".repeat(MAX_LINE + 1)).contains("longer than"));
    }
}
