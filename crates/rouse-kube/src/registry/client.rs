//! The OCI distribution API's one call Rouse needs: a tag's manifest digest. `HEAD
//! /v2/<repository>/manifests/<tag>` (the digest in `Docker-Content-Digest`), falling back to
//! `GET` (the header, else the sha256 of the manifest), over HTTPS only; a 401 is answered
//! once, with Basic credentials or a bearer token fetched from the challenge's realm.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, HOST, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio_rustls::TlsConnector;

use super::auth::{AuthError, Challenge, Credential, parse_challenge};
use super::reference::{ImageRef, valid_digest};

/// The manifest types asked for: multi-platform indexes first (their digest is what a pod
/// pulls on any platform), then single manifests.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// The digest header registries answer manifests with.
pub const DIGEST_HEADER: &str = "docker-content-digest";
/// Registries may refuse manifests over 4 MiB (OCI distribution spec): nothing larger is read.
const MAX_MANIFEST: usize = 4 << 20;
/// A token answer is small.
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// Why a digest could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No connection, TLS failure, or the connection broke.
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    /// The registry (or its token service) answered with an error.
    #[error("{method} {url}: {detail}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        detail: String,
    },
    /// The registry asked for credentials no pull Secret has, or sent an unusable answer.
    #[error("{0}")]
    Protocol(String),
    /// The trust store could not be read.
    #[error("no CA certificates to trust: {0} (point SSL_CERT_FILE at a PEM bundle)")]
    NoRoots(String),
}

/// A registry client trusting a fixed set of CAs.
#[derive(Clone)]
pub struct RegistryClient {
    tls: TlsConnector,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl RegistryClient {
    /// A client trusting `roots` only.
    pub fn new(roots: rustls::RootCertStore) -> Result<Self, RegistryError> {
        if roots.is_empty() {
            return Err(RegistryError::NoRoots("the trust store is empty".into()));
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::NoRoots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(RegistryClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// A client trusting the system's CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else
    /// the usual bundle paths), read once, now.
    pub fn with_system_roots() -> Result<Self, RegistryError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or("none found".to_string(), |e| e.to_string());
            return Err(RegistryError::NoRoots(why));
        }
        Self::new(roots)
    }

    /// The digest of `image`'s manifest as `registry/repository@sha256:…`, authenticating
    /// with `credential` when the registry asks.
    pub async fn digest(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let url = format!(
            "https://{}/v2/{}/manifests/{}",
            image.api_host(),
            image.repository,
            image.manifest_reference()
        );
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| RegistryError::Protocol(format!("{url}: {e}")))?;
        let mut authorization: Option<String> = None;
        let manifest = |method: &Method, authorization: Option<String>| {
            let (method, uri) = (method.clone(), uri.clone());
            async move {
                self.send(
                    &method,
                    &uri,
                    authorization.as_deref(),
                    Some(MANIFEST_TYPES),
                    MAX_MANIFEST,
                )
                .await
            }
        };
        for method in [Method::HEAD, Method::GET] {
            let mut answer = manifest(&method, authorization.clone()).await?;
            if answer.status == StatusCode::UNAUTHORIZED && authorization.is_none() {
                authorization = Some(self.authorize(&answer.headers, image, credential).await?);
                answer = manifest(&method, authorization.clone()).await?;
            }
            if answer.status.is_success() {
                let header = answer
                    .headers
                    .get(DIGEST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|d| valid_digest(d));
                if let Some(d) = header {
                    return Ok(format!("{}@{d}", image.name()));
                }
                if method == Method::GET {
                    let sum = ring::digest::digest(&ring::digest::SHA256, &answer.body);
                    let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                    return Ok(format!("{}@sha256:{hex}", image.name()));
                }
                // A HEAD without the digest: the GET has the manifest to hash.
            } else if method == Method::GET {
                return Err(status_error(&method, &url, &answer));
            }
            // A failed HEAD is asked again as GET, whose body says why.
        }
        unreachable!("the GET always returns")
    }

    /// The `Authorization` value answering a 401's challenge.
    async fn authorize(
        &self,
        headers: &HeaderMap,
        image: &ImageRef,
        credential: Option<&Credential>,
    ) -> Result<String, RegistryError> {
        let header = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::Protocol(format!(
                    "{} answered 401 Unauthorized without a WWW-Authenticate challenge",
                    image.registry
                ))
            })?;
        match parse_challenge(header)? {
            Challenge::Basic => credential
                .and_then(Credential::basic_header)
                .ok_or_else(|| {
                    RegistryError::Protocol(format!(
                        "{} asks for a user name and password, and no image pull Secret has one \
                     for it",
                        image.registry
                    ))
                }),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                if let Some(Credential::Token(t)) = credential {
                    return Ok(format!("Bearer {t}"));
                }
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", image.repository));
                let mut query = Vec::new();
                if let Some(s) = service {
                    query.push(format!("service={}", percent_encode(&s)));
                }
                query.push(format!("scope={}", percent_encode(&scope)));
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{sep}{}", query.join("&"));
                let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| {
                    RegistryError::Protocol(format!("token realm {realm:?}: {e}"))
                })?;
                let basic = credential.and_then(Credential::basic_header);
                let answer = self
                    .send(&Method::GET, &uri, basic.as_deref(), None, MAX_TOKEN_ANSWER)
                    .await?;
                if !answer.status.is_success() {
                    return Err(status_error(&Method::GET, &url, &answer));
                }
                let t: TokenAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
                    RegistryError::Protocol(format!("GET {url}: the token answer: {e}"))
                })?;
                let token = if t.token.is_empty() {
                    t.access_token
                } else {
                    t.token
                };
                if token.is_empty() {
                    return Err(RegistryError::Protocol(format!(
                        "GET {url}: the token answer has no token"
                    )));
                }
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// One request on a fresh HTTPS connection (digests are resolved once per revision:
    /// nothing to pool).
    async fn send(
        &self,
        method: &Method,
        uri: &Uri,
        authorization: Option<&str>,
        accept: Option<&str>,
        limit: usize,
    ) -> Result<Answer, RegistryError> {
        let transport = |reason: String| RegistryError::Transport {
            method: method.clone(),
            url: uri.to_string(),
            reason,
        };
        if uri.scheme_str() != Some("https") {
            return Err(transport("only HTTPS is spoken to registries".into()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| transport("no host".into()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| transport(format!("bad host name: {e}")))?;
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, authority.as_str())
            .header(USER_AGENT, concat!("rouse/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        conn.abort();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// The registry's own words when its answer carries the OCI error document, else the status.
fn status_error(method: &Method, url: &str, answer: &Answer) -> RegistryError {
    let listed = serde_json::from_slice::<ErrorAnswer>(&answer.body)
        .ok()
        .filter(|e| !e.errors.is_empty())
        .map(|e| {
            e.errors
                .iter()
                .map(|x| format!("{}: {}", x.code, x.message))
                .collect::<Vec<_>>()
                .join("; ")
        });
    RegistryError::Status {
        method: method.clone(),
        url: url.to_string(),
        status: answer.status,
        detail: listed.unwrap_or_else(|| format!("unexpected status code {}", answer.status)),
    }
}

/// RFC 3986 query encoding: unreserved characters as they are, every other byte `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("repository:library/nginx:pull"),
            "repository%3Alibrary%2Fnginx%3Apull"
        );
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn an_empty_trust_store_is_refused() {
        let e = RegistryClient::new(rustls::RootCertStore::empty())
            .err()
            .unwrap();
        assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
    }
}
