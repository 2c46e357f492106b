//! The webhook's own CA and serving certificate, kept in a Secret so both controller replicas
//! and restarts share them, and renewed before they expire.
//!
//! The Secret holds Knative's keys (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`) plus
//! the CA's key (`ca-key.pem`), so a new serving certificate can be issued without a new CA.
//! Validity is recorded in annotations (the certificates are Rouse's own; a Secret without
//! them, such as one left by Knative, is replaced). The CA lives a year and is replaced a
//! month before it expires; `ca-cert.pem` is the CA bundle the API server trusts: the
//! current CA first, then the previous one while it may still be in use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The Secret's name in the system namespace (Knative's).
pub const SECRET_NAME: &str = "webhook-certs";
/// The CA bundle the API server trusts (current CA first).
pub const CA_CERT: &str = "ca-cert.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca-key.pem";
/// The serving certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The serving certificate's private key.
pub const SERVER_KEY: &str = "server-key.pem";

/// When the current CA expires (seconds since the epoch).
const CA_NOT_AFTER: &str = "rouse.knative.dev/ca-not-after";
/// When the serving certificate expires (seconds since the epoch).
const CERT_NOT_AFTER: &str = "rouse.knative.dev/cert-not-after";
/// The serving certificate's names, comma-separated.
const CERT_NAMES: &str = "rouse.knative.dev/cert-names";

/// How long certificates live and how early they are replaced.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub ca: Duration,
    pub ca_renew_before: Duration,
    pub cert: Duration,
    pub cert_renew_before: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            ca: Duration::from_secs(365 * DAY),
            ca_renew_before: Duration::from_secs(30 * DAY),
            cert: Duration::from_secs(7 * DAY),
            cert_renew_before: Duration::from_secs(2 * DAY),
        }
    }
}

