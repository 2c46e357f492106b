//! Knative's admission webhooks, served by `rouse controller` (every replica, not only the
//! leader): defaulting (mutating, a JSON patch), resource validation and ConfigMap validation
//! (validating), with the rules local mode applies.
//!
//! The webhook keeps its own CA and serving certificate in the Secret `webhook-certs`
//! ([`certs`]), writes the CA bundle into the WebhookConfigurations `rouse install` creates
//! ([`register`]) and renews before expiry; the HTTPS server picks up a renewed certificate
//! without a restart ([`server`]).

pub mod certs;
pub mod patch;
pub mod register;
pub mod review;
pub mod server;

use std::time::{Duration, SystemTime};

use rouse_api::config::SharedConfig;
use tokio::net::TcpListener;

use certs::Lifetimes;
use register::{WebhookError, register, sync_secret};
use server::CertSlot;

/// The MutatingWebhookConfiguration, and its webhook (Knative's names).
pub const DEFAULTING_WEBHOOK: &str = "webhook.serving.knative.dev";
/// The ValidatingWebhookConfiguration for Knative's kinds, and its webhook.
pub const VALIDATION_WEBHOOK: &str = "validation.webhook.serving.knative.dev";
/// The ValidatingWebhookConfiguration for the system namespace's ConfigMaps, and its webhook.
pub const CONFIG_WEBHOOK: &str = "config.webhook.serving.knative.dev";
/// The paths each is served on (Knative's).
pub const DEFAULTING_PATH: &str = "/defaulting";
pub const VALIDATION_PATH: &str = "/resource-validation";
pub const CONFIG_VALIDATION_PATH: &str = "/config-validation";
/// The Service in front of the controllers' webhook port.
pub const SERVICE_NAME: &str = "webhook";

/// The path a webhook of ours is served on.
pub fn path_of(webhook: &str) -> &'static str {
    match webhook {
        DEFAULTING_WEBHOOK => DEFAULTING_PATH,
        CONFIG_WEBHOOK => CONFIG_VALIDATION_PATH,
        _ => VALIDATION_PATH,
    }
}

/// Where the webhook is reached and where its state lives.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// The system namespace (the Secret and the Service live there).
    pub namespace: String,
    /// Outside the cluster: the base URL the API server reaches this process at
    /// (`https://host:port`); the WebhookConfigurations then name it instead of the Service.
    pub url: Option<String>,
    /// Certificate lifetimes.
    pub lifetimes: Lifetimes,
    /// How often the Secret and the WebhookConfigurations are checked (renewals by the other
    /// replica, a CA bundle overwritten).
    pub resync: Duration,
}

impl WebhookOptions {
    /// Options for the system namespace, served through its Service.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            url: None,
            lifetimes: Lifetimes::default(),
            resync: Duration::from_secs(60),
        }
    }

    /// The names the serving certificate must cover: the Service's DNS names, and the URL's
    /// host outside the cluster.
    pub fn names(&self) -> Vec<String> {
        let ns = &self.namespace;
        let mut names = vec![
            format!("{SERVICE_NAME}.{ns}.svc"),
            format!("{SERVICE_NAME}.{ns}.svc.cluster.local"),
            format!("{SERVICE_NAME}.{ns}"),
        ];
        if let Some(host) = self.url.as_deref().and_then(url_host) {
            names.push(host);
        }
        names
    }
}

/// The host of an `https://host[:port][/path]` URL (brackets dropped from IPv6 addresses).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Checks a `--webhook-url`: https, a host, no query.
pub fn check_url(url: &str) -> Result<(), String> {
    if !url.starts_with("https://") {
        return Err(format!(
            "{url:?}: the API server calls webhooks over https://"
        ));
    }
    if url_host(url).is_none() || url.contains(['?', '#', ' ']) {
        return Err(format!("{url:?}: expected https://host:port"));
    }
    Ok(())
}

/// Serves the webhooks on `listener` and keeps their certificates and registration current.
/// Never returns: failures (the API server unreachable, a permission missing) are logged
/// once each and retried.
/// `serving` turns true once reviews are answered.
pub async fn run(
    client: kube::Client,
    opts: WebhookOptions,
    listener: TcpListener,
    config: SharedConfig,
    serving: tokio::sync::watch::Sender<bool>,
) {
    let mut reporter = Reporter::default();
    let mut backoff = Duration::from_millis(500);
    // Nothing to serve without a certificate.
    let mut certs = loop {
        match sync_secret(&client, &opts, SystemTime::now(), &opts.lifetimes).await {
            Ok(c) => break c,
            Err(e) => {
                reporter.failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.resync);
            }
        }
    };
    let slot = match certs.certified_key() {
        Ok(key) => CertSlot::new(key),
        Err(e) => {
            tracing::error!(error = %e, "the webhook's certificate does not load; not serving");
            return;
        }
    };
    let tls = match server::tls_config(slot.clone()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "the webhook's TLS configuration failed; not serving");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, url = ?opts.url, "serving the admission webhooks");
    }
    tokio::spawn(server::serve(listener, tls, config));
    serving.send_replace(true);
    loop {
        // The bundle goes to the API server before a new certificate is served with it.
        match register(&client, &opts, &certs.ca_bundle_pem).await {
            Ok(()) => reporter.ok(),
            Err(e) => reporter.failed(&e),
        }
        if let Ok(key) = certs.certified_key() {
            slot.set(key);
        }
        let due = certs::renewal_due_in(&certs, SystemTime::now(), &opts.lifetimes);
        tokio::time::sleep(due.min(opts.resync)).await;
        match sync_secret(&client, &opts, SystemTime::now(), &opts.lifetimes).await {
            Ok(c) => certs = c,
            Err(e) => reporter.failed(&e),
        }
    }
}

/// Logs each distinct failure once, and the recovery.
#[derive(Default)]
struct Reporter {
    last: Option<String>,
}

impl Reporter {
    fn failed(&mut self, e: &WebhookError) {
        let message = e.to_string();
        if self.last.as_ref() != Some(&message) {
            tracing::error!(error = %message, "admission webhook");
            self.last = Some(message);
        }
    }

    fn ok(&mut self) {
        if self.last.take().is_some() {
            tracing::info!("admission webhook: registered again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_and_names() {
        assert_eq!(
            url_host("https://10.0.0.5:8443").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(url_host("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://dev.example.com").as_deref(),
            Some("dev.example.com")
        );
        assert_eq!(url_host("http://x:1"), None);
        assert!(check_url("http://127.0.0.1:8443").is_err());
        assert!(check_url("https://:8443").is_err());
        assert!(check_url("https://127.0.0.1:8443").is_ok());
        let mut opts = WebhookOptions::new("knative-serving");
        opts.url = Some("https://127.0.0.1:9443".into());
        assert_eq!(
            opts.names(),
            [
                "webhook.knative-serving.svc",
                "webhook.knative-serving.svc.cluster.local",
                "webhook.knative-serving",
                "127.0.0.1"
            ]
        );
    }
}
