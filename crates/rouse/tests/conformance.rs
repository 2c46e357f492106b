//! Knative Serving's conformance cases (test/conformance/api/v1 and runtime) and the e2e cases
//! that apply to one machine, each a test named after Knative's, run against the real
//! `rouse serve` with `rouse-testapp` playing Knative's test images. The cases use only
//! [`platform::Platform`], so a Kubernetes e2e suite can run the same cases. The case table,
//! with the cases that do not apply locally and why, is in docs/conformance.md.

#![allow(non_snake_case)]

#[path = "conformance/clients.rs"]
mod clients;
mod common;
#[path = "conformance/platform.rs"]
mod platform;

use platform::{Local, Needs, Platform};

/// Cases that need pods (Kubernetes only), and why they do not apply to local mode.
const NOT_LOCAL: &[(&str, &str)] = &[
    (
        "configs-via-env",
        "valueFrom/envFrom ConfigMaps cannot be resolved locally (the revision fails saying so)",
    ),
    (
        "secrets-via-env",
        "valueFrom/envFrom Secrets cannot be resolved locally (the revision fails saying so)",
    ),
    (
        "subroute-pub-priv",
        "a tag's visibility is a label on its Kubernetes Service; local mode makes none",
    ),
    (
        "subroute-priv-pub",
        "a tag's visibility is a label on its Kubernetes Service; local mode makes none",
    ),
    (
        "runasuser",
        "instances run as the user running `rouse serve`; runAsUser needs containers",
    ),
];

/// The platform each case runs on in this target: its own local `rouse serve`. The Kubernetes
/// target (`conformance_kube.rs`) includes the same case files and defines this for its
/// cluster.
pub fn platform(test: &str, needs: Needs) -> Option<Box<dyn Platform>> {
    if let Some((_, why)) = NOT_LOCAL.iter().find(|(t, _)| *t == test) {
        eprintln!("does not apply to local mode: {why}");
        return None;
    }
    Some(Box::new(match needs {
        Needs::Defaults => Local::start(test),
        Needs::FastAutoscaler => Local::fast(test, &[]),
    }))
}

#[path = "conformance/api_v1.rs"]
mod api_v1;
#[path = "conformance/e2e.rs"]
mod e2e;
#[path = "conformance/e2e_features.rs"]
mod e2e_features;
#[path = "conformance/runtime.rs"]
mod runtime;
