//! The webhook's state on the cluster: its certificates in a Secret (created, read, renewed
//! with compare-and-swap writes, so two replicas agree on one set) and the CA bundle (and,
//! outside the cluster, the URL) in its WebhookConfigurations.

use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::certs::{CertError, Certs, Lifetimes, SECRET_NAME, plan};
use super::{CONFIG_WEBHOOK, DEFAULTING_WEBHOOK, VALIDATION_WEBHOOK, WebhookOptions, path_of};

/// Attempts at a write that lost a race before giving up for this round.
const RACE_RETRIES: usize = 5;

/// Why the webhook's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("{0}")]
    Api(String),
}

/// An API error, naming what is missing when it is a missing object or permission.
fn api_error(e: kube::Error, verb: &str, what: &str) -> WebhookError {
    WebhookError::Api(match e {
        kube::Error::Api(s) if s.code == 404 => {
            format!("{what} not found: apply the manifests `rouse install` prints")
        }
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden: cannot {verb} {what} (missing RBAC permission; `rouse install` grants it): {}",
            s.message
        ),
        other => format!("{verb} {what}: {other}"),
    })
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The certificates to serve: the Secret's when they are fine, else new ones written to it.
/// Losing a write race to the other replica means reading and using what it wrote.
pub async fn sync_secret(
    client: &kube::Client,
    opts: &WebhookOptions,
    now: SystemTime,
    life: &Lifetimes,
) -> Result<Certs, WebhookError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let what = format!("Secret {}/{SECRET_NAME}", opts.namespace);
    for _ in 0..RACE_RETRIES {
        let secret = api
            .get_opt(SECRET_NAME)
            .await
            .map_err(|e| api_error(e, "get", &what))?;
        let current = secret.as_ref().and_then(|s| {
            let data = s
                .data
                .as_ref()?
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            Certs::from_secret(&data, s.metadata.annotations.as_ref()?)
        });
        let Some(next) = plan(current.as_ref(), &opts.names(), now, life)? else {
            return Ok(current.expect("plan keeps only existing certificates"));
        };
        let (data, annotations) = next.to_secret();
        let mut written = secret.clone().unwrap_or_default();
        written.metadata = ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(opts.namespace.clone()),
            resource_version: secret
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone()),
            labels: Some([("app.kubernetes.io/part-of".to_string(), "rouse".to_string())].into()),
            annotations: Some(annotations),
            ..written.metadata
        };
        written.type_ = Some("Opaque".into());
        written.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
        written.string_data = None;
        let result = match secret {
            Some(_) => {
                api.replace(SECRET_NAME, &PostParams::default(), &written)
                    .await
            }
            None => api.create(&PostParams::default(), &written).await,
        };
        match result {
            Ok(_) => {
                tracing::info!(secret = %what, names = ?next.names, "wrote new webhook certificates");
                return Ok(next);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_error(e, "write", &what)),
        }
    }
    Err(WebhookError::Api(format!(
        "{what}: kept losing write races to another writer"
    )))
}

/// Points `config` at this webhook: the CA bundle, and the URL when running outside the
/// cluster. True when something had to change.
fn point(
    config: &mut WebhookClientConfig,
    name: &str,
    ca_bundle: &[u8],
    url: Option<&str>,
) -> bool {
    let before = config.clone();
    config.ca_bundle = Some(ByteString(ca_bundle.to_vec()));
    if let Some(base) = url {
        let path = config
            .service
            .as_ref()
            .and_then(|s| s.path.clone())
            .unwrap_or_else(|| path_of(name).to_string());
        let path = config
            .url
            .as_ref()
            .and_then(|u| u.strip_prefix(base.trim_end_matches('/')))
            .map(str::to_string)
            .unwrap_or(path);
        config.url = Some(format!("{}{path}", base.trim_end_matches('/')));
        config.service = None;
    }
    *config != before
}

/// Writes the CA bundle (and URL) into the WebhookConfigurations `rouse install` created.
pub async fn register(
    client: &kube::Client,
    opts: &WebhookOptions,
    ca_bundle_pem: &str,
) -> Result<(), WebhookError> {
    let ca = ca_bundle_pem.as_bytes();
    let url = opts.url.as_deref();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    update_config(
        &mutating,
        DEFAULTING_WEBHOOK,
        "MutatingWebhookConfiguration",
        |c| {
            c.webhooks.iter_mut().flatten().fold(false, |changed, w| {
                point(&mut w.client_config, &w.name, ca, url) | changed
            })
        },
    )
    .await?;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for name in [VALIDATION_WEBHOOK, CONFIG_WEBHOOK] {
        update_config(&validating, name, "ValidatingWebhookConfiguration", |c| {
            c.webhooks.iter_mut().flatten().fold(false, |changed, w| {
                point(&mut w.client_config, &w.name, ca, url) | changed
            })
        })
        .await?;
    }
    Ok(())
}

/// Read, change, write back if changed; a lost race starts again from a fresh read.
async fn update_config<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    mut change: impl FnMut(&mut K) -> bool,
) -> Result<(), WebhookError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let what = format!("{kind} {name}");
    for _ in 0..RACE_RETRIES {
        let mut config = api
            .get(name)
            .await
            .map_err(|e| api_error(e, "get", &what))?;
        if !change(&mut config) {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &config).await {
            Ok(_) => {
                tracing::info!(config = %what, "registered the webhook's CA bundle");
                return Ok(());
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(api_error(e, "update", &what)),
        }
    }
    Err(WebhookError::Api(format!(
        "{what}: kept losing write races"
    )))
}
