//! One test (at least) per validation rule, asserting Knative's message and field path.

use serde_json::json;

use super::*;
use crate::config::features::{self as feat, FeaturesConfig, Flag};
use crate::defaults::{default_configuration, default_revision, default_route, default_service};
use crate::meta::OwnerReference;
use crate::serving::{
    Container, ContainerPort, EnvVar, HttpGetAction, IntOrString, Probe, TcpSocketAction,
    TrafficTarget, VolumeMount,
};

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn cfg() -> Config {
    Config::default()
}

fn cfg_with(flag: &str, state: Flag) -> Config {
    let mut c = cfg();
    c.features = FeaturesConfig::default().with(flag, state);
    c
}

fn app() -> Container {
    Container {
        command: vec!["./app".to_string()],
        ..Default::default()
    }
}

/// A defaulted, valid Service named `hello` running `containers`.
fn service_with(containers: Vec<Container>) -> Service {
    let mut s = Service::default();
    s.metadata.name = "hello".into();
    s.metadata.namespace = "default".into();
    s.spec.template.spec.containers = containers;
    default_service(&mut s, None, &cfg());
    s
}

fn service() -> Service {
    service_with(vec![app()])
}

fn configuration() -> Configuration {
    let mut c = Configuration::default();
    c.metadata.name = "hello".into();
    c.spec.template.spec.containers = vec![app()];
    default_configuration(&mut c, None, &cfg());
    c
}

fn revision() -> Revision {
    let mut r = Revision::default();
    r.metadata.name = "hello-00001".into();
    r.spec.containers = vec![app()];
    default_revision(&mut r, None, &cfg());
    r
}

fn target(revision: &str, percent: i64) -> TrafficTarget {
    TrafficTarget {
        revision_name: revision.into(),
        percent: Some(percent),
        ..Default::default()
    }
}

fn route(traffic: Vec<TrafficTarget>) -> Route {
    let mut r = Route::default();
    r.metadata.name = "hello".into();
    r.spec.traffic = traffic;
    default_route(&mut r, None, &cfg());
    r
}

/// Validates a Service whose template spec was changed by `edit` after defaulting.
fn svc_errs(edit: impl FnOnce(&mut Service)) -> FieldErrors {
    svc_errs_cfg(&cfg(), edit)
}

/// Validates a Service `edit`ed before defaulting (so defaults fill what the edit left out).
fn svc_errs_raw(c: &Config, edit: impl FnOnce(&mut Service)) -> FieldErrors {
    let mut s = Service::default();
    s.metadata.name = "hello".into();
    s.spec.template.spec.containers = vec![app()];
    edit(&mut s);
    default_service(&mut s, None, c);
    validate_service(&s, None, c).expect_err("expected validation errors")
}

fn svc_ok_raw(c: &Config, edit: impl FnOnce(&mut Service)) {
    let mut s = Service::default();
    s.metadata.name = "hello".into();
    s.spec.template.spec.containers = vec![app()];
    edit(&mut s);
    default_service(&mut s, None, c);
    if let Err(e) = validate_service(&s, None, c) {
        panic!("unexpected errors:\n{e}");
    }
}

fn svc_errs_cfg(c: &Config, edit: impl FnOnce(&mut Service)) -> FieldErrors {
    let mut s = service();
    edit(&mut s);
    validate_service(&s, None, c).expect_err("expected validation errors")
}

#[track_caller]
fn assert_has(errs: &FieldErrors, message: &str, path: &str) {
    assert!(
        errs.has(message, path),
        "no error {message:?} at {path:?} in:\n{errs}\n{errs:?}"
    );
}

const C0: &str = "spec.template.spec.containers[0]";

// === Baselines ===

#[test]
fn defaulted_objects_are_valid() {
    validate_service(&service(), None, &cfg()).unwrap();
    validate_configuration(&configuration(), None, &cfg()).unwrap();
    validate_revision(&revision(), None, &cfg()).unwrap();
    validate_route(&route(vec![target("hello-00001", 100)]), None, &cfg()).unwrap();
    let s = service();
    validate_service(&s, Some(&s), &cfg()).unwrap();
}

// === Metadata ===

#[test]
fn dns1035_labels() {
    for ok in ["a", "hello", "hello-world-2", &"a".repeat(63)] {
        assert!(is_dns1035_label(ok), "{ok}");
    }
    for bad in ["", "Hello", "1abc", "abc-", "a_b", "a.b", &"a".repeat(64)] {
        assert!(!is_dns1035_label(bad), "{bad}");
    }
}

#[test]
fn name_must_be_a_dns1035_label() {
    let errs = svc_errs(|s| s.metadata.name = "Hello".into());
    assert_eq!(
        errs.to_string(),
        format!("not a DNS 1035 label: [{DNS1035_MSG}]: metadata.name")
    );
    let errs = svc_errs(|s| s.metadata.name = "a".repeat(64));
    assert_has(
        &errs,
        "not a DNS 1035 label: [must be no more than 63 characters]",
        "metadata.name",
    );
}

#[test]
fn generate_name_must_be_a_dns1035_prefix() {
    let mut s = service();
    s.metadata.name.clear();
    s.metadata.generate_name = "hello-".into();
    validate_service(&s, None, &cfg()).unwrap();
    s.metadata.generate_name = "Hello-".into();
    let errs = validate_service(&s, None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        &format!("not a DNS 1035 label prefix: [{DNS1035_MSG}]"),
        "metadata.generateName",
    );
}

#[test]
fn name_or_generate_name_is_required() {
    let errs = svc_errs(|s| s.metadata.name.clear());
    assert_has(&errs, "name or generateName is required", "metadata.name");
    let mut r = route(vec![target("x-1", 100)]);
    r.metadata.name.clear();
    let errs = validate_route(&r, None, &cfg()).unwrap_err();
    assert_has(&errs, "name or generateName is required", "metadata.name");
}

