//! A small Docker Engine API client over its Unix socket: only the calls the container
//! backend makes (ping, image inspect and pull, container create/start/stop/kill/wait/logs,
//! exec, list by label, remove). One connection per call; the engine is local.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The API version spoken (Docker Engine 20.10 and later understand it).
const API_VERSION: &str = "v1.41";
/// The default socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long connecting and a plain (non-streaming) call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of an exec's output kept (its end).
const EXEC_OUTPUT_KEPT: usize = 4096;
/// The pause between looks at an exec whose output ended but which the engine still reports
/// running.
const EXEC_POLL: Duration = Duration::from_millis(5);

/// What went wrong talking to Docker Engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket cannot be reached: no engine running, or no permission.
    #[error("cannot reach Docker Engine at {socket}: {error}")]
    Unreachable {
        /// The socket tried.
        socket: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("Docker Engine connection: {0}")]
    Http(String),
    /// The engine refused the call.
    #[error("{message}")]
    Api {
        /// Its HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// No answer in time.
    #[error("Docker Engine did not answer within {0:?}")]
    Timeout(Duration),
}

impl DockerError {
    /// Whether the engine said the object does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Api { status: 404, .. })
    }
}

/// A client for the engine at one Unix socket.
#[derive(Clone, Debug)]
pub(crate) struct DockerClient {
    socket: PathBuf,
}

/// The socket `DOCKER_HOST` names when it is `unix://…`, else the default one.
pub(crate) fn default_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Percent-encodes a path segment or query value (everything but unreserved characters and
/// the `/` `:` `@` an image name holds).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DockerClient {
    pub(crate) fn new(socket: PathBuf) -> Self {
        DockerClient { socket }
    }

    /// Sends a request and returns the response head with its body still streaming.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, DockerError> {
        let stream =
            tokio::time::timeout(CALL_TIMEOUT, tokio::net::UnixStream::connect(&self.socket))
                .await
                .map_err(|_| DockerError::Timeout(CALL_TIMEOUT))?
                .map_err(|error| DockerError::Unreachable {
                    socket: self.socket.display().to_string(),
                    error,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| DockerError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("/{API_VERSION}{path_and_query}"))
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| DockerError::Http(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| DockerError::Http(e.to_string()))
    }

    /// A call whose whole answer is JSON (or empty), with a timeout. Errors carry the
    /// engine's message.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, DockerError> {
        let work = async {
            let resp = self.send(method, path_and_query, body).await?;
            let status = resp.status();
            let bytes = read_all(resp.into_body()).await?;
            answer(status, &bytes)
        };
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| DockerError::Timeout(CALL_TIMEOUT))?
    }

    pub(crate) async fn ping(&self) -> Result<(), DockerError> {
        self.call(Method::GET, "/_ping", None).await.map(drop)
    }

    /// The image's inspect document.
    pub(crate) async fn inspect_image(&self, image: &str) -> Result<Value, DockerError> {
        self.call(
            Method::GET,
            &format!("/images/{}/json", encode(image)),
            None,
        )
        .await
    }

    /// Pulls an image; resolves once the pull ends. The engine reports a failed pull inside
    /// its progress stream, so that is read to the end.
    pub(crate) async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let (name, tag) = split_reference(image);
        let resp = self
            .send(
                Method::POST,
                &format!(
                    "/images/create?fromImage={}&tag={}",
                    encode(name),
                    encode(tag)
                ),
                None,
            )
            .await?;
        let status = resp.status();
        let bytes = read_all(resp.into_body()).await?;
        answer(status, &bytes)?;
        for line in bytes.split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<Value>(line)
                && let Some(err) = v.get("error").and_then(Value::as_str)
            {
                return Err(DockerError::Api {
                    status: 500,
                    message: err.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Creates a container; returns its id.
    pub(crate) async fn create(&self, name: &str, config: &Value) -> Result<String, DockerError> {
        let v = self
            .call(
                Method::POST,
                &format!("/containers/create?name={}", encode(name)),
                Some(config),
            )
            .await?;
        v["Id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| DockerError::Http("create answered no Id".into()))
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.call(Method::POST, &format!("/containers/{id}/start"), None)
            .await
            .map(drop)
    }

    pub(crate) async fn inspect(&self, id: &str) -> Result<Value, DockerError> {
        self.call(Method::GET, &format!("/containers/{id}/json"), None)
            .await
    }

    /// Asks the container to stop: its stop signal, then SIGKILL after `grace`. Resolves once
    /// it stopped.
    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let secs = grace.as_secs().max(1);
        let work = async {
            let resp = self
                .send(
                    Method::POST,
                    &format!("/containers/{id}/stop?t={secs}"),
                    None,
                )
                .await?;
            let status = resp.status();
            let bytes = read_all(resp.into_body()).await?;
            // 304: already stopped.
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Value::Null);
            }
            answer(status, &bytes)
        };
        let limit = grace + CALL_TIMEOUT;
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| DockerError::Timeout(limit))?
            .map(drop)
    }

    pub(crate) async fn kill(&self, id: &str) -> Result<(), DockerError> {
        self.call(Method::POST, &format!("/containers/{id}/kill"), None)
            .await
            .map(drop)
    }

    /// Waits (without a timeout) until the container is not running; its exit code.
    pub(crate) async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        let resp = self
            .send(Method::POST, &format!("/containers/{id}/wait"), None)
            .await?;
        let status = resp.status();
        let bytes = read_all(resp.into_body()).await?;
        let v = answer(status, &bytes)?;
        if let Some(msg) = v["Error"]["Message"].as_str().filter(|m| !m.is_empty()) {
            return Err(DockerError::Api {
                status: 500,
                message: msg.to_string(),
            });
        }
        v["StatusCode"]
            .as_i64()
            .ok_or_else(|| DockerError::Http("wait answered no StatusCode".into()))
    }

    /// Removes a container, stopping it first if it runs. A missing one is fine.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), DockerError> {
        match self
            .call(Method::DELETE, &format!("/containers/{id}?force=1"), None)
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Ids and names of the containers (running or not) with all these `key=value` labels.
    pub(crate) async fn list(
        &self,
        labels: &[String],
    ) -> Result<Vec<(String, String)>, DockerError> {
        let filters = json!({ "label": labels }).to_string();
        let v = self
            .call(
                Method::GET,
                &format!("/containers/json?all=1&filters={}", encode(&filters)),
                None,
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let id = c["Id"].as_str()?.to_string();
                let name = c["Names"][0].as_str().unwrap_or("").trim_start_matches('/');
                Some((id, name.to_string()))
            })
            .collect())
    }

    /// Follows the container's stdout and stderr from its start, appending them to `out`,
    /// until the container stops (or the connection breaks).
    pub(crate) async fn follow_logs(
        &self,
        id: &str,
        mut out: std::fs::File,
    ) -> Result<(), DockerError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/containers/{id}/logs?follow=1&stdout=1&stderr=1"),
                None,
            )
            .await?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let bytes = read_all(body).await?;
            return answer(status, &bytes).map(drop);
        }
        demux(body, |payload| {
            if let Err(e) = out.write_all(payload) {
                tracing::warn!(container = id, error = %e, "cannot write a container's log");
            }
        })
        .await
    }

    /// Runs `command` inside the running container `id` (its environment plus `env`, in `dir`
    /// or its working directory) and waits for it to end: its exit code (`None` when the
    /// engine reports none) and the end of its stdout and stderr. No timeout: the caller
    /// drops the future when the command takes too long (the command itself then runs on in
    /// the container until it ends; the engine offers no way to stop an exec).
    pub(crate) async fn exec(
        &self,
        id: &str,
        command: &[String],
        env: &[(String, String)],
        dir: Option<&Path>,
    ) -> Result<(Option<i64>, String), DockerError> {
        let mut config = json!({
            "Cmd": command,
            "AttachStdin": false,
            "AttachStdout": true,
            "AttachStderr": true,
            "Tty": false,
        });
        if !env.is_empty() {
            let list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            config["Env"] = json!(list);
        }
        if let Some(dir) = dir {
            config["WorkingDir"] = json!(dir.display().to_string());
        }
        let created = self
            .call(
                Method::POST,
                &format!("/containers/{id}/exec"),
                Some(&config),
            )
            .await?;
        let exec_id = created["Id"]
            .as_str()
            .ok_or_else(|| DockerError::Http("exec create answered no Id".into()))?
            .to_string();
        // Attached: the engine streams the output and ends the answer when the command ends.
        let resp = self
            .send(
                Method::POST,
                &format!("/exec/{exec_id}/start"),
                Some(&json!({"Detach": false, "Tty": false})),
            )
            .await?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let bytes = read_all(body).await?;
            return answer(status, &bytes).map(|_| (None, String::new()));
        }
        let mut output = Vec::new();
        demux(body, |payload| {
            output.extend_from_slice(payload);
            if output.len() > 2 * EXEC_OUTPUT_KEPT {
                output.drain(..output.len() - EXEC_OUTPUT_KEPT);
            }
        })
        .await?;
        let output = String::from_utf8_lossy(&output).into_owned();
        loop {
            let v = self
                .call(Method::GET, &format!("/exec/{exec_id}/json"), None)
                .await?;
            if v["Running"].as_bool() != Some(true) {
                return Ok((v["ExitCode"].as_i64(), output));
            }
            tokio::time::sleep(EXEC_POLL).await;
        }
    }
}

