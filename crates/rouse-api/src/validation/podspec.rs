//! Rules of a revision spec: Knative's per-revision settings and the pod spec it inlines
//! (containers, ports, env, probes, volumes, feature-gated fields). Paths are relative to the
//! revision spec; the caller prefixes `spec` or `spec.template.spec`.

use std::collections::BTreeSet;

use serde_json::Value;

use super::image::parse_image_reference;
use super::names::{dns1123_label_errors, dns1123_subdomain_errors, quote};
use super::probes::{ServingPort, probe, probe_set_fields, readiness_probe};
use super::security::{pod_security_context, security_context};
use super::volumes::{Volumes, volume_mounts, volumes};
use crate::config::Config;
use crate::config::features::{self as feat, FeaturesConfig, Flag};
use crate::error::{FieldError, FieldErrors};
use crate::serving::{Container, ContainerPort, RevisionSpec};

/// Ports the queue-proxy and the platform listen on inside a revision's instance.
const RESERVED_PORTS: [i32; 6] = [8012, 8013, 8022, 9090, 9091, 8008];
/// Environment variables the platform sets for the serving container.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// The sidecar Knative injects; users may not take its name.
const RESERVED_CONTAINER_NAME: &str = "queue-proxy";

/// Validates a revision spec: the pod spec, `timeoutSeconds` and `containerConcurrency`.
pub(crate) fn revision_spec(spec: &RevisionSpec, cfg: &Config) -> FieldErrors {
    let mut errs = pod_spec(spec, cfg);
    let d = &cfg.defaults;
    if let Some(t) = spec.timeout_seconds
        && t != 0
        && !(0..=d.max_revision_timeout_seconds).contains(&t)
    {
        errs.push(FieldError::out_of_bounds(
            t,
            0,
            d.max_revision_timeout_seconds,
            "timeoutSeconds",
        ));
    }
    if let Some(cc) = spec.container_concurrency {
        let min = if d.allow_container_concurrency_zero {
            0
        } else {
            1
        };
        if !(min..=d.container_concurrency_max_limit).contains(&cc) {
            errs.push(FieldError::out_of_bounds(
                cc,
                min,
                d.container_concurrency_max_limit,
                "containerConcurrency",
            ));
        }
    }
    errs
}

/// What a container is to the revision: the serving container, a sidecar, or an init
/// container. Sidecars and init containers may set `PORT`.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    User,
    Sidecar,
    Init,
}

fn pod_spec(spec: &RevisionSpec, cfg: &Config) -> FieldErrors {
    let f = &cfg.features;
    let mut errs = FieldErrors::new();
    let pod_sc_allowed = disallowed_pod_fields(spec, f, &mut errs);
    if pod_sc_allowed && let Some(sc) = spec.security_context.as_ref().filter(|v| !v.is_null()) {
        errs.extend_via("securityContext", pod_security_context(sc, f));
    }

    let mounted: BTreeSet<&str> = spec
        .init_containers
        .iter()
        .chain(&spec.containers)
        .flat_map(|c| c.volume_mounts.iter().map(|m| m.name.as_str()))
        .collect();
    let (volumes, verrs) = volumes(&spec.volumes, &mounted, f);
    errs.extend_via("volumes", verrs);

    errs.extend(init_containers(spec, &volumes, cfg));

    let (port, perrs) = containers_ports(&spec.containers);
    errs.extend_via("containers[*]", perrs);
    match spec.containers.len() {
        0 => errs.push(FieldError::missing_field(&["containers"])),
        1 => errs.extend_via(
            "containers[0]",
            user_container(&spec.containers[0], &volumes, &port, cfg),
        ),
        n => {
            if f.get(feat::MULTI_CONTAINER) != Flag::Enabled {
                errs.push(FieldError::new(
                    format!("multi-container is off, but found {n} containers"),
                    &[],
                ));
            } else {
                let mut seen = BTreeSet::new();
                for (i, c) in spec.containers.iter().enumerate() {
                    let at = format!("containers[{i}]");
                    if !seen.insert(c.name.as_str()) {
                        errs.push(duplicate_name(&c.name).via_field(&at));
                    }
                    let e = if c.ports.is_empty() {
                        sidecar_container(c, &volumes, cfg)
                    } else {
                        user_container(c, &volumes, &port, cfg)
                    };
                    errs.extend_via(&at, e);
                }
            }
        }
    }

    if !spec.service_account_name.is_empty() {
        for e in dns1123_subdomain_errors(&spec.service_account_name) {
            errs.push(
                FieldError::invalid_value(&spec.service_account_name, "serviceAccountName")
                    .with_details(e),
            );
        }
    }
    errs
}

