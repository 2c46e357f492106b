//! A small HTTP/1 client for the Rouse API (hyper, pooled), reading failures as Kubernetes
//! `Status` objects.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one request may take before the CLI gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the API address.
    #[error("cannot reach the Rouse API at {url}: is `rouse serve` running?")]
    Unreachable { url: String },
    /// The server refused the request; `reason` and `message` come from its `Status`.
    #[error("Error from server ({reason}): {message}")]
    Server {
        code: u16,
        reason: String,
        message: String,
    },
    /// The exchange failed some other way (timeout, broken connection, garbage reply).
    #[error("talking to the Rouse API at {url}: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// The HTTP code of a server refusal.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// True for a lost compare-and-swap (409 Conflict).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Server { code: 409, reason, .. } if reason == "Conflict")
    }

    /// True when a create found the name taken (409 AlreadyExists).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Server { code: 409, reason, .. } if reason == "AlreadyExists")
    }
}

/// A client of one Rouse API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    /// `Authorization: Bearer <token>`, sent with every request.
    auth: Option<header::HeaderValue>,
    /// Why no token is sent, added to a 401's message.
    no_token: Option<String>,
    /// For an `https://` API: the connector trusting its CA.
    tls: Option<tokio_rustls::TlsConnector>,
}

/// The API token the CLI sends: `ROUSE_TOKEN`, else `token_file`, else `<data_dir>/api-token`.
/// `Err` names where the token was looked for and why it is not usable (missing, or readable by
/// others).
pub fn find_token(token_file: Option<&Path>, data_dir: &Path) -> Result<String, String> {
    if let Ok(t) = std::env::var("ROUSE_TOKEN") {
        let t = t.trim();
        if !t.is_empty() {
            return Ok(t.to_string());
        }
    }
    let path = match token_file {
        Some(p) => p.to_path_buf(),
        None => data_dir.join(crate::api::auth::TOKEN_FILE),
    };
    if !path.exists() {
        return Err(format!(
            "no API token: {} does not exist (point --data-dir or ROUSE_DATA_DIR at `rouse serve`'s data dir, or pass --token-file FILE or ROUSE_TOKEN)",
            path.display()
        ));
    }
    crate::api::auth::read_token_file(&path).map_err(|e| e.to_string())
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port`, optionally with a path prefix).
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("invalid API URL {base:?}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(format!(
                "invalid API URL {base:?}: expected http://HOST:PORT or https://HOST:PORT"
            ));
        }
        let http = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            base,
            http,
            auth: None,
            no_token: None,
            tls: None,
        })
    }

    /// True when the API URL is `https://`.
    pub fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// Trusts the CA certificates in `ca_pem` (PEM) for an `https://` API.
    pub fn with_ca(mut self, ca_pem: &[u8]) -> Result<Self, String> {
        let config = crate::api::tls::client_config(ca_pem).map_err(|e| e.to_string())?;
        self.tls = Some(tokio_rustls::TlsConnector::from(config));
        Ok(self)
    }

    /// Sends the token found (or, when none was, says why on a 401).
    pub fn with_found_token(self, found: Result<String, String>) -> Self {
        match found {
            Ok(token) => self.with_token(token),
            Err(why) => Self {
                no_token: Some(why),
                ..self
            },
        }
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: String) -> Self {
        let mut value = header::HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| header::HeaderValue::from_static("Bearer invalid"));
        value.set_sensitive(true);
        self.auth = Some(value);
        self
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// Sends `body` (JSON) with `method` to `path`; the reply's JSON on success.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON values serialize")))
            .unwrap_or_default();
        let ct = body.map(|_| "application/json");
        let (code, reply) = self.raw(method, path, ct, bytes).await?;
        if !code.is_success() {
            let mut e = server_error(code, &reply);
            if let (
                ClientError::Server {
                    code: 401, message, ..
                },
                Some(why),
            ) = (&mut e, &self.no_token)
            {
                message.push_str(&format!("; {why}"));
            }
            return Err(e);
        }
        serde_json::from_slice(&reply).map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            message: format!("the reply is not JSON: {e}"),
        })
    }

    /// One exchange with the raw body in and out; the status code is not interpreted.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if self.is_https() {
            return tokio::time::timeout(REQUEST_TIMEOUT, self.exchange_tls(req))
                .await
                .map_err(|_| ClientError::Transport {
                    url: self.base.clone(),
                    message: format!("no reply within {}s", REQUEST_TIMEOUT.as_secs()),
                })?;
        }
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Unreachable {
                        url: self.base.clone(),
                    }
                } else {
                    ClientError::Transport {
                        url: self.base.clone(),
                        message: error_chain(&e),
                    }
                }
            })?;
            let code = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    url: self.base.clone(),
                    message: format!("reading the reply: {e}"),
                })?
                .to_bytes();
            Ok((code, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Transport {
                url: self.base.clone(),
                message: format!("no reply within {}s", REQUEST_TIMEOUT.as_secs()),
            })?
    }
}