#[test]
fn autoscaling_annotations_only_on_the_template() {
    let key = "autoscaling.knative.dev/min-scale";
    let want = format!(
        "invalid key name \"{key}\": metadata.annotations\nautoscaling annotations must be put under \"spec.template.metadata.annotations\" to work"
    );
    let errs = svc_errs(|s| {
        s.metadata.annotations.insert(key.into(), "1".into());
    });
    assert_eq!(errs.to_string(), want);

    let mut c = configuration();
    c.metadata.annotations.insert(key.into(), "1".into());
    let errs = validate_configuration(&c, None, &cfg()).unwrap_err();
    assert_eq!(errs.to_string(), want);

    let mut r = route(vec![target("hello-1", 100)]);
    r.metadata.annotations.insert(key.into(), "1".into());
    let errs = validate_route(&r, None, &cfg()).unwrap_err();
    assert_eq!(errs.to_string(), want);

    // On the template they are fine.
    let mut s = service();
    s.spec
        .template
        .metadata
        .annotations
        .insert(key.into(), "1".into());
    validate_service(&s, None, &cfg()).unwrap();
}

#[test]
fn template_autoscaling_annotations_are_validated_under_the_template() {
    let errs = svc_errs(|s| {
        s.spec
            .template
            .metadata
            .annotations
            .insert("autoscaling.knative.dev/min-scale".into(), "abc".into());
    });
    assert_has(
        &errs,
        "invalid value: abc",
        "spec.template.metadata.annotations.autoscaling.knative.dev/min-scale",
    );
}

#[test]
fn revision_autoscaling_annotations_are_validated_on_its_metadata() {
    let mut r = revision();
    r.metadata
        .annotations
        .insert("autoscaling.knative.dev/min-scale".into(), "abc".into());
    let errs = validate_revision(&r, None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        "invalid value: abc",
        "metadata.annotations.autoscaling.knative.dev/min-scale",
    );
}

#[test]
fn rollout_duration_annotation() {
    let key = "serving.knative.dev/rollout-duration";
    let path = format!("metadata.annotations.{key}");
    let check = |v: &str| {
        svc_errs(|s| {
            s.metadata.annotations.insert(key.into(), v.into());
        })
    };
    assert_has(&check("soon"), "invalid value: soon", &path);
    assert_has(
        &check("1500ms"),
        "rollout-duration=1500ms is not at second precision",
        &path,
    );
    assert_has(
        &check("-10s"),
        "rollout-duration=-10s must be positive",
        &path,
    );
    for ok in ["60s", "2m", "0", "60000ms"] {
        let mut s = service();
        s.metadata.annotations.insert(key.into(), ok.into());
        validate_service(&s, None, &cfg()).unwrap();
    }
    // The legacy key, on a Route.
    let mut r = route(vec![target("hello-1", 100)]);
    r.metadata
        .annotations
        .insert("serving.knative.dev/rolloutDuration".into(), "x".into());
    let errs = validate_route(&r, None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        "invalid value: x",
        "metadata.annotations.serving.knative.dev/rolloutDuration",
    );
}

#[test]
fn progress_deadline_annotation() {
    let key = "serving.knative.dev/progress-deadline";
    let path = format!("spec.template.metadata.annotations.{key}");
    let check = |v: &str| {
        svc_errs(|s| {
            s.spec
                .template
                .metadata
                .annotations
                .insert(key.into(), v.into());
        })
    };
    assert_has(&check("1x"), "invalid value: 1x", &path);
    assert_has(
        &check("1.5s"),
        "progress-deadline=1.5s is not at second precision",
        &path,
    );
    assert_has(
        &check("-1m"),
        "progress-deadline=-1m must be positive",
        &path,
    );
}

#[test]
fn networking_annotations_must_be_known() {
    let errs = svc_errs(|s| {
        let a = &mut s.spec.template.metadata.annotations;
        a.insert("networking.knative.dev/nonsense".into(), "x".into());
        a.insert("networking.knative.dev/ingress.class".into(), "x".into());
    });
    assert_eq!(
        errs.to_string(),
        "invalid key name \"networking.knative.dev/nonsense\": spec.template.metadata.annotations"
    );
}

#[test]
fn queue_sidecar_annotations() {
    let errs = svc_errs(|s| {
        let a = &mut s.spec.template.metadata.annotations;
        a.insert(
            "queue.sidecar.serving.knative.dev/resource-percentage".into(),
            "200".into(),
        );
        a.insert(
            "queue.sidecar.serving.knative.dev/cpu-resource-request".into(),
            "lots".into(),
        );
    });
    assert_has(
        &errs,
        "expected 0.1 <= 200 <= 100",
        "spec.template.metadata.annotations.[queue.sidecar.serving.knative.dev/resource-percentage]",
    );
    assert_has(
        &errs,
        "invalid value: lots",
        "spec.template.metadata.annotations.[queue.sidecar.serving.knative.dev/cpu-resource-request]",
    );
}

#[test]
fn owner_labels_must_match_an_owner_reference() {
    let mut c = configuration();
    c.metadata
        .labels
        .insert("serving.knative.dev/service".into(), "hello".into());
    let errs = validate_configuration(&c, None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "missing field(s): metadata.labels.serving.knative.dev/service"
    );
    c.metadata.owner_references.push(OwnerReference {
        kind: "Service".into(),
        name: "hello".into(),
        ..Default::default()
    });
    validate_configuration(&c, None, &cfg()).unwrap();

    let mut r = revision();
    r.metadata
        .labels
        .insert("serving.knative.dev/configuration".into(), "hello".into());
    let errs = validate_revision(&r, None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        "missing field(s)",
        "metadata.labels.serving.knative.dev/configuration",
    );
}

#[test]
fn creator_annotation_is_immutable_and_modifier_follows_spec() {
    let mut old = service();
    old.metadata
        .annotations
        .insert("serving.knative.dev/creator".into(), "alice".into());
    let mut new = old.clone();
    new.metadata
        .annotations
        .insert("serving.knative.dev/creator".into(), "mallory".into());
    let errs = validate_service(&new, Some(&old), &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "annotation value is immutable: metadata.annotations.serving.knative.dev/creator"
    );

    let mut new = old.clone();
    new.metadata
        .annotations
        .insert("serving.knative.dev/lastModifier".into(), "bob".into());
    let errs = validate_service(&new, Some(&old), &cfg()).unwrap_err();
    assert_has(
        &errs,
        "invalid value: bob",
        "metadata.annotations.serving.knative.dev/lastModifier",
    );
}

