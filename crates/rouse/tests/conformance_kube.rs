//! Knative's conformance and e2e cases (the same case files as `conformance.rs`) against a
//! real Kubernetes API server: `rouse install` applied, the controller, activator and
//! gateway as processes acting as the install's ServiceAccounts, and a test kubelet running
//! the pods as processes in network namespaces of their own (needs root). Runs only when
//! `ROUSE_E2E_KUBECONFIG` names the cluster's kubeconfig; otherwise every case passes at once,
//! saying why. Every case applies on Kubernetes; those that need what Rouse does not do there
//! yet are skipped with the reason printed ([`ROUSE_GAPS`]); the results are in
//! docs/conformance.md.

#![allow(non_snake_case)]

#[path = "conformance/clients.rs"]
mod clients;
mod common;
#[path = "conformance/kube_platform.rs"]
mod kube_platform;
#[path = "common/kubelet/mod.rs"]
mod kubelet;
// Local mode's platform is defined there too, unused here.
#[allow(dead_code)]
#[path = "conformance/platform.rs"]
mod platform;

use platform::{Needs, Platform};

/// Cases that apply on Kubernetes but need what Rouse does not do there yet, and what: skipped
/// (saying so) unless `ROUSE_E2E_KNOWN_GAPS=1` runs them anyway.
const ROUSE_GAPS: &[(&str, &str)] = &[];

/// The platform each case runs on in this target: its own namespace on the cluster. The
/// autoscaler's short windows are set for every case, so `needs` asks nothing more.
pub fn platform(test: &str, _needs: Needs) -> Option<Box<dyn Platform>> {
    if kube_platform::kubeconfig().is_none() {
        eprintln!("skipped: set ROUSE_E2E_KUBECONFIG to a kubeconfig to run on that cluster");
        return None;
    }
    let run_gaps = std::env::var("ROUSE_E2E_KNOWN_GAPS").is_ok_and(|v| v == "1");
    if let Some((_, why)) = ROUSE_GAPS.iter().find(|(t, _)| *t == test)
        && !run_gaps
    {
        eprintln!(
            "skipped on Kubernetes (a Rouse gap there; ROUSE_E2E_KNOWN_GAPS=1 runs it): {why}"
        );
        return None;
    }
    Some(Box::new(kube_platform::Kube::start(test)))
}

#[path = "conformance/api_v1.rs"]
mod api_v1;
#[path = "conformance/e2e.rs"]
mod e2e;
#[path = "conformance/e2e_features.rs"]
mod e2e_features;
#[path = "conformance/runtime.rs"]
mod runtime;