/// Why certificates could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the webhook's certificates: {0}")]
    Generate(String),
    #[error("the webhook's certificate does not load: {0}")]
    Load(String),
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// The CA and serving certificate, as kept in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certs {
    /// Current CA first, then the previous one while it is valid.
    pub ca_bundle_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the epoch.
    pub ca_not_after: u64,
    pub cert_not_after: u64,
    /// The serving certificate's names (DNS names or IP addresses).
    pub names: Vec<String>,
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn datetime(secs: u64) -> Result<time::OffsetDateTime, CertError> {
    let secs = i64::try_from(secs).map_err(|_| CertError::Generate("time out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CertError::Generate(e.to_string()))
}

/// The CA's identity, derived from its expiry so every CA is distinct and the issuer can be
/// rebuilt from the Secret to sign new serving certificates.
fn ca_params(not_before: u64, not_after: u64) -> Result<rcgen::CertificateParams, CertError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("rouse webhook CA {not_after}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = datetime(not_before)?;
    params.not_after = datetime(not_after)?;
    Ok(params)
}

/// A new CA valid from `now` (minus a few minutes of clock skew): (cert PEM, key PEM, expiry).
fn new_ca(now: u64, life: &Lifetimes) -> Result<(String, String, u64), CertError> {
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let not_after = now + life.ca.as_secs();
    let cert = ca_params(now.saturating_sub(300), not_after)?
        .self_signed(&key)
        .map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A serving certificate for `names` signed by the CA: (cert PEM, key PEM, expiry).
fn new_serving(
    ca_key_pem: &str,
    ca_not_after: u64,
    names: &[String],
    now: u64,
    life: &Lifetimes,
) -> Result<(String, String, u64), CertError> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(gen_err)?;
    let issuer = rcgen::Issuer::new(ca_params(0, ca_not_after)?, ca_key);
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "webhook".into()),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    // Never outlive the CA that signs it.
    let not_after = (now + life.cert.as_secs()).min(ca_not_after);
    params.not_before = datetime(now.saturating_sub(300))?;
    params.not_after = datetime(not_after)?;
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// The first certificate of a PEM bundle.
fn first_pem(bundle: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    match bundle.find(end) {
        Some(i) => format!("{}\n", &bundle[..i + end.len()]),
        None => bundle.to_string(),
    }
}

/// What to keep in the Secret at `now` for a webhook reached under `names`: `None` when
/// `current` is fine; else new certificates (a new CA only when there is none or it is
/// about to expire; the old CA stays in the bundle meanwhile).
pub fn plan(
    current: Option<&Certs>,
    names: &[String],
    now: SystemTime,
    life: &Lifetimes,
) -> Result<Option<Certs>, CertError> {
    let now = epoch_secs(now);
    let renew_ca = current.is_none_or(|c| now + life.ca_renew_before.as_secs() >= c.ca_not_after);
    let covers = |c: &Certs| names.iter().all(|n| c.names.contains(n));
    let renew_cert = renew_ca
        || current.is_none_or(|c| {
            now + life.cert_renew_before.as_secs() >= c.cert_not_after || !covers(c)
        });
    if !renew_cert {
        return Ok(None);
    }
    let (ca_bundle_pem, ca_key_pem, ca_not_after) = match current {
        Some(c) if !renew_ca => (
            c.ca_bundle_pem.clone(),
            c.ca_key_pem.clone(),
            c.ca_not_after,
        ),
        _ => {
            let (ca, key, not_after) = new_ca(now, life)?;
            let bundle = match current {
                Some(old) if old.ca_not_after > now => {
                    format!("{ca}{}", first_pem(&old.ca_bundle_pem))
                }
                _ => ca,
            };
            (bundle, key, not_after)
        }
    };
    // A certificate that no longer covers a name is reissued for both sets (the other
    // replica, or an out-of-cluster URL, may still use the old name).
    let mut all_names: Vec<String> = current
        .filter(|_| !renew_ca)
        .map(|c| c.names.clone())
        .unwrap_or_default();
    for n in names {
        if !all_names.contains(n) {
            all_names.push(n.clone());
        }
    }
    let (cert_pem, key_pem, cert_not_after) =
        new_serving(&ca_key_pem, ca_not_after, &all_names, now, life)?;
    Ok(Some(Certs {
        ca_bundle_pem,
        ca_key_pem,
        cert_pem,
        key_pem,
        ca_not_after,
        cert_not_after,
        names: all_names,
    }))
}

/// How long until `certs` need renewing (zero when overdue).
pub fn renewal_due_in(certs: &Certs, now: SystemTime, life: &Lifetimes) -> Duration {
    let now = epoch_secs(now);
    let due = certs
        .cert_not_after
        .saturating_sub(life.cert_renew_before.as_secs())
        .min(
            certs
                .ca_not_after
                .saturating_sub(life.ca_renew_before.as_secs()),
        );
    Duration::from_secs(due.saturating_sub(now))
}

impl Certs {
    /// The Secret's data and annotations.
    pub fn to_secret(&self) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
        let data = BTreeMap::from([
            (CA_CERT.to_string(), self.ca_bundle_pem.clone().into_bytes()),
            (CA_KEY.to_string(), self.ca_key_pem.clone().into_bytes()),
            (SERVER_CERT.to_string(), self.cert_pem.clone().into_bytes()),
            (SERVER_KEY.to_string(), self.key_pem.clone().into_bytes()),
        ]);
        let annotations = BTreeMap::from([
            (CA_NOT_AFTER.to_string(), self.ca_not_after.to_string()),
            (CERT_NOT_AFTER.to_string(), self.cert_not_after.to_string()),
            (CERT_NAMES.to_string(), self.names.join(",")),
        ]);
        (data, annotations)
    }

    /// Reads a Secret written by [`Certs::to_secret`]; `None` when anything is missing or
    /// the certificate and key do not load.
    pub fn from_secret(
        data: &BTreeMap<String, Vec<u8>>,
        annotations: &BTreeMap<String, String>,
    ) -> Option<Certs> {
        let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.clone()).ok());
        let number = |k: &str| annotations.get(k).and_then(|v| v.parse::<u64>().ok());
        let certs = Certs {
            ca_bundle_pem: text(CA_CERT)?,
            ca_key_pem: text(CA_KEY)?,
            cert_pem: text(SERVER_CERT)?,
            key_pem: text(SERVER_KEY)?,
            ca_not_after: number(CA_NOT_AFTER)?,
            cert_not_after: number(CERT_NOT_AFTER)?,
            names: annotations
                .get(CERT_NAMES)?
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
        };
        rcgen::KeyPair::from_pem(&certs.ca_key_pem).ok()?;
        certs.certified_key().ok()?;
        Some(certs)
    }

    /// The serving certificate (with its CA) and key, for the TLS server.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let load = |e: &dyn std::fmt::Display| CertError::Load(e.to_string());
        let mut chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| load(&e))?;
        if chain.is_empty() {
            return Err(CertError::Load("no certificate".into()));
        }
        let ca = first_pem(&self.ca_bundle_pem);
        chain.extend(CertificateDer::pem_slice_iter(ca.as_bytes()).filter_map(Result::ok));
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| load(&e))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| load(&e))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| load(&e))?;
        Ok(Arc::new(certified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn names() -> Vec<String> {
        vec!["webhook.knative-serving.svc".to_string()]
    }

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + days * DAY)
    }

    #[test]
    fn first_certs_then_nothing_until_renewal_is_due() {
        let life = Lifetimes::default();
        let certs = plan(None, &names(), at(0), &life).unwrap().unwrap();
        assert_eq!(certs.names, names());
        assert_eq!(certs.cert_not_after, epoch_secs(at(7)));
        assert_eq!(certs.ca_not_after, epoch_secs(at(365)));
        let (data, annotations) = certs.to_secret();
        assert_eq!(Certs::from_secret(&data, &annotations), Some(certs.clone()));
        assert!(
            plan(Some(&certs), &names(), at(4), &life)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            renewal_due_in(&certs, at(4), &life),
            Duration::from_secs(DAY)
        );

        // Within two days of expiry: a new serving certificate from the same CA.
        let renewed = plan(Some(&certs), &names(), at(5), &life).unwrap().unwrap();
        assert_eq!(renewed.ca_bundle_pem, certs.ca_bundle_pem);
        assert_ne!(renewed.cert_pem, certs.cert_pem);
        assert_eq!(renewed.cert_not_after, epoch_secs(at(12)));
    }

    #[test]
    fn a_new_name_reissues_for_both() {
        let life = Lifetimes::default();
        let certs = plan(None, &names(), at(0), &life).unwrap().unwrap();
        let more = vec!["127.0.0.1".to_string()];
        let reissued = plan(Some(&certs), &more, at(1), &life).unwrap().unwrap();
        assert_eq!(reissued.names, ["webhook.knative-serving.svc", "127.0.0.1"]);
        assert_eq!(reissued.ca_bundle_pem, certs.ca_bundle_pem);
    }

    #[test]
    fn the_ca_is_replaced_before_it_expires_and_the_old_one_stays_trusted() {
        let life = Lifetimes::default();
        let certs = plan(None, &names(), at(0), &life).unwrap().unwrap();
        let rotated = plan(Some(&certs), &names(), at(340), &life)
            .unwrap()
            .unwrap();
        assert_eq!(rotated.ca_not_after, epoch_secs(at(705)));
        assert!(rotated.ca_bundle_pem.ends_with(&certs.ca_bundle_pem));
        assert_eq!(
            rotated.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(),
            2
        );
        // The next rotation drops the CA two generations back.
        let again = plan(Some(&rotated), &names(), at(680), &life)
            .unwrap()
            .unwrap();
        assert_eq!(again.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(
            !again
                .ca_bundle_pem
                .contains(first_pem(&certs.ca_bundle_pem).trim())
        );
    }

    #[test]
    fn a_serving_cert_never_outlives_its_ca() {
        let life = Lifetimes {
            ca: Duration::from_secs(3 * DAY),
            ca_renew_before: Duration::from_secs(DAY),
            ..Lifetimes::default()
        };
        let certs = plan(None, &names(), at(0), &life).unwrap().unwrap();
        assert_eq!(certs.cert_not_after, certs.ca_not_after);
    }

    #[test]
    fn incomplete_or_foreign_secrets_are_not_used() {
        let certs = plan(None, &names(), at(0), &Lifetimes::default())
            .unwrap()
            .unwrap();
        let (mut data, annotations) = certs.to_secret();
        assert!(Certs::from_secret(&data, &BTreeMap::new()).is_none());
        let (other, _) = plan(None, &names(), at(0), &Lifetimes::default())
            .unwrap()
            .unwrap()
            .to_secret();
        data.insert(SERVER_KEY.into(), other[SERVER_KEY].clone());
        assert!(
            Certs::from_secret(&data, &annotations).is_none(),
            "key of another cert"
        );
        data.remove(SERVER_KEY);
        assert!(Certs::from_secret(&data, &annotations).is_none());
    }
}
