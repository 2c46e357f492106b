//! A container registry on loopback over HTTPS (a CA made for the test), speaking the part of
//! the OCI distribution API digest resolution uses: manifests by tag (HEAD and GET), errors
//! as the OCI error document, and Basic or bearer-token authentication with a token endpoint
//! at `/token`. Every request is recorded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rouse_kube::registry::RegistryClient;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// How the registry wants to be authenticated.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    /// Basic with this user and password on every request.
    Basic(String, String),
    /// Bearer tokens from `/token`, which wants Basic with this user and password when
    /// given (else hands tokens to anyone).
    Bearer(Option<(String, String)>),
}

/// One request: method, path with query, `Authorization`.
pub type Seen = (String, String, Option<String>);

#[derive(Default)]
pub struct State {
    /// `repository:tag` → the manifest's bytes.
    pub manifests: BTreeMap<String, Vec<u8>>,
    pub auth: Auth,
    /// Leave `Docker-Content-Digest` out of the answers (the client hashes the manifest).
    pub without_digest_header: bool,
    /// Never answer manifest requests (a registry hanging).
    pub stall: bool,
    pub seen: Vec<Seen>,
}

pub struct TestRegistry {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub state: Arc<Mutex<State>>,
}

const TOKEN: &str = "t0ken-for-the-test";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test registry CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(addr, &st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TestRegistry {
            addr,
            ca_pem: ca.pem(),
            state,
        }
    }

    /// A client trusting this registry's CA only.
    pub fn client(&self) -> RegistryClient {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        RegistryClient::new(roots).unwrap()
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stores a manifest for `repository:tag`; its digest (`sha256:…`).
    pub fn push(&self, repository_tag: &str, manifest: &[u8]) -> String {
        self.state
            .lock()
            .unwrap()
            .manifests
            .insert(repository_tag.to_string(), manifest.to_vec());
        format!("sha256:{}", sha256_hex(manifest))
    }

    pub fn set_auth(&self, auth: Auth) {
        self.state.lock().unwrap().auth = auth;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.header("content-length", body.len().to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn error(
    status: u16,
    code: &str,
    message: &str,
    extra: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let body = json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(extra.iter().cloned());
    answer(status, &headers, body.into_bytes())
}

async fn handle(
    addr: SocketAddr,
    st: &Mutex<State>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let full = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.to_string());
    let authz = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let (auth, stall) = {
        let mut s = st.lock().unwrap();
        s.seen.push((method.clone(), full, authz.clone()));
        (s.auth.clone(), s.stall)
    };
    if path == "/token" {
        let ok = match &auth {
            Auth::Bearer(Some((u, p))) => authz.as_deref() == Some(basic(u, p).as_str()),
            _ => true,
        };
        if !ok {
            return error(401, "UNAUTHORIZED", "bad credentials", &[]);
        }
        return answer(200, &[], json!({"token": TOKEN}).to_string().into_bytes());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(404, "NOT_FOUND", "no such endpoint", &[]);
    };
    let Some((repo, reference)) = rest.rsplit_once("/manifests/") else {
        return error(404, "NOT_FOUND", "no such endpoint", &[]);
    };
    let challenge = match &auth {
        Auth::Anonymous => None,
        Auth::Basic(u, p) => (authz.as_deref() != Some(basic(u, p).as_str()))
            .then(|| r#"Basic realm="test registry""#.to_string()),
        Auth::Bearer(_) => (authz.as_deref() != Some(format!("Bearer {TOKEN}").as_str())).then(|| {
            format!(
                r#"Bearer realm="https://{addr}/token",service="test-registry",scope="repository:{repo}:pull""#
            )
        }),
    };
    if let Some(c) = challenge {
        return error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            &[("www-authenticate", c)],
        );
    }
    if stall {
        std::future::pending::<()>().await;
    }
    let found = st
        .lock()
        .unwrap()
        .manifests
        .get(&format!("{repo}:{reference}"))
        .cloned();
    let Some(manifest) = found else {
        return error(404, "MANIFEST_UNKNOWN", "manifest unknown", &[]);
    };
    let mut headers = vec![("content-type", MANIFEST_TYPE.to_string())];
    if !st.lock().unwrap().without_digest_header {
        headers.push((
            "docker-content-digest",
            format!("sha256:{}", sha256_hex(&manifest)),
        ));
    }
    answer(200, &headers, manifest)
}
