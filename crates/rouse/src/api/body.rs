//! Reading a request body into one JSON object: bounded in size and time, JSON or YAML by
//! Content-Type (sniffed when absent), decoded strictly (no duplicate keys, bounded nesting).

use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::status::ApiError;

/// The largest request body the API reads (Kubernetes' apiserver allows a few MiB; manifests
/// are far smaller).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("request entity too large: the limit is {MAX_BODY_BYTES} bytes"),
    )
}

/// How much of an oversized body is read and thrown away before answering 413: a client that
/// is still writing when the answer comes (and the socket closes) sees a broken pipe instead of
/// the answer, so modest overshoots are drained first.
const DRAIN_LIMIT: usize = 16 << 20;
/// How long draining may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a body may take: in all, and between two pieces of it.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub total: std::time::Duration,
    pub idle: std::time::Duration,
}

impl BodyDeadline {
    /// From `config-rouse`.
    pub fn from_config(c: &rouse_api::config::rouse::RouseConfig) -> Self {
        Self {
            total: c.api_body_timeout,
            idle: c.api_body_idle_timeout,
        }
    }
}

/// 408: the body came too slowly. The connection is closed after the answer.
fn too_slow(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "Timeout",
        format!("the request body {what}; send it faster"),
    )
}

/// Reads the body of a POST/PUT and decodes it into a single JSON object, within `deadline`.
pub async fn read_object(
    headers: &HeaderMap,
    body: Incoming,
    deadline: BodyDeadline,
) -> Result<Value, ApiError> {
    let until = tokio::time::Instant::now() + deadline.total;
    match tokio::time::timeout_at(until, read_object_inner(headers, body, deadline.idle)).await {
        Ok(res) => res,
        Err(_) => Err(too_slow(&format!(
            "did not arrive within {}s",
            deadline.total.as_secs_f64()
        ))),
    }
}

async fn read_object_inner(
    headers: &HeaderMap,
    body: Incoming,
    idle: std::time::Duration,
) -> Result<Value, ApiError> {
    let format = format_of(headers)?;
    let buf = read_bytes_inner(headers, body, idle).await?;
    parse_object(&buf, format)
}

/// Reads the body of a PATCH (whose media types [`read_object`] does not take) as bytes,
/// within `deadline` and the same size bound.
pub async fn read_bytes(
    headers: &HeaderMap,
    body: Incoming,
    deadline: BodyDeadline,
) -> Result<Vec<u8>, ApiError> {
    let until = tokio::time::Instant::now() + deadline.total;
    match tokio::time::timeout_at(until, read_bytes_inner(headers, body, deadline.idle)).await {
        Ok(res) => res,
        Err(_) => Err(too_slow(&format!(
            "did not arrive within {}s",
            deadline.total.as_secs_f64()
        ))),
    }
}

async fn read_bytes_inner(
    headers: &HeaderMap,
    body: Incoming,
    idle: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
            drain(body).await;
        }
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = Vec::new();
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(too_slow(&format!(
                "stalled: no data for {}s",
                idle.as_secs_f64()
            )));
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                drain(body).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Reads and discards the rest of a body, bounded in size and time.
async fn drain(body: Incoming) {
    let limited = Limited::new(body, DRAIN_LIMIT);
    let _ = tokio::time::timeout(DRAIN_TIME, limited.collect()).await;
}

fn format_of(headers: &HeaderMap) -> Result<Option<Format>, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "" => Ok(None),
        "application/json" => Ok(Some(Format::Json)),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Ok(Some(Format::Yaml))
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body's media type {other:?} is not supported: send application/json or application/yaml"
            ),
        )),
    }
}

/// Decodes `bytes` as one object; `format` `None` sniffs (JSON starts with `{`).
pub fn parse_object(bytes: &[u8], format: Option<Format>) -> Result<Value, ApiError> {
    let format = format.unwrap_or_else(|| match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Json,
        _ => Format::Yaml,
    });
    let value = match format {
        Format::Json => rouse_api::decode::parse_json(bytes).map_err(|e| match e {
            rouse_api::decode::DecodeError::Malformed { reason, .. } => {
                ApiError::bad_request(format!("malformed JSON: {reason}"))
            }
            other => ApiError::bad_request(other.to_string()),
        })?,
        Format::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
            let mut docs = rouse_api::decode::parse_documents(text).map_err(|e| match e {
                rouse_api::decode::DecodeError::Malformed { reason, .. } => {
                    ApiError::bad_request(format!("malformed YAML: {reason}"))
                }
                other => ApiError::bad_request(other.to_string()),
            })?;
            match docs.len() {
                0 => return Err(ApiError::bad_request("the body holds no object")),
                1 => docs.remove(0),
                n => {
                    return Err(ApiError::bad_request(format!(
                        "the body holds {n} objects; send one object per request"
                    )));
                }
            }
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body must be an object with apiVersion, kind, metadata and spec",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_json_and_yaml() {
        let j = parse_object(br#" {"kind":"Service"}"#, None).unwrap();
        assert_eq!(j["kind"], "Service");
        let y = parse_object(b"kind: Service\nmetadata: {name: a}\n", None).unwrap();
        assert_eq!(y["metadata"]["name"], "a");
        // JSON is YAML, so a YAML content type still reads it.
        let jy = parse_object(br#"{"kind":"Route"}"#, Some(Format::Yaml)).unwrap();
        assert_eq!(jy["kind"], "Route");
    }

    #[test]
    fn refuses_bad_bodies() {
        let e = parse_object(b"{not json", Some(Format::Json)).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse_object(b"kind: [\n", None).unwrap_err();
        assert!(e.message.starts_with("malformed YAML"), "{}", e.message);
        let e = parse_object(b"a: 1\n---\nb: 2\n", None).unwrap_err();
        assert!(e.message.contains("2 objects"), "{}", e.message);
        let e = parse_object(b"", None).unwrap_err();
        assert!(e.message.contains("no object"), "{}", e.message);
        let e = parse_object(b"[1, 2]", None).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn duplicate_keys_and_deep_nesting() {
        let e = parse_object(br#"{"spec":{"x":1,"x":2}}"#, Some(Format::Json)).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains(r#"duplicate field "spec.x""#),
            "{}",
            e.message
        );
        let e = parse_object(b"spec:\n  x: 1\n  x: 2\n", None).unwrap_err();
        assert!(
            e.message.contains(r#"duplicate field "spec.x""#),
            "{}",
            e.message
        );
        let bomb = format!("x: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_object(bomb.as_bytes(), Some(Format::Yaml)).unwrap_err();
        assert!(e.message.contains("at most 64 levels"), "{}", e.message);
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert_eq!(format_of(&h).unwrap(), None);
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(format_of(&h).unwrap(), Some(Format::Json));
        h.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
        assert_eq!(format_of(&h).unwrap(), Some(Format::Yaml));
        h.insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert_eq!(
            format_of(&h).unwrap_err().code,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