impl ApiClient {
    /// GETs `path` (a watch) and returns the body unread, to be read as it streams; a
    /// non-success answer is an error. Only the connection and the head are time-bounded.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(header::ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let head = async {
            if self.is_https() {
                self.send_tls(req).await
            } else {
                self.http
                    .request(req)
                    .await
                    .map_err(|e| ClientError::Transport {
                        url: self.base.clone(),
                        message: error_chain(&e),
                    })
            }
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, head)
            .await
            .map_err(|_| ClientError::Transport {
                url: self.base.clone(),
                message: format!("no reply within {}s", REQUEST_TIMEOUT.as_secs()),
            })??;
        if !resp.status().is_success() {
            return Err(ClientError::Transport {
                url: self.base.clone(),
                message: format!("the watch was refused: {}", resp.status()),
            });
        }
        Ok(resp.into_body())
    }

    /// One request over a new TLS connection (the CLI makes few requests; no pool needed).
    async fn exchange_tls(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let transport = |message: String| ClientError::Transport {
            url: self.base.clone(),
            message,
        };
        let resp = self.send_tls(req).await?;
        let code = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(format!("reading the reply: {e}")))?
            .to_bytes();
        Ok((code, bytes))
    }

    /// Sends a request over a new TLS connection; the response's body is left to the caller.
    async fn send_tls(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let transport = |message: String| ClientError::Transport {
            url: self.base.clone(),
            message,
        };
        let Some(tls) = &self.tls else {
            return Err(transport(
                "no CA to verify the API's certificate: set ROUSE_CA_FILE or point --data-dir at `rouse serve --tls`'s data dir".to_string(),
            ));
        };
        let uri = req.uri().clone();
        let host = uri
            .host()
            .unwrap_or("localhost")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base.clone(),
            })?;
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| transport(format!("invalid host {host:?}: {e}")))?;
        let stream = tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| transport(error_chain(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| transport(error_chain(&e)))
    }
}

/// The CA an `https://` API is verified against: `ROUSE_CA_FILE`, else the CA `rouse serve
/// --tls` keeps in `<data_dir>/tls/ca.crt`.
pub fn find_ca(data_dir: &Path) -> Option<Vec<u8>> {
    let path = std::env::var_os("ROUSE_CA_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::api::tls::ca_cert_path(data_dir));
    std::fs::read(path).ok()
}

/// A refusal, from the `Status` in the body when there is one.
fn server_error(code: StatusCode, body: &[u8]) -> ClientError {
    let status: Option<Value> = serde_json::from_slice(body).ok();
    let field = |f: &str| {
        status
            .as_ref()
            .and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let reason = field("reason").unwrap_or_else(|| {
        code.canonical_reason()
            .unwrap_or("Unknown")
            .replace(' ', "")
    });
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if text.is_empty() {
            format!("the server answered {code}")
        } else {
            text
        }
    });
    ClientError::Server {
        code: code.as_u16(),
        reason,
        message,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_bodies() {
        let body = br#"{"kind":"Status","status":"Failure","reason":"NotFound","code":404,"message":"services.serving.knative.dev \"x\" not found"}"#;
        let e = server_error(StatusCode::NOT_FOUND, body);
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "Error from server (NotFound): services.serving.knative.dev \"x\" not found"
        );
        let e = server_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(
            e.to_string(),
            "Error from server (BadGateway): upstream down"
        );
    }

    #[test]
    fn checks_the_base_url() {
        assert!(ApiClient::new("http://127.0.0.1:8081/").is_ok());
        assert!(ApiClient::new("https://127.0.0.1:8081").is_ok());
        assert!(ApiClient::new("ftp://127.0.0.1:8081").is_err());
        assert!(ApiClient::new("127.0.0.1:8081").is_err());
    }
}