/// The pod-level fields Knative refuses or gates behind config-features. Returns whether the
/// pod `securityContext` is allowed at all.
fn disallowed_pod_fields(spec: &RevisionSpec, f: &FeaturesConfig, errs: &mut FieldErrors) -> bool {
    let set_value = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let set_str = |v: &Option<String>| v.as_ref().is_some_and(|s| !s.is_empty());
    let gated: [(&str, bool, &str); 11] = [
        (
            "affinity",
            set_value(&spec.affinity),
            feat::PODSPEC_AFFINITY,
        ),
        (
            "dnsConfig",
            set_value(&spec.dns_config),
            feat::PODSPEC_DNS_CONFIG,
        ),
        (
            "dnsPolicy",
            set_str(&spec.dns_policy),
            feat::PODSPEC_DNS_POLICY,
        ),
        (
            "hostAliases",
            !spec.host_aliases.is_empty(),
            feat::PODSPEC_HOSTALIASES,
        ),
        (
            "initContainers",
            !spec.init_containers.is_empty(),
            feat::PODSPEC_INIT_CONTAINERS,
        ),
        (
            "nodeSelector",
            !spec.node_selector.is_empty(),
            feat::PODSPEC_NODESELECTOR,
        ),
        (
            "priorityClassName",
            set_str(&spec.priority_class_name),
            feat::PODSPEC_PRIORITYCLASSNAME,
        ),
        (
            "runtimeClassName",
            set_str(&spec.runtime_class_name),
            feat::PODSPEC_RUNTIMECLASSNAME,
        ),
        (
            "schedulerName",
            set_str(&spec.scheduler_name),
            feat::PODSPEC_SCHEDULERNAME,
        ),
        (
            "tolerations",
            !spec.tolerations.is_empty(),
            feat::PODSPEC_TOLERATIONS,
        ),
        (
            "topologySpreadConstraints",
            !spec.topology_spread_constraints.is_empty(),
            feat::PODSPEC_TOPOLOGYSPREADCONSTRAINTS,
        ),
    ];
    for (field, set, flag) in gated {
        if set && f.get(flag) == Flag::Disabled {
            errs.push(feature_disabled(field, flag));
        }
    }
    // The pod security context is open with either flag (secure-pod-defaults checks it finer).
    let sc_allowed = f.get(feat::PODSPEC_SECURITYCONTEXT) != Flag::Disabled
        || f.get(feat::SECURE_POD_DEFAULTS) != Flag::Disabled;
    if set_value(&spec.security_context) && !sc_allowed {
        errs.push(feature_disabled(
            "securityContext",
            feat::PODSPEC_SECURITYCONTEXT,
        ));
    }
    let mut always = Vec::new();
    if spec.automount_service_account_token == Some(true) {
        always.push("automountServiceAccountToken");
    }
    if spec.termination_grace_period_seconds.is_some() {
        always.push("terminationGracePeriodSeconds");
    }
    if !always.is_empty() {
        errs.push(FieldError::disallowed(&always));
    }
    sc_allowed
}

/// Knative's "must not set the field(s)", with details naming the flag that would allow it.
pub(super) fn feature_disabled(field: &str, flag: &str) -> FieldError {
    FieldError::disallowed(&[field]).with_details(format!(
        "feature {flag:?} is Disabled in config-features; set it to Enabled to use this field"
    ))
}

fn duplicate_name(name: &str) -> FieldError {
    FieldError::new(
        format!("duplicate container name {}", quote(name)),
        &["name"],
    )
}
// === Containers ===

/// At most one port across all containers; with several containers, exactly one must declare
/// it. Returns the serving port (named `http` when unnamed) for probe checks.
fn containers_ports(containers: &[Container]) -> (ServingPort, FieldErrors) {
    let mut count = 0;
    let mut port: Option<&ContainerPort> = None;
    for c in containers {
        if !c.ports.is_empty() {
            count += c.ports.len();
            port = c.ports.first();
        }
    }
    let name = port
        .map(|p| p.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "http".to_string());
    let serving = ServingPort { name };
    let errs = if count == 0 && containers.len() > 1 {
        FieldError::missing_field(&["ports"]).into()
    } else if count > 1 {
        FieldError::new("more than one container port is set", &["ports"])
            .with_details("Only a single port is allowed across all containers")
            .into()
    } else {
        FieldErrors::new()
    };
    (serving, errs)
}

