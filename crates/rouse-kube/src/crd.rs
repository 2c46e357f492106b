//! Knative's CustomResourceDefinitions — groups, versions, kinds, plurals, short names,
//! categories, status subresources and printer columns as Knative installs them — with
//! OpenAPI schemas generated from the Rust types (see [`crate::schema`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rouse_api::Kind;
use rouse_api::autoscaling::PodAutoscaler;
use rouse_api::domainmapping::DomainMapping;
use rouse_api::ingress::Ingress;
use rouse_api::networking::ServerlessService;
use rouse_api::serving::{Configuration, Revision, Route, Service};
use schemars::JsonSchema;
use std::collections::BTreeMap;

use crate::schema::{SchemaError, object_schema};

/// How one kind is registered with the API server.
#[derive(Debug, Clone, Copy)]
pub struct CrdInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// (name, JSONPath, type) of each printer column, after NAME.
    pub columns: &'static [(&'static str, &'static str, &'static str)],
}

const READY: (&str, &str, &str) = (
    "Ready",
    ".status.conditions[?(@.type=='Ready')].status",
    "string",
);
const REASON: (&str, &str, &str) = (
    "Reason",
    ".status.conditions[?(@.type=='Ready')].reason",
    "string",
);

pub const SERVICE: CrdInfo = CrdInfo {
    group: Kind::Service.group(),
    version: Kind::Service.version(),
    kind: Kind::Service.name(),
    plural: Kind::Service.plural(),
    singular: Kind::Service.singular(),
    short_names: Kind::Service.short_names(),
    categories: Kind::Service.categories(),
    columns: &[
        ("URL", ".status.url", "string"),
        (
            "LatestCreated",
            ".status.latestCreatedRevisionName",
            "string",
        ),
        ("LatestReady", ".status.latestReadyRevisionName", "string"),
        READY,
        REASON,
    ],
};

pub const CONFIGURATION: CrdInfo = CrdInfo {
    group: Kind::Configuration.group(),
    version: Kind::Configuration.version(),
    kind: Kind::Configuration.name(),
    plural: Kind::Configuration.plural(),
    singular: Kind::Configuration.singular(),
    short_names: Kind::Configuration.short_names(),
    categories: Kind::Configuration.categories(),
    columns: &[
        (
            "LatestCreated",
            ".status.latestCreatedRevisionName",
            "string",
        ),
        ("LatestReady", ".status.latestReadyRevisionName", "string"),
        READY,
        REASON,
    ],
};

pub const REVISION: CrdInfo = CrdInfo {
    group: Kind::Revision.group(),
    version: Kind::Revision.version(),
    kind: Kind::Revision.name(),
    plural: Kind::Revision.plural(),
    singular: Kind::Revision.singular(),
    short_names: Kind::Revision.short_names(),
    categories: Kind::Revision.categories(),
    columns: &[
        (
            "Config Name",
            ".metadata.labels['serving\\.knative\\.dev/configuration']",
            "string",
        ),
        (
            "Generation",
            ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
            "string",
        ),
        READY,
        REASON,
        ("Actual Replicas", ".status.actualReplicas", "integer"),
        ("Desired Replicas", ".status.desiredReplicas", "integer"),
    ],
};

pub const ROUTE: CrdInfo = CrdInfo {
    group: Kind::Route.group(),
    version: Kind::Route.version(),
    kind: Kind::Route.name(),
    plural: Kind::Route.plural(),
    singular: Kind::Route.singular(),
    short_names: Kind::Route.short_names(),
    categories: Kind::Route.categories(),
    columns: &[("URL", ".status.url", "string"), READY, REASON],
};

pub const POD_AUTOSCALER: CrdInfo = CrdInfo {
    group: Kind::PodAutoscaler.group(),
    version: Kind::PodAutoscaler.version(),
    kind: Kind::PodAutoscaler.name(),
    plural: Kind::PodAutoscaler.plural(),
    singular: Kind::PodAutoscaler.singular(),
    short_names: Kind::PodAutoscaler.short_names(),
    categories: Kind::PodAutoscaler.categories(),
    columns: &[
        ("DesiredScale", ".status.desiredScale", "integer"),
        ("ActualScale", ".status.actualScale", "integer"),
        READY,
        REASON,
    ],
};

pub const SERVERLESS_SERVICE: CrdInfo = CrdInfo {
    group: Kind::ServerlessService.group(),
    version: Kind::ServerlessService.version(),
    kind: Kind::ServerlessService.name(),
    plural: Kind::ServerlessService.plural(),
    singular: Kind::ServerlessService.singular(),
    short_names: Kind::ServerlessService.short_names(),
    categories: Kind::ServerlessService.categories(),
    columns: &[
        ("Mode", ".spec.mode", "string"),
        ("Activators", ".spec.numActivators", "integer"),
        ("ServiceName", ".status.serviceName", "string"),
        ("PrivateServiceName", ".status.privateServiceName", "string"),
        READY,
        REASON,
    ],
};