/// Reads a multiplexed stdout/stderr stream (frames: stream byte, 3 zero bytes, big-endian
/// length, payload) to its end, handing each payload to `out`.
async fn demux(mut body: Incoming, mut out: impl FnMut(&[u8])) -> Result<(), DockerError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| DockerError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            buf.advance(8);
            let payload = buf.split_to(len);
            out(&payload);
        }
    }
    Ok(())
}

/// The JSON of a successful answer, or the engine's message as an error.
/// A whole response body.
async fn read_all(body: Incoming) -> Result<Bytes, DockerError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| DockerError::Http(e.to_string()))?
        .to_bytes())
}

fn answer(status: StatusCode, bytes: &[u8]) -> Result<Value, DockerError> {
    if status.is_success() {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        // `/_ping` answers plain "OK".
        return Ok(serde_json::from_slice(bytes).unwrap_or(Value::Null));
    }
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string());
    Err(DockerError::Api {
        status: status.as_u16(),
        message,
    })
}

/// An image reference's name and tag (or digest): `repo:tag` → (`repo`, `tag`),
/// `repo@sha256:…` → (`repo`, `sha256:…`), `repo` → (`repo`, `latest`).
pub(crate) fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("hello"), ("hello", "latest"));
        assert_eq!(split_reference("hello:1.2"), ("hello", "1.2"));
        assert_eq!(
            split_reference("localhost:5000/a/b"),
            ("localhost:5000/a/b", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b", "v1")
        );
        assert_eq!(
            split_reference("gcr.io/x/y@sha256:abc"),
            ("gcr.io/x/y", "sha256:abc")
        );
    }

    #[test]
    fn encoding_keeps_image_names_and_escapes_the_rest() {
        assert_eq!(encode("gcr.io/a/b:v1@sha256:0f"), "gcr.io/a/b:v1@sha256:0f");
        assert_eq!(encode("a b?c&d"), "a%20b%3Fc%26d");
        assert_eq!(encode(r#"{"x":1}"#), "%7B%22x%22:1%7D");
    }
}