fn init_containers(spec: &RevisionSpec, volumes: &Volumes, cfg: &Config) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let n = spec.init_containers.len();
    if n == 0 {
        return errs;
    }
    if cfg.features.get(feat::PODSPEC_INIT_CONTAINERS) != Flag::Enabled {
        errs.push(FieldError::new(
            format!("pod spec support for init-containers is off, but found {n} init containers"),
            &[],
        ));
        return errs;
    }
    let others: BTreeSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    for (i, c) in spec.init_containers.iter().enumerate() {
        let at = format!("initContainers[{i}]");
        if others.contains(c.name.as_str()) {
            errs.push(duplicate_name(&c.name).via_field(&at));
        }
        let mut e = FieldErrors::new();
        for (field, set) in [
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
        ] {
            if set {
                e.push(FieldError::new(
                    "field not allowed in an init container",
                    &[field],
                ));
            }
        }
        e.extend(container(c, Role::Init, volumes, cfg));
        errs.extend_via(&at, e);
    }
    errs
}

fn user_container(
    c: &Container,
    volumes: &Volumes,
    port: &ServingPort,
    cfg: &Config,
) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if let Some(p) = &c.liveness_probe {
        errs.extend_via("livenessProbe", probe(p, Some(port)));
    }
    if let Some(p) = &c.readiness_probe {
        errs.extend_via("readinessProbe", readiness_probe(p, Some(port)));
    }
    if let Some(p) = &c.startup_probe {
        errs.extend_via("startupProbe", probe(p, Some(port)));
    }
    errs.extend(container(c, Role::User, volumes, cfg));
    errs
}

fn sidecar_container(c: &Container, volumes: &Volumes, cfg: &Config) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let probing = cfg.features.get(feat::MULTI_CONTAINER_PROBING) == Flag::Enabled;
    for (field, p, readiness) in [
        ("livenessProbe", &c.liveness_probe, false),
        ("readinessProbe", &c.readiness_probe, true),
        ("startupProbe", &c.startup_probe, false),
    ] {
        let Some(p) = p else { continue };
        if !probing {
            let set = probe_set_fields(p);
            if !set.is_empty() {
                errs.push(
                    FieldError::disallowed(&set)
                        .with_details(format!(
                            "probes on a container without a port need feature {:?} Enabled in config-features",
                            feat::MULTI_CONTAINER_PROBING
                        ))
                        .via_field(field),
                );
            }
        } else if readiness {
            errs.extend_via(field, readiness_probe(p, None));
        } else {
            errs.extend_via(field, probe(p, None));
        }
    }
    errs.extend(container(c, Role::Sidecar, volumes, cfg));
    errs
}

/// The rules every container follows, whatever its role.
fn container(c: &Container, role: Role, volumes: &Volumes, cfg: &Config) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if *c == Container::default() {
        errs.push(FieldError::missing_field(&[""]));
        return errs;
    }
    let mut disallowed = Vec::new();
    if c.lifecycle.as_ref().is_some_and(|v| !v.is_null()) {
        disallowed.push("lifecycle");
    }
    if c.stdin == Some(true) {
        disallowed.push("stdin");
    }
    if c.tty == Some(true) {
        disallowed.push("tty");
    }
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed(&disallowed));
    }
    if c.name == RESERVED_CONTAINER_NAME {
        errs.push(FieldError::new(
            format!("{} is a reserved container name", quote(&c.name)),
            &["name"],
        ));
    }
    // What Kubernetes' pod validation (Knative's dry run of the pod) refuses.
    if !c.name.is_empty() {
        for e in dns1123_label_errors(&c.name) {
            errs.push(FieldError::invalid_value(&c.name, "name").with_details(e));
        }
    }
    errs.extend_via("env", env(c, role, &cfg.features));
    errs.extend_via("envFrom", env_from(&c.env_from));
    // Local processes run `command`; the image is for container runtimes. Which of the two a
    // runtime needs is its own check: here either will do.
    if c.image.is_empty() && c.command.is_empty() {
        errs.push(
            FieldError::missing_field(&["command", "image"]).with_details(
                "a container runs its command (local processes) or its image (container runtimes)",
            ),
        );
    } else if !c.image.is_empty()
        && let Err(e) = parse_image_reference(&c.image)
    {
        errs.push(
            FieldError::new("Failed to parse image reference", &["image"])
                .with_details(format!("image: {}, error: {e}", quote(&c.image))),
        );
    }
    if role == Role::Init {
        for p in &c.ports {
            errs.extend_via("ports", port_basic(p));
        }
    } else {
        errs.extend_via("ports", container_ports(&c.ports));
    }
    if let Some(sc) = c.security_context.as_ref().filter(|v| !v.is_null()) {
        errs.extend_via("securityContext", security_context(sc, &cfg.features));
    }
    if let Some(p) = &c.termination_message_policy
        && !matches!(p.as_str(), "" | "File" | "FallbackToLogsOnError")
    {
        errs.push(FieldError::invalid_value(p, "terminationMessagePolicy"));
    }
    errs.extend_via("volumeMounts", volume_mounts(&c.volume_mounts, volumes));
    errs
}