// === Bring-your-own revision names ===

#[test]
fn byo_name_must_be_a_dns1035_label() {
    let errs = svc_errs(|s| s.spec.template.metadata.name = "hello-V1".into());
    assert_has(
        &errs,
        &format!("invalid value: not a DNS 1035 label: [{DNS1035_MSG}]"),
        "spec.template.metadata.name",
    );
}

#[test]
fn byo_name_must_start_with_the_parent_name() {
    let errs = svc_errs(|s| s.spec.template.metadata.name = "v1".into());
    assert_eq!(
        errs.to_string(),
        "invalid value: \"v1\" must have prefix \"hello-\": spec.template.metadata.name"
    );
    let mut s = service();
    s.spec.template.metadata.name = "hello-v1".into();
    validate_service(&s, None, &cfg()).unwrap();

    let mut c = configuration();
    c.spec.template.metadata.name = "other-v1".into();
    let errs = validate_configuration(&c, None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        "invalid value: \"other-v1\" must have prefix \"hello-\"",
        "spec.template.metadata.name",
    );
}

#[test]
fn byo_name_is_refused_when_the_parent_uses_generate_name() {
    let errs = svc_errs(|s| {
        s.metadata.name.clear();
        s.metadata.generate_name = "hello-".into();
        s.spec.template.metadata.name = "hello-v1".into();
    });
    assert_eq!(
        errs.to_string(),
        "must not set the field(s): spec.template.metadata.name"
    );
}

#[test]
fn template_generate_name_must_be_a_prefix() {
    let errs = svc_errs(|s| s.spec.template.metadata.generate_name = "Hello-".into());
    assert_has(
        &errs,
        &format!("invalid value: not a DNS 1035 label prefix: [{DNS1035_MSG}]"),
        "spec.template.metadata.generateName",
    );
}

#[test]
fn byo_name_must_change_with_the_template() {
    let mut old = service();
    old.spec.template.metadata.name = "hello-v1".into();
    let mut new = old.clone();
    new.spec.template.spec.containers[0].command = vec!["./other".into()];
    let errs = validate_service(&new, Some(&old), &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "Saw the following changes without a name change (-old +new): spec.template.metadata.name\n\
         spec.containers[0].command[0]:\n\t-: \"./app\"\n\t+: \"./other\"\n"
    );
    // Renamed: fine. Unchanged: fine. Traffic-only change: fine.
    new.spec.template.metadata.name = "hello-v2".into();
    validate_service(&new, Some(&old), &cfg()).unwrap();
    let mut same = old.clone();
    same.spec.traffic[0].tag = "current".into();
    validate_service(&same, Some(&old), &cfg()).unwrap();

    let mut old = configuration();
    old.spec.template.metadata.name = "hello-v1".into();
    let mut new = old.clone();
    new.spec
        .template
        .metadata
        .annotations
        .insert("a".into(), "b".into());
    let errs = validate_configuration(&new, Some(&old), &cfg()).unwrap_err();
    assert_has(
        &errs,
        "Saw the following changes without a name change (-old +new)",
        "spec.template.metadata.name",
    );
}

#[test]
fn revision_spec_is_immutable() {
    let old = revision();
    let mut new = old.clone();
    new.spec.timeout_seconds = Some(30);
    let errs = validate_revision(&new, Some(&old), &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "Immutable fields changed (-old +new): spec\ntimeoutSeconds:\n\t-: 300\n\t+: 30\n"
    );
    // Metadata may change.
    let mut new = old.clone();
    new.metadata
        .labels
        .insert("serving.knative.dev/routingState".into(), "active".into());
    validate_revision(&new, Some(&old), &cfg()).unwrap();
}

// === Revision spec ===

#[test]
fn timeout_seconds_within_configured_maximum() {
    let errs = svc_errs(|s| s.spec.template.spec.timeout_seconds = Some(601));
    assert_eq!(
        errs.to_string(),
        "expected 0 <= 601 <= 600: spec.template.spec.timeoutSeconds"
    );
    let errs = svc_errs(|s| s.spec.template.spec.timeout_seconds = Some(-1));
    assert_has(
        &errs,
        "expected 0 <= -1 <= 600",
        "spec.template.spec.timeoutSeconds",
    );
    let mut c = cfg();
    c.defaults.max_revision_timeout_seconds = 3600;
    let mut s = service();
    s.spec.template.spec.timeout_seconds = Some(3600);
    validate_service(&s, None, &c).unwrap();
    // Revisions are checked the same way, at `spec.timeoutSeconds`.
    let mut r = revision();
    r.spec.timeout_seconds = Some(1000);
    let errs = validate_revision(&r, None, &cfg()).unwrap_err();
    assert_has(&errs, "expected 0 <= 1000 <= 600", "spec.timeoutSeconds");
}

#[test]
fn container_concurrency_bounds() {
    let errs = svc_errs(|s| s.spec.template.spec.container_concurrency = Some(1001));
    assert_eq!(
        errs.to_string(),
        "expected 0 <= 1001 <= 1000: spec.template.spec.containerConcurrency"
    );
    let errs = svc_errs(|s| s.spec.template.spec.container_concurrency = Some(-1));
    assert_has(
        &errs,
        "expected 0 <= -1 <= 1000",
        "spec.template.spec.containerConcurrency",
    );
    let mut c = cfg();
    c.defaults.allow_container_concurrency_zero = false;
    let errs = svc_errs_cfg(&c, |s| s.spec.template.spec.container_concurrency = Some(0));
    assert_has(
        &errs,
        "expected 1 <= 0 <= 1000",
        "spec.template.spec.containerConcurrency",
    );
}

#[test]
fn at_least_one_container() {
    let errs = svc_errs(|s| s.spec.template.spec.containers.clear());
    assert_eq!(
        errs.to_string(),
        "missing field(s): spec.template.spec.containers"
    );
}

