//! What `rouse controller` checks once at start, so a half-done install is reported once,
//! naming what is missing, rather than as a stream of failing requests: the CRDs the API
//! server serves (discovery) and the permissions the controller's role needs (a
//! SelfSubjectAccessReview per verb and resource, the rules being `rouse install`'s own).

use futures_util::{StreamExt, stream};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use serde_json::Value;

use crate::crd::{self, CrdInfo};
use crate::install::{NAMESPACE, Role, role_rules};

/// Reviews in flight at once.
const CONCURRENCY: usize = 16;

/// Every CRD Rouse installs.
const CRDS: [&CrdInfo; 8] = [
    &crd::SERVICE,
    &crd::CONFIGURATION,
    &crd::REVISION,
    &crd::ROUTE,
    &crd::POD_AUTOSCALER,
    &crd::SERVERLESS_SERVICE,
    &crd::DOMAIN_MAPPING,
    &crd::INGRESS,
];

/// The CRDs the API server does not serve, as `plural.group`.
pub async fn missing_crds(client: &kube::Client) -> Result<Vec<String>, kube::Error> {
    let mut missing = Vec::new();
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for c in CRDS {
        if !groups.contains(&(c.group, c.version)) {
            groups.push((c.group, c.version));
        }
    }
    for (group, version) in groups {
        let served: Vec<String> = match client
            .list_api_group_resources(&format!("{group}/{version}"))
            .await
        {
            Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
            Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
            Err(e) => return Err(e),
        };
        for c in CRDS
            .iter()
            .filter(|c| c.group == group && c.version == version)
        {
            if !served.iter().any(|r| r == c.plural) {
                missing.push(format!("{}.{}", c.plural, c.group));
            }
        }
    }
    Ok(missing)
}

/// One permission: a verb on a resource (maybe a subresource, maybe one named object), in
/// the system namespace or cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(sub) = &self.subresource {
            write!(f, "/{sub}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

/// Every permission `role` is granted by `rouse install`.
pub fn permissions(role: Role) -> Vec<Permission> {
    let (cluster, namespaced) = role_rules(role);
    let mut out = Vec::new();
    for (rules, namespace) in [(cluster, None), (namespaced, Some(NAMESPACE.to_string()))] {
        for rule in &rules {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let names = strings("resourceNames");
            let names: Vec<Option<String>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource, None),
                    };
                    for verb in strings("verbs") {
                        for name in &names {
                            out.push(Permission {
                                verb: verb.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                                subresource: subresource.clone(),
                                name: name.clone(),
                                namespace: namespace.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The permissions in `wanted` the client's identity does not have.
pub async fn missing_permissions(
    client: &kube::Client,
    wanted: Vec<Permission>,
) -> Result<Vec<Permission>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answers: Vec<Result<Option<Permission>, kube::Error>> = stream::iter(wanted)
        .map(|p| {
            let api = api.clone();
            async move {
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            verb: Some(p.verb.clone()),
                            group: Some(p.group.clone()),
                            resource: Some(p.resource.clone()),
                            subresource: p.subresource.clone(),
                            name: p.name.clone(),
                            namespace: p.namespace.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let answer = api.create(&PostParams::default(), &review).await?;
                let allowed = answer.status.is_some_and(|s| s.allowed);
                Ok((!allowed).then_some(p))
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    answers.into_iter().filter_map(Result::transpose).collect()
}

/// Runs both checks for `role` and logs what is missing, once; a check that cannot run (the
/// API server unreachable) is logged and skipped: the informers report outages themselves.
pub async fn report(client: kube::Client, role: Role) {
    match missing_crds(&client).await {
        Ok(m) if m.is_empty() => {}
        Ok(m) => tracing::error!(
            "missing CRDs: {} (apply the manifests `rouse install` prints)",
            m.join(", ")
        ),
        Err(e) => tracing::warn!(error = %e, "cannot check the CRDs"),
    }
    match missing_permissions(&client, permissions(role)).await {
        Ok(m) if m.is_empty() => {}
        Ok(m) => tracing::error!(
            "missing RBAC permissions for {}: {} (`rouse install` grants them)",
            role.account(),
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => tracing::warn!(error = %e, "cannot check the RBAC permissions"),
    }
}
