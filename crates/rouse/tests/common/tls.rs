//! A test CA and a real TLS client (rustls, trusting only that CA) for the gateway's HTTPS
//! listener: HTTP/1.1 or h2 as ALPN chooses, SNI as asked.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A serving certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rouse test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A new certificate (a new key each time) for `hosts`.
    pub fn leaf(&self, hosts: &[&str]) -> Leaf {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A `kubernetes.io/tls` Secret holding `leaf`, as JSON.
pub fn tls_secret(namespace: &str, name: &str, leaf: &Leaf) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": b64(&leaf.cert), "tls.key": b64(&leaf.key)},
    })
}

/// What one HTTPS exchange saw.
pub struct Answer {
    /// The protocol ALPN settled on (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    /// The server's certificate (DER).
    pub peer_cert: Vec<u8>,
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One `GET path` over TLS to `addr` with SNI `sni` (and `Host: sni`), HTTP/2 when ALPN picks
/// it; `Err` when the handshake fails.
pub fn get(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(super::PATIENCE, exchange(config, addr, sni, path, headers))
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

async fn exchange(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let peer_cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let h2 = alpn.as_deref() == Some("h2");
    let uri = if h2 {
        format!("https://{sni}{path}")
    } else {
        path.to_string()
    };
    let mut req = http::Request::get(uri);
    if !h2 {
        req = req.header("host", sni);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        alpn,
        peer_cert,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The DER of the first certificate in `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}