#[test]
fn container_names_are_unique_and_queue_proxy_is_reserved() {
    let mut main = app();
    main.name = "a".into();
    main.ports.push(ContainerPort::default());
    let mut side = app();
    side.name = "a".into();
    let errs = svc_errs(|s| s.spec.template.spec.containers = vec![main, side]);
    assert_eq!(
        errs.to_string(),
        "duplicate container name \"a\": spec.template.spec.containers[1].name"
    );
    let errs = svc_errs(|s| s.spec.template.spec.containers[0].name = "queue-proxy".into());
    assert_eq!(
        errs.to_string(),
        format!("\"queue-proxy\" is a reserved container name: {C0}.name")
    );
}

#[test]
fn a_container_name_must_be_a_dns_label() {
    let errs = svc_errs(|s| s.spec.template.spec.containers[0].name = "&InvalidValue".into());
    assert_eq!(
        errs.to_string(),
        format!(
            "invalid value: &InvalidValue: {C0}.name\na lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        )
    );
    svc_ok_raw(&Config::default(), |s| {
        s.spec.template.spec.containers[0].name = "user-container".into()
    });
}

#[test]
fn command_or_image_is_required() {
    let errs = svc_errs(|s| s.spec.template.spec.containers[0].command.clear());
    assert_has(&errs, "missing field(s)", &format!("{C0}.command"));
    assert_has(&errs, "missing field(s)", &format!("{C0}.image"));
    // Either one alone is enough here.
    let mut s = service();
    s.spec.template.spec.containers[0].command.clear();
    s.spec.template.spec.containers[0].image = "ghcr.io/example/app:v1".into();
    validate_service(&s, None, &cfg()).unwrap();
}

#[test]
fn image_must_parse() {
    let errs = svc_errs(|s| s.spec.template.spec.containers[0].image = "Not An Image".into());
    assert_eq!(
        errs.to_string(),
        format!(
            "Failed to parse image reference: {C0}.image\nimage: \"Not An Image\", error: could not parse reference: Not An Image"
        )
    );
}

#[test]
fn one_port_across_containers() {
    let port = |n| ContainerPort {
        container_port: n,
        ..Default::default()
    };
    let errs =
        svc_errs(|s| s.spec.template.spec.containers[0].ports = vec![port(8080), port(8081)]);
    assert_eq!(
        errs.to_string(),
        "more than one container port is set: spec.template.spec.containers[*].ports\nOnly a single port is allowed across all containers"
    );
    let mut a = app();
    a.name = "a".into();
    let mut b = app();
    b.name = "b".into();
    let errs = svc_errs(|s| s.spec.template.spec.containers = vec![a.clone(), b.clone()]);
    assert_has(
        &errs,
        "missing field(s)",
        "spec.template.spec.containers[*].ports",
    );
    a.ports.push(port(8080));
    b.ports.push(port(9000));
    let errs = svc_errs(|s| s.spec.template.spec.containers = vec![a.clone(), b.clone()]);
    assert_has(
        &errs,
        "more than one container port is set",
        "spec.template.spec.containers[*].ports",
    );
    b.ports.clear();
    let mut s = service();
    s.spec.template.spec.containers = vec![a, b];
    validate_service(&s, None, &cfg()).unwrap();
}

#[test]
fn port_name_protocol_and_number() {
    let with_port =
        |p: ContainerPort| svc_errs(move |s| s.spec.template.spec.containers[0].ports = vec![p]);
    let errs = with_port(ContainerPort {
        name: "grpc".into(),
        container_port: 8080,
        ..Default::default()
    });
    assert_eq!(
        errs.to_string(),
        format!(
            "Port name grpc is not allowed: {C0}.ports\nName must be empty, or one of: 'h2c', 'http1'"
        )
    );
    let errs = with_port(ContainerPort {
        container_port: 8080,
        protocol: Some("UDP".into()),
        ..Default::default()
    });
    assert_eq!(
        errs.to_string(),
        format!("invalid value: UDP: {C0}.ports.protocol")
    );
    for reserved in [8012, 8013, 8022, 9090, 9091, 8008] {
        let errs = with_port(ContainerPort {
            container_port: reserved,
            ..Default::default()
        });
        assert_eq!(
            errs.to_string(),
            format!(
                "invalid value: {reserved} is a reserved port: {C0}.ports.containerPort\n{reserved} is a reserved port, please use a different value"
            )
        );
    }
    let errs = with_port(ContainerPort {
        container_port: 70000,
        ..Default::default()
    });
    assert_has(
        &errs,
        "expected 0 <= 70000 <= 65535",
        &format!("{C0}.ports.containerPort"),
    );
    let errs = with_port(ContainerPort {
        container_port: 8080,
        host_port: Some(80),
        ..Default::default()
    });
    assert_has(
        &errs,
        "must not set the field(s)",
        &format!("{C0}.ports.hostPort"),
    );
    for ok in ["", "h2c", "http1"] {
        let mut s = service();
        s.spec.template.spec.containers[0].ports = vec![ContainerPort {
            name: ok.into(),
            container_port: 8080,
            protocol: Some("TCP".into()),
            ..Default::default()
        }];
        validate_service(&s, None, &cfg()).unwrap();
    }
}

#[test]
fn reserved_env_vars() {
    for name in ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"] {
        let errs = svc_errs(|s| {
            s.spec.template.spec.containers[0].env = vec![EnvVar {
                name: name.into(),
                value: Some("x".into()),
                ..Default::default()
            }];
        });
        assert_eq!(
            errs.to_string(),
            format!("\"{name}\" is a reserved environment variable: {C0}.env[0].name")
        );
    }
    // A sidecar may set PORT, not K_SERVICE.
    let mut main = app();
    main.name = "main".into();
    main.ports.push(ContainerPort::default());
    let mut side = app();
    side.name = "side".into();
    side.env = vec![
        EnvVar {
            name: "PORT".into(),
            value: Some("9000".into()),
            ..Default::default()
        },
        EnvVar {
            name: "K_SERVICE".into(),
            value: Some("x".into()),
            ..Default::default()
        },
    ];
    let errs = svc_errs(|s| s.spec.template.spec.containers = vec![main, side]);
    assert_eq!(
        errs.to_string(),
        "\"K_SERVICE\" is a reserved environment variable: spec.template.spec.containers[1].env[1].name"
    );
}