pub const DOMAIN_MAPPING: CrdInfo = CrdInfo {
    group: Kind::DomainMapping.group(),
    version: Kind::DomainMapping.version(),
    kind: Kind::DomainMapping.name(),
    plural: Kind::DomainMapping.plural(),
    singular: Kind::DomainMapping.singular(),
    short_names: Kind::DomainMapping.short_names(),
    categories: Kind::DomainMapping.categories(),
    columns: &[("URL", ".status.url", "string"), READY, REASON],
};

pub const INGRESS: CrdInfo = CrdInfo {
    group: "networking.internal.knative.dev",
    version: "v1alpha1",
    kind: "Ingress",
    plural: "ingresses",
    singular: "ingress",
    short_names: &["kingress", "king"],
    categories: &["all", "knative-internal", "networking"],
    columns: &[READY, REASON],
};

/// How `kind` is registered: the one table of plurals, short names, categories and printer
/// columns that the CRDs, the local API's discovery and its tables share.
pub fn info(kind: Kind) -> &'static CrdInfo {
    match kind {
        Kind::Service => &SERVICE,
        Kind::Configuration => &CONFIGURATION,
        Kind::Revision => &REVISION,
        Kind::Route => &ROUTE,
        Kind::PodAutoscaler => &POD_AUTOSCALER,
        Kind::ServerlessService => &SERVERLESS_SERVICE,
        Kind::DomainMapping => &DOMAIN_MAPPING,
    }
}

/// The structural OpenAPI v3 schema of `kind` (the one its CRD carries).
pub fn schema(kind: Kind) -> Result<serde_json::Value, SchemaError> {
    match kind {
        Kind::Service => object_schema::<Service>(),
        Kind::Configuration => object_schema::<Configuration>(),
        Kind::Revision => object_schema::<Revision>(),
        Kind::Route => object_schema::<Route>(),
        Kind::PodAutoscaler => object_schema::<PodAutoscaler>(),
        Kind::ServerlessService => object_schema::<ServerlessService>(),
        Kind::DomainMapping => object_schema::<DomainMapping>(),
    }
}

/// Every CRD Rouse installs, in the order `rouse install` prints them.
pub fn all() -> Result<Vec<CustomResourceDefinition>, SchemaError> {
    Ok(vec![
        crd::<Service>(&SERVICE)?,
        crd::<Configuration>(&CONFIGURATION)?,
        crd::<Revision>(&REVISION)?,
        crd::<Route>(&ROUTE)?,
        crd::<PodAutoscaler>(&POD_AUTOSCALER)?,
        crd::<ServerlessService>(&SERVERLESS_SERVICE)?,
        crd::<DomainMapping>(&DOMAIN_MAPPING)?,
        crd::<Ingress>(&INGRESS)?,
    ])
}

/// The CRD of one kind, its schema generated from `T`.
pub fn crd<T: JsonSchema>(info: &CrdInfo) -> Result<CustomResourceDefinition, SchemaError> {
    let schema = object_schema::<T>()?;
    let schema: JSONSchemaProps = serde_json::from_value(schema).map_err(|e| SchemaError {
        path: ".".into(),
        reason: format!("not a JSONSchemaProps: {e}"),
    })?;
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", info.plural, info.group)),
            labels: Some(BTreeMap::from([
                ("knative.dev/crd-install".to_string(), "true".to_string()),
                (
                    "app.kubernetes.io/name".to_string(),
                    "knative-serving".to_string(),
                ),
                ("app.kubernetes.io/part-of".to_string(), "rouse".to_string()),
            ])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: info.group.to_string(),
            names: CustomResourceDefinitionNames {
                kind: info.kind.to_string(),
                list_kind: Some(format!("{}List", info.kind)),
                plural: info.plural.to_string(),
                singular: Some(info.singular.to_string()),
                short_names: Some(strings(info.short_names)),
                categories: Some(strings(info.categories)),
            },
            scope: "Namespaced".to_string(),
            versions: vec![CustomResourceDefinitionVersion {
                name: info.version.to_string(),
                served: true,
                storage: true,
                subresources: Some(CustomResourceSubresources {
                    // `{}` enables the subresource; the type's default (`null`) would not.
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    scale: None,
                }),
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                additional_printer_columns: Some(
                    info.columns
                        .iter()
                        .map(|(name, path, ty)| CustomResourceColumnDefinition {
                            name: name.to_string(),
                            json_path: path.to_string(),
                            type_: ty.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    })
}
