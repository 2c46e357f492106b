//! TLS for the API: the operator's certificate and key (`--tls-cert`/`--tls-key`), or a CA of
//! Rouse's own in the data dir that signs a fresh serving certificate at each start (for
//! `localhost`, the loopback addresses and the listen address). The CLI and the kubeconfig trust
//! that CA.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the generated CA lives, inside the data dir.
pub const TLS_DIR: &str = "tls";
/// The generated CA's certificate (PEM): what clients trust.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The generated CA's private key (PEM, mode 0600).
const CA_KEY_FILE: &str = "ca.key";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("generating the API's certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A server TLS config, and the PEM of the CA clients should trust when Rouse made it.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_pem: Option<String>,
}

/// The CA certificate file in `data_dir` (present once `--tls` ran).
pub fn ca_cert_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR).join(CA_CERT_FILE)
}

/// ring, not aws-lc-rs: it builds without cmake or nasm and keeps the build small. (rustls
/// deprecates it for lacking post-quantum key exchange, which a local API can do without.)
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server config from PEM files given by the operator.
pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    Ok(ServerTls {
        config: server_config(chain, key)?,
        ca_pem: None,
    })
}

/// A server config whose certificate is signed by the data dir's CA (made on first use), for
/// localhost, the loopback addresses, the listen address and `extra_names`.
pub fn generated(
    data_dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
) -> Result<ServerTls, TlsError> {
    let dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = if key_path.exists() {
        let pem =
            crate::api::auth::read_private_file(&key_path).map_err(|e| file_err(&key_path, e))?;
        rcgen::KeyPair::from_pem(&pem).map_err(gen_err)?
    } else {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        write_private(&key_path, &key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
        let _ = std::fs::remove_file(&cert_path);
        key
    };
    let ca_params = ca_params()?;
    if !cert_path.exists() {
        let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
        write_private(&cert_path, &ca_cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    }
    let ca_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names).map_err(gen_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rouse API");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let serving_key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let serving = params.signed_by(&serving_key, &issuer).map_err(gen_err)?;
    let key = PrivateKeyDer::try_from(serving_key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| file_err(&cert_path, e))?;
    Ok(ServerTls {
        config: server_config(vec![serving.der().clone(), ca_der], key)?,
        ca_pem: Some(ca_pem),
    })
}

/// The CA's identity; the same every start, so certificates it signs chain to the stored
/// `ca.crt` (same subject, same key).
fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rouse API CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config trusting only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Config(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config("no CA certificate to trust".into()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Writes a new owner-only file (temporary name, then renamed into place).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let res = write();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ca_is_kept_and_signs_a_serving_cert() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let first = generated(dir.path(), listen, &[]).unwrap();
        let second = generated(dir.path(), listen, &["api.example.com".to_string()]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        let ca = first.ca_pem.unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(client_config(ca.as_bytes()).is_ok());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(TLS_DIR).join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