#[test]
fn env_name_required_and_value_from_sources() {
    let errs = svc_errs(|s| {
        s.spec.template.spec.containers[0].env = vec![EnvVar::default()];
    });
    assert_has(&errs, "missing field(s)", &format!("{C0}.env[0].name"));

    let env = |from| EnvVar {
        name: "X".into(),
        value_from: Some(from),
        ..Default::default()
    };
    // Secret and ConfigMap references are allowed (Kubernetes mode resolves them).
    let mut s = service();
    s.spec.template.spec.containers[0].env =
        vec![env(json!({"secretKeyRef": {"name": "s", "key": "k"}}))];
    validate_service(&s, None, &cfg()).unwrap();

    let field_ref = env(json!({"fieldRef": {"fieldPath": "metadata.name"}}));
    let errs = svc_errs(|s| s.spec.template.spec.containers[0].env = vec![field_ref.clone()]);
    assert_has(
        &errs,
        "must not set the field(s)",
        &format!("{C0}.env[0].valueFrom.fieldRef"),
    );
    assert!(errs.to_string().contains("kubernetes.podspec-fieldref"));
    let c = cfg_with(feat::PODSPEC_FIELDREF, Flag::Enabled);
    let mut s = service();
    s.spec.template.spec.containers[0].env = vec![field_ref];
    validate_service(&s, None, &c).unwrap();
}

