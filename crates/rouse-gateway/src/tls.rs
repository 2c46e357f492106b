//! The HTTPS listener's certificates: one per host (an Ingress's `spec.tls` entry and its
//! Secret), chosen by the client's SNI and replaced whole while serving. A name with no
//! certificate gets its handshake refused: no default certificate, so none leaks another
//! host's name.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routing::normalize_host;

/// A certificate and key that cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCertificate {
    /// `tls.crt` holds no PEM certificate, or one that does not parse.
    #[error("tls.crt: {0}")]
    Certificate(String),
    /// `tls.key` holds no PEM private key, or one ring cannot sign with.
    #[error("tls.key: {0}")]
    Key(String),
    /// The key is not the certificate's.
    #[error("tls.key does not match the certificate in tls.crt")]
    Mismatch,
}

/// A certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1),
/// as a `kubernetes.io/tls` Secret's `tls.crt` and `tls.key` hold them.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, BadCertificate> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| BadCertificate::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(BadCertificate::Certificate("no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| BadCertificate::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| BadCertificate::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| BadCertificate::Mismatch)?;
    Ok(Arc::new(certified))
}

/// The certificates by host name (lowercase; `*.example.com` covers one label under
/// `example.com`), swapped as a whole.
#[derive(Debug, Default)]
pub struct Certificates(ArcSwap<HashMap<String, Arc<CertifiedKey>>>);

impl Certificates {
    /// No certificate: every handshake is refused.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `by_host` from the next handshake on; connections already open keep theirs.
    pub fn set(&self, by_host: HashMap<String, Arc<CertifiedKey>>) {
        let by_host = by_host
            .into_iter()
            .map(|(host, key)| (normalize_host(&host), key))
            .collect();
        self.0.store(Arc::new(by_host));
    }

    /// How many host names have a certificate.
    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    /// Whether no host name has a certificate.
    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// The certificate for `name` (an SNI host name): its own, else a wildcard's for its
    /// parent domain.
    pub fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.0.load();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = map.get(&name) {
            return Some(key.clone());
        }
        let (_, parent) = name.split_once('.')?;
        map.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (an address, say) there is no name to choose by: refused.
        self.for_name(hello.server_name()?)
    }
}

/// The HTTPS listener's TLS settings: TLS 1.2 and 1.3 (ring), ALPN `h2` then `http/1.1`,
/// the certificate chosen by SNI from `certs`.
pub fn server_config(certs: Arc<Certificates>) -> Arc<rustls::ServerConfig> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn certificates_load_from_pem_and_a_wrong_key_is_refused() {
        let (cert, key) = self_signed(&["a.example.com"]);
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        let (_, other_key) = self_signed(&["b.example.com"]);
        assert_eq!(
            certified_key(cert.as_bytes(), other_key.as_bytes()).unwrap_err(),
            BadCertificate::Mismatch
        );
        assert!(matches!(
            certified_key(b"", key.as_bytes()),
            Err(BadCertificate::Certificate(_))
        ));
        assert!(matches!(
            certified_key(cert.as_bytes(), b"not a key"),
            Err(BadCertificate::Key(_))
        ));
    }

    #[test]
    fn names_choose_their_own_certificate_or_a_wildcard_and_nothing_else() {
        let (cert, key) = self_signed(&["a.example.com"]);
        let a = certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
        let (cert, key) = self_signed(&["*.apps.example.com"]);
        let wild = certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
        let certs = Certificates::new();
        assert!(certs.for_name("a.example.com").is_none());
        certs.set(HashMap::from([
            ("A.Example.com".to_string(), a.clone()),
            ("*.apps.example.com".to_string(), wild.clone()),
        ]));
        assert_eq!(certs.len(), 2);
        assert!(Arc::ptr_eq(&certs.for_name("a.EXAMPLE.com.").unwrap(), &a));
        assert!(Arc::ptr_eq(
            &certs.for_name("x.apps.example.com").unwrap(),
            &wild
        ));
        // One label only, and no fallback to some other host's certificate.
        assert!(certs.for_name("y.x.apps.example.com").is_none());
        assert!(certs.for_name("apps.example.com").is_none());
        assert!(certs.for_name("b.example.com").is_none());
    }
}