fn env(c: &Container, role: Role, f: &FeaturesConfig) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let field_ref = f.get(feat::PODSPEC_FIELDREF) != Flag::Disabled;
    for (i, e) in c.env.iter().enumerate() {
        let at = format!("[{i}]");
        if e.name.is_empty() {
            errs.push(FieldError::missing_field(&["name"]).via_field(&at));
        } else if RESERVED_ENV.contains(&e.name.as_str())
            && !(role != Role::User && e.name == "PORT")
        {
            errs.push(
                FieldError::new(
                    format!("{} is a reserved environment variable", quote(&e.name)),
                    &["name"],
                )
                .via_field(&at),
            );
        }
        let Some(from) = e.value_from.as_ref().filter(|v| !v.is_null()) else {
            continue;
        };
        let at = format!("{at}.valueFrom");
        let Some(obj) = from.as_object() else {
            errs.push(FieldError::invalid_value(from, &at));
            continue;
        };
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "configMapKeyRef" | "secretKeyRef" => {}
                "fieldRef" | "resourceFieldRef" if field_ref => {}
                "fieldRef" | "resourceFieldRef" => {
                    errs.push(feature_disabled(key, feat::PODSPEC_FIELDREF).via_field(&at))
                }
                _ => errs.push(FieldError::disallowed(&[key]).via_field(&at)),
            }
        }
    }
    errs
}

fn env_from(list: &[Value]) -> FieldErrors {
    let mut errs = FieldErrors::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("[{i}]");
        let Some(obj) = v.as_object() else {
            errs.push(FieldError::invalid_value(v, &at));
            continue;
        };
        let mut refs = Vec::new();
        for (key, v) in obj {
            match key.as_str() {
                "prefix" => {}
                "configMapRef" | "secretRef" if !v.is_null() => {
                    refs.push(key.as_str());
                    for inner in v.as_object().into_iter().flat_map(|m| m.keys()) {
                        if !matches!(inner.as_str(), "name" | "optional") {
                            errs.push(
                                FieldError::disallowed(&[inner]).via_field(&format!("{at}.{key}")),
                            );
                        }
                    }
                }
                "configMapRef" | "secretRef" => {}
                _ => errs.push(FieldError::disallowed(&[key]).via_field(&at)),
            }
        }
        match refs.len() {
            0 => {
                errs.push(FieldError::missing_one_of(&["configMapRef", "secretRef"]).via_field(&at))
            }
            1 => {}
            _ => errs
                .push(FieldError::multiple_one_of(&["configMapRef", "secretRef"]).via_field(&at)),
        }
    }
    errs
}

/// The serving container's (first) port: allowed fields, reserved ports, range, TCP, name.
fn container_ports(ports: &[ContainerPort]) -> FieldErrors {
    let Some(p) = ports.first() else {
        return FieldErrors::new();
    };
    let mut errs = port_basic(p);
    if let Some(proto) = &p.protocol
        && !proto.is_empty()
        && proto != "TCP"
    {
        errs.push(FieldError::invalid_value(proto, "protocol"));
    }
    if !matches!(p.name.as_str(), "" | "h2c" | "http1") {
        errs.push(
            FieldError::new(format!("Port name {} is not allowed", p.name), &[""])
                .with_details("Name must be empty, or one of: 'h2c', 'http1'"),
        );
    }
    errs
}

fn port_basic(p: &ContainerPort) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let mut disallowed = Vec::new();
    if p.host_ip.as_ref().is_some_and(|s| !s.is_empty()) {
        disallowed.push("hostIP");
    }
    if p.host_port.is_some_and(|n| n != 0) {
        disallowed.push("hostPort");
    }
    if !disallowed.is_empty() {
        errs.push(FieldError::disallowed(&disallowed));
    }
    let n = p.container_port;
    if RESERVED_PORTS.contains(&n) {
        errs.push(
            FieldError::invalid_value(format!("{n} is a reserved port"), "containerPort")
                .with_details(format!(
                    "{n} is a reserved port, please use a different value"
                )),
        );
    }
    if !(0..=65535).contains(&n) {
        errs.push(FieldError::out_of_bounds(n, 0, 65535, "containerPort"));
    }
    errs
}
