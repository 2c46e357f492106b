//! Kubernetes mode: Knative's CRDs generated from the API types ([`crd`], [`schema`]), the
//! manifests `rouse install` prints ([`install`]), and the Kubernetes objects Knative makes per
//! revision and per route ([`revision`], [`route`]), and the store's operations over the
//! Kubernetes API ([`store`]), the admission webhooks ([`webhook`]) and Knative's ConfigMaps read
//! live ([`config_watch`]).
//!
//! Built on `k8s-openapi`'s types; this library picks no Kubernetes version (the `rouse`
//! binary does, through k8s-openapi's `v1_*` feature).

pub mod apply;
pub mod cache;
pub mod config_watch;
pub mod crd;
pub mod digest;
pub mod domainmapping;
pub mod health;
pub mod informer;
pub mod install;
pub mod leader;
pub mod local_service;
pub mod networking;
pub mod preflight;
pub mod registry;
pub mod revision;
pub mod route;
pub mod runtime;
pub mod schema;
pub mod scrape;
pub mod stat_stream;
pub mod store;
pub mod webhook;

/// Locks `m`, taking the data over from a holder that panicked: every lock here guards plain
/// bookkeeping that stays consistent between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