#[test]
fn env_from_takes_one_source() {
    let errs = svc_errs(|s| {
        s.spec.template.spec.containers[0].env_from =
            vec![json!({"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}})];
    });
    assert_eq!(
        errs.to_string(),
        format!(
            "expected exactly one, got both: {C0}.envFrom[0].configMapRef, {C0}.envFrom[0].secretRef"
        )
    );
}

#[test]
fn volume_mount_rules() {
    let mount = |name: &str, path: &str, ro: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(ro),
        ..Default::default()
    };
    let errs = svc_errs(|s| {
        let spec = &mut s.spec.template.spec;
        spec.volumes = vec![
            json!({"name": "secret", "secret": {"secretName": "s"}}),
            json!({"name": "scratch", "emptyDir": {}}),
        ];
        spec.containers[0].volume_mounts = vec![
            mount("secret", "/dev/", true),
            mount("scratch", "relative", false),
            mount("scratch", "/data", false),
            mount("scratch", "/data/", false),
            mount("nothing", "/x", true),
            mount("secret", "/etc/secret", false),
        ];
    });
    let vm = format!("{C0}.volumeMounts");
    assert_has(
        &errs,
        "mountPath \"/dev\" is a reserved path",
        &format!("{vm}[0].mountPath"),
    );
    assert_has(
        &errs,
        "invalid value: relative",
        &format!("{vm}[1].mountPath"),
    );
    assert_has(
        &errs,
        "invalid value: \"/data/\" must be unique",
        &format!("{vm}[3].mountPath"),
    );
    assert_has(
        &errs,
        "volumeMount has no matching volume",
        &format!("{vm}[4].name"),
    );
    assert_has(
        &errs,
        "volume mount should be readOnly for this type of volume",
        &format!("{vm}[5].readOnly"),
    );
}

#[test]
fn volume_rules() {
    let errs = svc_errs(|s| {
        let spec = &mut s.spec.template.spec;
        spec.volumes = vec![
            json!({"name": "host", "hostPath": {"path": "/tmp"}}),
            json!({"name": "none"}),
            json!({"name": "unused", "emptyDir": {}}),
            json!({"name": "two", "secret": {"secretName": "s"}, "configMap": {"name": "c"}}),
            json!({"name": "nfs", "nfs": {"server": "x"}}),
        ];
        spec.containers[0].volume_mounts = ["host", "none", "two", "nfs"]
            .iter()
            .map(|n| VolumeMount {
                name: n.to_string(),
                mount_path: format!("/{n}"),
                read_only: Some(true),
                ..Default::default()
            })
            .collect();
    });
    let v = "spec.template.spec.volumes";
    let text = errs.to_string();
    assert!(
        text.contains("HostPath volume support is disabled, but found HostPath volume host"),
        "{text}"
    );
    assert_has(
        &errs,
        "must not set the field(s)",
        &format!("{v}[0].hostPath"),
    );
    assert_has(
        &errs,
        "expected exactly one, got neither",
        &format!("{v}[1].emptyDir"),
    );
    assert_has(
        &errs,
        "volume with name \"unused\" not mounted",
        &format!("{v}[2].name"),
    );
    assert_has(
        &errs,
        "expected exactly one, got both",
        &format!("{v}[3].configMap"),
    );
    assert_has(&errs, "must not set the field(s)", &format!("{v}[4].nfs"));
}

#[test]
fn probe_needs_exactly_one_handler() {
    let errs = svc_errs(|s| {
        let p = s.spec.template.spec.containers[0]
            .readiness_probe
            .as_mut()
            .unwrap();
        p.http_get = Some(HttpGetAction::default());
    });
    assert_eq!(
        errs.to_string(),
        format!(
            "expected exactly one, got both: {C0}.readinessProbe.httpGet, {C0}.readinessProbe.tcpSocket"
        )
    );
    let errs = svc_errs(|s| {
        s.spec.template.spec.containers[0].liveness_probe = Some(Probe::default());
    });
    assert_eq!(
        errs.to_string(),
        format!(
            "expected exactly one, got neither: {C0}.livenessProbe.exec, {C0}.livenessProbe.grpc, {C0}.livenessProbe.httpGet, {C0}.livenessProbe.tcpSocket"
        )
    );
}

#[test]
fn aggressive_probing_forbids_failure_threshold_and_timeout() {
    let errs = svc_errs(|s| {
        let p = s.spec.template.spec.containers[0]
            .readiness_probe
            .as_mut()
            .unwrap();
        p.failure_threshold = Some(3);
        p.timeout_seconds = Some(2);
    });
    let rp = format!("{C0}.readinessProbe");
    assert_has(
        &errs,
        "failureThreshold is disallowed when periodSeconds is zero",
        &format!("{rp}.failureThreshold"),
    );
    assert_has(
        &errs,
        "timeoutSeconds is disallowed when periodSeconds is zero",
        &format!("{rp}.timeoutSeconds"),
    );
}

#[test]
fn probe_thresholds_are_at_least_one() {
    let rp = format!("{C0}.readinessProbe");
    let errs = svc_errs(|s| {
        let p = s.spec.template.spec.containers[0]
            .readiness_probe
            .as_mut()
            .unwrap();
        p.period_seconds = Some(5);
        p.timeout_seconds = Some(0);
        p.failure_threshold = Some(0);
        p.success_threshold = Some(0);
    });
    for f in ["timeoutSeconds", "failureThreshold", "successThreshold"] {
        assert_has(&errs, "expected 1 <= 0 <= 2147483647", &format!("{rp}.{f}"));
    }
    let errs = svc_errs(|s| {
        let p = s.spec.template.spec.containers[0]
            .readiness_probe
            .as_mut()
            .unwrap();
        p.period_seconds = Some(-1);
        p.initial_delay_seconds = Some(-1);
    });
    assert_has(
        &errs,
        "expected 0 <= -1 <= 2147483647",
        &format!("{rp}.periodSeconds"),
    );
    assert_has(
        &errs,
        "expected 0 <= -1 <= 2147483647",
        &format!("{rp}.initialDelaySeconds"),
    );
}

#[test]
fn named_probe_port_must_match_the_container_port() {
    let named = |port: &str| Probe {
        http_get: Some(HttpGetAction {
            port: Some(IntOrString::String(port.into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let errs = svc_errs_raw(&cfg(), |s| {
        s.spec.template.spec.containers[0].readiness_probe = Some(named("admin"));
    });
    assert_eq!(
        errs.to_string(),
        format!(
            "invalid value: admin: {C0}.readinessProbe.httpGet.port\nProbe port must match container port"
        )
    );
    // An unnamed port is called `http`; a named one by its name.
    svc_ok_raw(&cfg(), |s| {
        s.spec.template.spec.containers[0].readiness_probe = Some(named("http"));
    });
    svc_ok_raw(&cfg(), |s| {
        let c = &mut s.spec.template.spec.containers[0];
        c.ports = vec![ContainerPort {
            name: "h2c".into(),
            container_port: 8080,
            ..Default::default()
        }];
        c.liveness_probe = Some(named("h2c"));
    });
    // Numeric ports are not compared.
    svc_ok_raw(&cfg(), |s| {
        s.spec.template.spec.containers[0].readiness_probe = Some(Probe {
            tcp_socket: Some(TcpSocketAction {
                port: Some(IntOrString::Int(9999)),
                host: None,
            }),
            ..Default::default()
        });
    });
}

fn two_containers(side_probe: Probe) -> impl FnOnce(&mut Service) {
    move |s: &mut Service| {
        let mut main = app();
        main.name = "main".into();
        main.ports.push(ContainerPort::default());
        let mut side = app();
        side.name = "side".into();
        side.readiness_probe = Some(side_probe);
        s.spec.template.spec.containers = vec![main, side];
    }
}

#[test]
fn sidecar_probes_need_multi_container_probing() {
    let tcp = Probe {
        tcp_socket: Some(TcpSocketAction::default()),
        period_seconds: Some(5),
        ..Default::default()
    };
    let errs = svc_errs_raw(&cfg(), two_containers(tcp.clone()));
    let rp = "spec.template.spec.containers[1].readinessProbe";
    for f in [
        "failureThreshold",
        "periodSeconds",
        "successThreshold",
        "tcpSocket",
        "timeoutSeconds",
    ] {
        assert_has(&errs, "must not set the field(s)", &format!("{rp}.{f}"));
    }
    assert!(errs.to_string().contains("multi-container-probing"));

    // Enabled: allowed, but the port must be given (there is no serving port to default to).
    let c = cfg_with(feat::MULTI_CONTAINER_PROBING, Flag::Enabled);
    let errs = svc_errs_raw(&c, two_containers(tcp));
    assert_eq!(
        errs.to_string(),
        format!("invalid value: 0: {rp}.tcpSocket.port\nProbe port must be specified")
    );
    let with_port = Probe {
        tcp_socket: Some(TcpSocketAction {
            port: Some(IntOrString::Int(9000)),
            host: None,
        }),
        ..Default::default()
    };
    svc_ok_raw(&c, two_containers(with_port));
}

#[test]
fn multi_container_can_be_switched_off() {
    let c = cfg_with(feat::MULTI_CONTAINER, Flag::Disabled);
    let errs = svc_errs_raw(&c, |s| {
        let mut main = app();
        main.ports.push(ContainerPort::default());
        s.spec.template.spec.containers = vec![main, app()];
    });
    assert_eq!(
        errs.to_string(),
        "multi-container is off, but found 2 containers"
    );
}

#[test]
fn feature_gated_pod_fields() {
    type Edit = Box<dyn Fn(&mut Service)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "affinity",
            feat::PODSPEC_AFFINITY,
            Box::new(|s| s.spec.template.spec.affinity = Some(json!({"nodeAffinity": {}}))),
        ),
        (
            "tolerations",
            feat::PODSPEC_TOLERATIONS,
            Box::new(|s| s.spec.template.spec.tolerations = vec![json!({"key": "k"})]),
        ),
        (
            "nodeSelector",
            feat::PODSPEC_NODESELECTOR,
            Box::new(|s| {
                s.spec
                    .template
                    .spec
                    .node_selector
                    .insert("disk".into(), "ssd".into());
            }),
        ),
        (
            "runtimeClassName",
            feat::PODSPEC_RUNTIMECLASSNAME,
            Box::new(|s| s.spec.template.spec.runtime_class_name = Some("gvisor".into())),
        ),
        (
            "priorityClassName",
            feat::PODSPEC_PRIORITYCLASSNAME,
            Box::new(|s| s.spec.template.spec.priority_class_name = Some("high".into())),
        ),
        (
            "schedulerName",
            feat::PODSPEC_SCHEDULERNAME,
            Box::new(|s| s.spec.template.spec.scheduler_name = Some("mine".into())),
        ),
        (
            "hostAliases",
            feat::PODSPEC_HOSTALIASES,
            Box::new(|s| s.spec.template.spec.host_aliases = vec![json!({"ip": "1.2.3.4"})]),
        ),
        (
            "dnsPolicy",
            feat::PODSPEC_DNS_POLICY,
            Box::new(|s| s.spec.template.spec.dns_policy = Some("None".into())),
        ),
        (
            "dnsConfig",
            feat::PODSPEC_DNS_CONFIG,
            Box::new(|s| s.spec.template.spec.dns_config = Some(json!({"nameservers": []}))),
        ),
        (
            "topologySpreadConstraints",
            feat::PODSPEC_TOPOLOGYSPREADCONSTRAINTS,
            Box::new(|s| {
                s.spec.template.spec.topology_spread_constraints = vec![json!({"maxSkew": 1})]
            }),
        ),
        (
            "securityContext",
            feat::PODSPEC_SECURITYCONTEXT,
            Box::new(|s| s.spec.template.spec.security_context = Some(json!({"runAsUser": 1000}))),
        ),
    ];
    for (field, flag, edit) in cases {
        let errs = svc_errs(&*edit);
        assert_eq!(
            errs.to_string(),
            format!(
                "must not set the field(s): spec.template.spec.{field}\nfeature \"{flag}\" is Disabled in config-features; set it to Enabled to use this field"
            )
        );
        for state in [Flag::Enabled, Flag::Allowed] {
            let mut s = service();
            edit(&mut s);
            validate_service(&s, None, &cfg_with(flag, state)).unwrap();
        }
    }
}

#[test]
fn always_disallowed_pod_fields() {
    let errs = svc_errs(|s| {
        s.spec.template.spec.termination_grace_period_seconds = Some(30);
        s.spec.template.spec.automount_service_account_token = Some(true);
    });
    assert_eq!(
        errs.to_string(),
        "must not set the field(s): spec.template.spec.automountServiceAccountToken, spec.template.spec.terminationGracePeriodSeconds"
    );
    let mut s = service();
    s.spec.template.spec.automount_service_account_token = Some(false);
    validate_service(&s, None, &cfg()).unwrap();

    let errs = svc_errs(|s| {
        let c = &mut s.spec.template.spec.containers[0];
        c.lifecycle = Some(json!({"preStop": {}}));
        c.stdin = Some(true);
    });
    assert_eq!(
        errs.to_string(),
        format!("must not set the field(s): {C0}.lifecycle, {C0}.stdin")
    );
}

#[test]
fn init_containers_are_gated_and_checked() {
    let errs = svc_errs(|s| s.spec.template.spec.init_containers = vec![app()]);
    assert_has(
        &errs,
        "must not set the field(s)",
        "spec.template.spec.initContainers",
    );
    assert!(errs.0.iter().any(|e| e.paths.is_empty()
        && e.message
            == "pod spec support for init-containers is off, but found 1 init containers"));
    let c = cfg_with(feat::PODSPEC_INIT_CONTAINERS, Flag::Enabled);
    svc_ok_raw(&c, |s| {
        let mut init = app();
        init.env = vec![EnvVar {
            name: "PORT".into(),
            value: Some("1".into()),
            ..Default::default()
        }];
        s.spec.template.spec.init_containers = vec![init];
    });
    let errs = svc_errs_raw(&c, |s| {
        let mut init = app();
        init.name = "user-container".into();
        init.readiness_probe = Some(Probe::default());
        s.spec.template.spec.containers[0].name = "user-container".into();
        s.spec.template.spec.init_containers = vec![init];
    });
    let ic = "spec.template.spec.initContainers[0]";
    assert_has(
        &errs,
        "duplicate container name \"user-container\"",
        &format!("{ic}.name"),
    );
    assert_has(
        &errs,
        "field not allowed in an init container",
        &format!("{ic}.readinessProbe"),
    );
}

#[test]
fn service_account_name_must_be_a_subdomain() {
    let errs = svc_errs(|s| s.spec.template.spec.service_account_name = "Bad_Name".into());
    assert_has(
        &errs,
        "invalid value: Bad_Name",
        "spec.template.spec.serviceAccountName",
    );
}

#[test]
fn security_contexts() {
    let c = cfg_with(feat::PODSPEC_SECURITYCONTEXT, Flag::Enabled);
    let errs = svc_errs_cfg(&c, |s| {
        s.spec.template.spec.security_context =
            Some(json!({"runAsUser": -1, "sysctls": [{"name": "x"}]}));
    });
    let sc = "spec.template.spec.securityContext";
    assert_has(
        &errs,
        "expected 0 <= -1 <= 2147483647",
        &format!("{sc}.runAsUser"),
    );
    assert_has(&errs, "must not set the field(s)", &format!("{sc}.sysctls"));

    let errs = svc_errs(|s| {
        s.spec.template.spec.containers[0].security_context = Some(json!({
            "privileged": true,
            "runAsNonRoot": true,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        }));
    });
    assert_has(
        &errs,
        "must not set the field(s)",
        &format!("{C0}.securityContext.privileged"),
    );
    assert_has(
        &errs,
        "must not set the field(s)",
        &format!("{C0}.securityContext.capabilities.add"),
    );
    let c = cfg_with(feat::CONTAINERSPEC_ADD_CAPABILITIES, Flag::Enabled);
    let mut s = service();
    s.spec.template.spec.containers[0].security_context =
        Some(json!({"capabilities": {"add": ["NET_ADMIN"]}, "privileged": false}));
    validate_service(&s, None, &c).unwrap();
}

#[test]
fn termination_message_policy() {
    let errs = svc_errs(|s| {
        s.spec.template.spec.containers[0].termination_message_policy = Some("Never".into());
    });
    assert_eq!(
        errs.to_string(),
        format!("invalid value: Never: {C0}.terminationMessagePolicy")
    );
}

// === Traffic ===

#[test]
fn traffic_must_sum_to_100() {
    let errs = svc_errs(|s| s.spec.traffic[0].percent = Some(90));
    assert_eq!(
        errs.to_string(),
        "Traffic targets sum to 90, want 100: spec.traffic"
    );
    // A standalone Route with no traffic sums to 0.
    let errs = validate_route(&route(vec![]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "Traffic targets sum to 0, want 100: spec.traffic"
    );
    validate_route(
        &route(vec![target("hello-1", 40), target("hello-2", 60)]),
        None,
        &cfg(),
    )
    .unwrap();
}

#[test]
fn traffic_percent_in_range() {
    let errs = validate_route(
        &route(vec![target("hello-1", 101), target("hello-2", -1)]),
        None,
        &cfg(),
    )
    .unwrap_err();
    assert_has(&errs, "expected 0 <= 101 <= 100", "spec.traffic[0].percent");
    assert_has(&errs, "expected 0 <= -1 <= 100", "spec.traffic[1].percent");
}

#[test]
fn revision_name_xor_configuration_name() {
    let mut both = target("hello-1", 100);
    both.configuration_name = "hello".into();
    let errs = validate_route(&route(vec![both]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "expected exactly one, got both: spec.traffic[0].configurationName, spec.traffic[0].revisionName"
    );
    let neither = TrafficTarget {
        percent: Some(100),
        latest_revision: Some(true),
        ..Default::default()
    };
    let errs = validate_route(&route(vec![neither]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "expected exactly one, got neither: spec.traffic[0].configurationName, spec.traffic[0].revisionName"
    );
    let by_config = TrafficTarget {
        configuration_name: "hello".into(),
        percent: Some(100),
        ..Default::default()
    };
    validate_route(&route(vec![by_config]), None, &cfg()).unwrap();
}

#[test]
fn service_traffic_may_not_name_a_configuration() {
    let errs = svc_errs(|s| s.spec.traffic[0].configuration_name = "other".into());
    assert_eq!(
        errs.to_string(),
        "must not set the field(s): spec.traffic[0].configurationName"
    );
}

#[test]
fn latest_revision_must_match_revision_name() {
    let mut pinned = target("hello-00001", 100);
    pinned.latest_revision = Some(true);
    let errs = validate_route(&route(vec![pinned]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "may not set revisionName \"hello-00001\" when latestRevision is true: spec.traffic[0].latestRevision"
    );
    let errs = svc_errs(|s| s.spec.traffic[0].latest_revision = Some(false));
    assert_eq!(
        errs.to_string(),
        "may not set revisionName \"\" when latestRevision is false: spec.traffic[0].latestRevision"
    );
}

#[test]
fn tags_are_dns1035_labels() {
    let mut t = target("hello-1", 100);
    t.tag = "Canary".into();
    let errs = validate_route(&route(vec![t]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        format!("invalid value: not a DNS 1035 label: [{DNS1035_MSG}]: spec.traffic.tag[0]")
    );
}

#[test]
fn duplicate_tags() {
    let mut a = target("hello-1", 50);
    a.tag = "v1".into();
    let mut b = target("hello-2", 50);
    b.tag = "v1".into();
    let errs = validate_route(&route(vec![a, b]), None, &cfg()).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "Multiple definitions for \"v1\": spec.traffic[0].tag, spec.traffic[1].tag"
    );
}

#[test]
fn url_is_status_only() {
    let errs = svc_errs(|s| s.spec.traffic[0].url = "http://x".into());
    assert_eq!(
        errs.to_string(),
        "must not set the field(s): spec.traffic[0].url"
    );
}

#[test]
fn traffic_names_must_be_qualified_names() {
    let errs = validate_route(&route(vec![target("bad name", 100)]), None, &cfg()).unwrap_err();
    assert_has(
        &errs,
        "invalid key name \"bad name\"",
        "spec.traffic[0].revisionName",
    );
}

#[test]
fn reapplying_the_same_manifest_is_accepted() {
    let manifest = |command: &str| {
        let mut s = Service::default();
        s.metadata.name = "hello".into();
        s.spec.template.metadata.name = "hello-v1".into();
        s.spec.template.spec.containers = vec![Container {
            command: vec![command.into()],
            ..Default::default()
        }];
        s
    };
    let mut stored = manifest("./app");
    default_service(&mut stored, None, &cfg());
    let mut again = manifest("./app");
    default_service(&mut again, Some(&stored), &cfg());
    validate_service(&again, Some(&stored), &cfg()).unwrap();

    let mut changed = manifest("./other");
    default_service(&mut changed, Some(&stored), &cfg());
    let errs = validate_service(&changed, Some(&stored), &cfg()).unwrap_err();
    assert_has(
        &errs,
        "Saw the following changes without a name change (-old +new)",
        "spec.template.metadata.name",
    );

    let stored = revision();
    let mut again = Revision::default();
    again.metadata.name = "hello-00001".into();
    again.spec.containers = vec![app()];
    default_revision(&mut again, Some(&stored), &cfg());
    validate_revision(&again, Some(&stored), &cfg()).unwrap();
}

#[test]
fn request_body_buffer_annotation_is_a_whole_byte_quantity() {
    let key = "rouse.dev/request-body-buffer";
    for good in ["1Mi", "65536", "0", "64k"] {
        svc_ok_raw(&cfg(), |s| {
            s.spec
                .template
                .metadata
                .annotations
                .insert(key.into(), good.into());
        });
    }
    for bad in ["lots", "-1", "500m"] {
        let errs = svc_errs(|s| {
            s.spec
                .template
                .metadata
                .annotations
                .insert(key.into(), bad.into());
        });
        assert!(
            errs.to_string()
                .contains("spec.template.metadata.annotations.rouse.dev/request-body-buffer"),
            "{bad}: {errs}"
        );
    }
}
