//! Defaulting, as Knative's webhook applies it on create and update (reference §1.4).
//!
//! Each `default_*` takes the stored object on update (`old`), because Knative skips parts of
//! defaulting then: a Revision is never re-defaulted (its spec is immutable), and a template
//! whose bring-your-own name did not change is left alone (defaulting it could otherwise look
//! like a "change without a name change").
//!
//! Rouse replaces objects whole (no `kubectl apply` three-way merge keeps the stored defaults),
//! so on update one more rule keeps re-applying the same manifest a no-op: where Knative would
//! skip defaulting, the defaults are still applied when that makes the object equal to the
//! stored one, and an unset `enableServiceLinks` keeps the stored value.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::config::features::{Flag, SECURE_POD_DEFAULTS};
use crate::serving::{
    Configuration, Container, GrpcAction, Probe, ResourceRequirements, Revision, RevisionSpec,
    RevisionTemplateSpec, Route, Service, TcpSocketAction, TrafficTarget,
};

/// Kubernetes' longest label, which container names must fit.
const MAX_NAME_LEN: usize = 63;

/// Defaults a Service: its template (unless on update the BYO name is unchanged) and its
/// traffic (`[{percent: 100, latestRevision: true}]` when empty).
pub fn default_service(svc: &mut Service, old: Option<&Service>, cfg: &Config) {
    let parent = Parent::of(&svc.metadata);
    default_template(
        &mut svc.spec.template,
        old.map(|o| &o.spec.template),
        &parent,
        cfg,
    );
    default_traffic(&mut svc.spec.traffic, true);
}

/// Defaults a Configuration's template (unless on update the BYO name is unchanged).
pub fn default_configuration(c: &mut Configuration, old: Option<&Configuration>, cfg: &Config) {
    let parent = Parent::of(&c.metadata);
    default_template(
        &mut c.spec.template,
        old.map(|o| &o.spec.template),
        &parent,
        cfg,
    );
}

/// Defaults a Revision created directly; on update nothing is defaulted (the spec is
/// immutable, so defaulting could only produce a forbidden change).
pub fn default_revision(r: &mut Revision, old: Option<&Revision>, cfg: &Config) {
    // A revision has no parent in the webhook's context: name templates see empty metadata.
    let parent = Parent::default();
    match old {
        None => default_spec(&mut r.spec, cfg, &parent, true),
        Some(old) => {
            let mut candidate = r.spec.clone();
            default_spec(&mut candidate, cfg, &parent, false);
            keep_service_links(&mut candidate, &old.spec);
            if candidate == old.spec {
                r.spec = candidate;
            }
        }
    }
}

/// Defaults a Route's traffic targets (`latestRevision` and `percent`).
pub fn default_route(r: &mut Route, old: Option<&Route>, cfg: &Config) {
    let _ = (old, cfg);
    default_traffic(&mut r.spec.traffic, false);
}

/// Defaults a DomainMapping: `spec.ref.namespace` is the mapping's own (Knative's
/// `KReference` defaulting within its parent).
pub fn default_domain_mapping(
    dm: &mut crate::domainmapping::DomainMapping,
    old: Option<&crate::domainmapping::DomainMapping>,
    cfg: &Config,
) {
    let _ = (old, cfg);
    if dm.spec.ref_.namespace.is_empty() {
        dm.spec.ref_.namespace = dm.metadata.namespace.clone();
    }
}

/// Defaults a PodAutoscaler as Knative's webhook does: the class annotation from
/// `config-autoscaler`'s `pod-autoscaler-class` when absent, then the class's metric when
/// absent (KPA: `concurrency`, HPA: `cpu`; another class's metric is its own business).
/// The spec has no defaults.
pub fn default_pod_autoscaler(
    pa: &mut crate::autoscaling::PodAutoscaler,
    old: Option<&crate::autoscaling::PodAutoscaler>,
    cfg: &Config,
) {
    use crate::autoscaling::annotations::{CLASS, METRIC, METRIC_CONCURRENCY, METRIC_CPU};
    use crate::config::autoscaler::{HPA_CLASS, KPA_CLASS};
    let _ = old;
    let annotations = &mut pa.metadata.annotations;
    let class = annotations
        .entry(CLASS.to_string())
        .or_insert_with(|| cfg.autoscaler.pod_autoscaler_class.clone())
        .clone();
    let metric = match class.as_str() {
        KPA_CLASS => METRIC_CONCURRENCY,
        HPA_CLASS => METRIC_CPU,
        _ => return,
    };
    annotations
        .entry(METRIC.to_string())
        .or_insert_with(|| metric.to_string());
}

/// Defaults an Ingress as Knative's networking webhook does: `httpOption` `Enabled`, each
/// rule's visibility `ExternalIP`, and a path's only split takes 100 percent when it names
/// none.
pub fn default_ingress(ing: &mut crate::ingress::Ingress) {
    let spec = &mut ing.spec;
    if spec.http_option.is_empty() {
        spec.http_option = "Enabled".into();
    }
    for rule in &mut spec.rules {
        if rule.visibility.is_empty() {
            rule.visibility = "ExternalIP".into();
        }
        for path in rule.http.iter_mut().flat_map(|h| h.paths.iter_mut()) {
            if let [only] = path.splits.as_mut_slice()
                && only.percent == 0
            {
                only.percent = 100;
            }
        }
    }
}

/// Defaults a revision spec as on create, with no parent metadata for name templates.
pub fn default_revision_spec(spec: &mut RevisionSpec, cfg: &Config) {
    default_spec(spec, cfg, &Parent::default(), true);
}

/// The parent metadata the container-name templates see.
#[derive(Default)]
struct Parent {
    name: String,
    namespace: String,
}

impl Parent {
    fn of(meta: &crate::meta::ObjectMeta) -> Self {
        Self {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
        }
    }
}

fn default_template(
    tpl: &mut RevisionTemplateSpec,
    old: Option<&RevisionTemplateSpec>,
    parent: &Parent,
    cfg: &Config,
) {
    let Some(old) = old else {
        default_spec(&mut tpl.spec, cfg, parent, true);
        return;
    };
    if !tpl.metadata.name.is_empty() && tpl.metadata.name == old.metadata.name {
        let mut candidate = tpl.clone();
        default_spec(&mut candidate.spec, cfg, parent, false);
        keep_service_links(&mut candidate.spec, &old.spec);
        if candidate == *old {
            *tpl = candidate;
        }
        return;
    }
    default_spec(&mut tpl.spec, cfg, parent, false);
    keep_service_links(&mut tpl.spec, &old.spec);
}

/// On update an unset `enableServiceLinks` keeps the stored value (Knative defaults it only on
/// create, where `kubectl apply` would have kept the live value).
fn keep_service_links(spec: &mut RevisionSpec, old: &RevisionSpec) {
    if spec.enable_service_links.is_none() {
        spec.enable_service_links = old.enable_service_links;
    }
}

/// Every target gets `latestRevision = (revisionName == "")` and `percent = 0` when unset; a
/// Service with no traffic sends all of it to its latest revision.
fn default_traffic(traffic: &mut Vec<TrafficTarget>, in_service: bool) {
    if traffic.is_empty() && in_service {
        traffic.push(TrafficTarget {
            percent: Some(100),
            latest_revision: Some(true),
            ..Default::default()
        });
    }
    for t in traffic {
        if t.latest_revision.is_none() {
            t.latest_revision = Some(t.revision_name.is_empty());
        }
        if t.percent.is_none() {
            t.percent = Some(0);
        }
    }
}

fn default_spec(spec: &mut RevisionSpec, cfg: &Config, parent: &Parent, in_create: bool) {
    let d = &cfg.defaults;
    let timeout = match spec.timeout_seconds {
        Some(t) if t != 0 => t,
        _ => d.revision_timeout_seconds,
    };
    spec.timeout_seconds = Some(timeout);
    // Response-start and idle defaults apply only when non-zero and below the request timeout.
    if spec.idle_timeout_seconds.is_none()
        && d.revision_idle_timeout_seconds != 0
        && d.revision_idle_timeout_seconds < timeout
    {
        spec.idle_timeout_seconds = Some(d.revision_idle_timeout_seconds);
    }
    if spec.response_start_timeout_seconds.is_none()
        && d.revision_response_start_timeout_seconds != 0
        && d.revision_response_start_timeout_seconds < timeout
    {
        spec.response_start_timeout_seconds = Some(d.revision_response_start_timeout_seconds);
    }
    if spec.container_concurrency.is_none() {
        spec.container_concurrency = Some(d.container_concurrency);
    }

    let taken: BTreeSet<String> = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .map(|c| c.name.clone())
        .collect();
    let user = d.user_container_name(&parent.name, &parent.namespace);
    apply_default_container_names(&mut spec.containers, &taken, &user);
    let init = d.init_container_name(&parent.name, &parent.namespace);
    apply_default_container_names(&mut spec.init_containers, &taken, &init);

    let writable = writable_volumes(&spec.volumes);
    let single = spec.containers.len() == 1;
    for c in &mut spec.containers {
        default_resources(c, cfg);
        // Only the serving container (the single one, or the one with a port) gets a probe.
        if single || !c.ports.is_empty() {
            let probe = c.readiness_probe.get_or_insert_with(Probe::default);
            if probe.handler_count() == 0 {
                probe.tcp_socket = Some(TcpSocketAction::default());
            }
        }
        default_readiness_probe(c);
        for p in [
            &mut c.readiness_probe,
            &mut c.liveness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(GrpcAction { service, .. }) = &mut p.grpc
                && service.is_none()
            {
                *service = Some(String::new());
            }
        }
        for m in &mut c.volume_mounts {
            if !writable.contains(&m.name) {
                m.read_only = Some(true);
            }
        }
    }
    if spec.enable_service_links.is_none() && in_create {
        spec.enable_service_links = d.enable_service_links;
    }

    let secure = cfg.features.get(SECURE_POD_DEFAULTS);
    if matches!(secure, Flag::Enabled | Flag::AllowRootBounded) {
        let pod_sc = spec.security_context.clone().unwrap_or(Value::Null);
        for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
            default_security_context(&pod_sc, c, secure == Flag::Enabled);
        }
    }
}

/// Unnamed containers get the template name; with several containers, or when that name is
/// taken, `<name>-<n>` with `n` counting from 0 and skipping user-given names.
fn apply_default_container_names(
    containers: &mut [Container],
    taken: &BTreeSet<String>,
    default: &str,
) {
    let multi = containers.len() > 1;
    let mut next = 0;
    for c in containers.iter_mut().filter(|c| c.name.is_empty()) {
        let mut name = default.to_string();
        if multi || taken.contains(&name) {
            loop {
                name = child_name(default, &format!("-{next}"));
                next += 1;
                if !taken.contains(&name) {
                    break;
                }
            }
        }
        c.name = name;
    }
}

/// `parent + suffix`, with `parent` shortened so the result fits a Kubernetes name.
fn child_name(parent: &str, suffix: &str) -> String {
    let room = MAX_NAME_LEN.saturating_sub(suffix.len());
    let mut cut = parent.len().min(room);
    while !parent.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &parent[..cut])
}

/// CPU, memory and ephemeral-storage requests/limits from config-defaults, where unset.
fn default_resources(c: &mut Container, cfg: &Config) {
    let d = &cfg.defaults;
    let wanted = [
        ("cpu", &d.revision_cpu_request, &d.revision_cpu_limit),
        (
            "memory",
            &d.revision_memory_request,
            &d.revision_memory_limit,
        ),
        (
            "ephemeral-storage",
            &d.revision_ephemeral_storage_request,
            &d.revision_ephemeral_storage_limit,
        ),
    ];
    if wanted.iter().all(|(_, r, l)| r.is_none() && l.is_none()) {
        return;
    }
    let res = c
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    for (name, request, limit) in wanted {
        if let Some(q) = request {
            res.requests
                .entry(name.to_string())
                .or_insert_with(|| Value::String(q.clone()));
        }
        if let Some(q) = limit {
            res.limits
                .entry(name.to_string())
                .or_insert_with(|| Value::String(q.clone()));
        }
    }
}

/// `successThreshold` 1; with an explicit period, Kubernetes' `failureThreshold` 3 and
/// `timeoutSeconds` 1 (a zero period is Knative's aggressive probing, which takes neither).
fn default_readiness_probe(c: &mut Container) {
    let Some(p) = &mut c.readiness_probe else {
        return;
    };
    if p.success_threshold.unwrap_or(0) == 0 {
        p.success_threshold = Some(1);
    }
    if p.period_seconds.unwrap_or(0) != 0 {
        if p.failure_threshold.unwrap_or(0) == 0 {
            p.failure_threshold = Some(3);
        }
        if p.timeout_seconds.unwrap_or(0) == 0 {
            p.timeout_seconds = Some(1);
        }
    }
}

/// Names of volumes a container may write to (emptyDir, PVC, ephemeral); mounts of any other
/// volume are forced read-only.
fn writable_volumes(volumes: &[Value]) -> BTreeSet<String> {
    volumes
        .iter()
        .filter(|v| {
            ["emptyDir", "persistentVolumeClaim", "ephemeral"]
                .iter()
                .any(|k| v.get(k).is_some_and(|s| !s.is_null()))
        })
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Feature `secure-pod-defaults`: the "restricted" profile's settings where the user left
/// them unset (no privilege escalation, RuntimeDefault seccomp, drop ALL capabilities, and
/// with `Enabled`, runAsNonRoot).
fn default_security_context(pod_sc: &Value, c: &mut Container, run_as_non_root: bool) {
    let mut sc: Map<String, Value> = match &c.security_context {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return,
        None => Map::new(),
    };
    let unset = |m: &Map<String, Value>, k: &str| m.get(k).is_none_or(Value::is_null);
    if unset(&sc, "allowPrivilegeEscalation") {
        sc.insert("allowPrivilegeEscalation".into(), Value::Bool(false));
    }
    let pod_seccomp_type = pod_sc
        .pointer("/seccompProfile/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if pod_seccomp_type.is_empty() {
        let profile = sc.entry("seccompProfile").or_insert_with(|| json!({}));
        if !profile.is_object() {
            *profile = json!({});
        }
        let ty = profile.get("type").and_then(Value::as_str).unwrap_or("");
        if ty.is_empty() {
            profile["type"] = Value::String("RuntimeDefault".into());
        }
    }
    if unset(&sc, "capabilities") {
        let mut caps = json!({ "drop": ["ALL"] });
        if c.ports.iter().any(|p| p.container_port < 1024) {
            caps["add"] = json!(["NET_BIND_SERVICE"]);
        }
        sc.insert("capabilities".into(), caps);
    }
    if run_as_non_root
        && pod_sc.get("runAsNonRoot").is_none_or(Value::is_null)
        && unset(&sc, "runAsNonRoot")
    {
        sc.insert("runAsNonRoot".into(), Value::Bool(true));
    }
    if !sc.is_empty() {
        c.security_context = Some(Value::Object(sc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::features::FeaturesConfig;
    use crate::serving::{ContainerPort, HttpGetAction, VolumeMount};

    fn cfg() -> Config {
        Config::default()
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.to_string(),
            command: vec!["app".to_string()],
            ..Default::default()
        }
    }

    fn with_port(mut c: Container, port: i32) -> Container {
        c.ports.push(ContainerPort {
            container_port: port,
            ..Default::default()
        });
        c
    }

    fn spec(containers: Vec<Container>) -> RevisionSpec {
        RevisionSpec {
            containers,
            ..Default::default()
        }
    }

    fn service(name: &str, template_name: &str, containers: Vec<Container>) -> Service {
        let mut s = Service::default();
        s.metadata.name = name.to_string();
        s.metadata.namespace = "default".to_string();
        s.spec.template.metadata.name = template_name.to_string();
        s.spec.template.spec = spec(containers);
        s
    }

    #[test]
    fn timeout_defaults_from_config_when_unset_or_zero() {
        for given in [None, Some(0)] {
            let mut s = spec(vec![container("")]);
            s.timeout_seconds = given;
            default_revision_spec(&mut s, &cfg());
            assert_eq!(s.timeout_seconds, Some(300));
        }
        let mut s = spec(vec![container("")]);
        s.timeout_seconds = Some(42);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(s.timeout_seconds, Some(42));
        let mut c = cfg();
        c.defaults.revision_timeout_seconds = 120;
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.timeout_seconds, Some(120));
    }

    #[test]
    fn response_start_and_idle_only_when_nonzero_and_below_timeout() {
        // Stock config: response-start equals the timeout (300), so it is not set.
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(s.response_start_timeout_seconds, None);
        assert_eq!(s.idle_timeout_seconds, None);

        let mut c = cfg();
        c.defaults.revision_response_start_timeout_seconds = 100;
        c.defaults.revision_idle_timeout_seconds = 60;
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.response_start_timeout_seconds, Some(100));
        assert_eq!(s.idle_timeout_seconds, Some(60));

        // Not below the revision's own timeout: left unset.
        let mut s = spec(vec![container("")]);
        s.timeout_seconds = Some(60);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.response_start_timeout_seconds, None);
        assert_eq!(s.idle_timeout_seconds, None);

        // A user value is kept.
        let mut s = spec(vec![container("")]);
        s.idle_timeout_seconds = Some(5);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.idle_timeout_seconds, Some(5));
    }

    #[test]
    fn container_concurrency_from_config_when_unset() {
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(s.container_concurrency, Some(0));
        let mut c = cfg();
        c.defaults.container_concurrency = 10;
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.container_concurrency, Some(10));
        let mut s = spec(vec![container("")]);
        s.container_concurrency = Some(3);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.container_concurrency, Some(3));
    }

    #[test]
    fn container_names() {
        let names = |s: &RevisionSpec| -> Vec<String> {
            s.containers.iter().map(|c| c.name.clone()).collect()
        };
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(names(&s), ["user-container"]);

        let mut s = spec(vec![with_port(container(""), 8080), container("")]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(names(&s), ["user-container-0", "user-container-1"]);

        // Generated names skip user-given ones.
        let mut s = spec(vec![
            container(""),
            container("user-container-0"),
            container(""),
        ]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(
            names(&s),
            ["user-container-1", "user-container-0", "user-container-2"]
        );

        // A single container whose default name an init container already took.
        let mut s = spec(vec![container("")]);
        s.init_containers = vec![container("user-container"), container("")];
        default_revision_spec(&mut s, &cfg());
        assert_eq!(names(&s), ["user-container-0"]);
        // Two init containers: numbered.
        assert_eq!(s.init_containers[1].name, "init-container-0");

        // A user name is kept.
        let mut s = spec(vec![container("app")]);
        default_revision_spec(&mut s, &cfg());
        assert_eq!(names(&s), ["app"]);
    }

    #[test]
    fn container_name_template_sees_the_parent() {
        let mut c = cfg();
        c.defaults.user_container_name_template = "{{.Name}}-main".to_string();
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, None, &c);
        assert_eq!(svc.spec.template.spec.containers[0].name, "hello-main");
    }

    #[test]
    fn long_generated_names_fit_63_characters() {
        let base = "x".repeat(70);
        assert_eq!(child_name(&base, "-1").len(), 63);
        assert!(child_name(&base, "-1").ends_with("x-1"));
        assert_eq!(child_name("user-container", "-0"), "user-container-0");
    }

    #[test]
    fn serving_container_gets_a_tcp_readiness_probe() {
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        let p = s.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(p.tcp_socket, Some(TcpSocketAction::default()));
        assert_eq!(p.success_threshold, Some(1));
        assert_eq!(p.failure_threshold, None);
        assert_eq!(p.timeout_seconds, None);

        // An existing handler is kept, and an empty probe gets the TCP handler.
        let mut c = container("");
        c.readiness_probe = Some(Probe {
            http_get: Some(HttpGetAction {
                path: "/healthz".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut s = spec(vec![c]);
        default_revision_spec(&mut s, &cfg());
        let p = s.containers[0].readiness_probe.as_ref().unwrap();
        assert!(p.tcp_socket.is_none());
        assert_eq!(p.http_get.as_ref().unwrap().path, "/healthz");
        assert_eq!(p.success_threshold, Some(1));

        // Multi-container: only the container with the port gets a default probe.
        let mut s = spec(vec![
            container("sidecar"),
            with_port(container("main"), 8080),
        ]);
        default_revision_spec(&mut s, &cfg());
        assert!(s.containers[0].readiness_probe.is_none());
        assert!(
            s.containers[1]
                .readiness_probe
                .as_ref()
                .unwrap()
                .tcp_socket
                .is_some()
        );
    }

    #[test]
    fn period_seconds_brings_kubernetes_probe_defaults() {
        let mut c = container("");
        c.readiness_probe = Some(Probe {
            period_seconds: Some(5),
            ..Default::default()
        });
        let mut s = spec(vec![c]);
        default_revision_spec(&mut s, &cfg());
        let p = s.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(p.failure_threshold, Some(3));
        assert_eq!(p.timeout_seconds, Some(1));
        assert_eq!(p.success_threshold, Some(1));

        let mut c = container("");
        c.readiness_probe = Some(Probe {
            period_seconds: Some(5),
            failure_threshold: Some(7),
            success_threshold: Some(2),
            ..Default::default()
        });
        let mut s = spec(vec![c]);
        default_revision_spec(&mut s, &cfg());
        let p = s.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(p.failure_threshold, Some(7));
        assert_eq!(p.success_threshold, Some(2));
    }

    #[test]
    fn grpc_probe_service_defaults_to_empty() {
        let mut c = container("");
        c.liveness_probe = Some(Probe {
            grpc: Some(GrpcAction {
                port: 9000,
                service: None,
            }),
            ..Default::default()
        });
        let mut s = spec(vec![c]);
        default_revision_spec(&mut s, &cfg());
        let g = s.containers[0]
            .liveness_probe
            .as_ref()
            .unwrap()
            .grpc
            .as_ref();
        assert_eq!(g.unwrap().service.as_deref(), Some(""));
    }

    #[test]
    fn enable_service_links_false_on_create_only() {
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, None, &cfg());
        assert_eq!(svc.spec.template.spec.enable_service_links, Some(false));

        // On update it is not defaulted, but an unset value keeps the stored one.
        let old = service("hello", "", vec![container("")]);
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, Some(&old), &cfg());
        assert_eq!(svc.spec.template.spec.enable_service_links, None);
        let mut stored = service("hello", "", vec![container("")]);
        default_service(&mut stored, None, &cfg());
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, Some(&stored), &cfg());
        assert_eq!(svc, stored);

        let mut c = cfg();
        c.defaults.enable_service_links = None;
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &c);
        assert_eq!(s.enable_service_links, None);
    }

    #[test]
    fn mounts_of_read_only_volume_types_are_forced_read_only() {
        let mut c = container("");
        for name in ["scratch", "secret"] {
            c.volume_mounts.push(VolumeMount {
                name: name.to_string(),
                mount_path: format!("/{name}"),
                ..Default::default()
            });
        }
        let mut s = spec(vec![c]);
        s.volumes = vec![
            json!({"name": "scratch", "emptyDir": {}}),
            json!({"name": "secret", "secret": {"secretName": "s"}}),
        ];
        default_revision_spec(&mut s, &cfg());
        assert_eq!(s.containers[0].volume_mounts[0].read_only, None);
        assert_eq!(s.containers[0].volume_mounts[1].read_only, Some(true));
    }

    #[test]
    fn resources_from_config_where_unset() {
        let mut c = cfg();
        c.defaults.revision_cpu_request = Some("400m".into());
        c.defaults.revision_memory_limit = Some("200M".into());
        let mut user = container("");
        user.resources = Some(ResourceRequirements {
            requests: [("cpu".to_string(), json!("1"))].into(),
            ..Default::default()
        });
        let mut s = spec(vec![user]);
        default_revision_spec(&mut s, &c);
        let r = s.containers[0].resources.as_ref().unwrap();
        assert_eq!(r.requests["cpu"], json!("1"));
        assert_eq!(r.limits["memory"], json!("200M"));

        // Stock config injects nothing.
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        assert!(s.containers[0].resources.is_none());
    }

    #[test]
    fn secure_pod_defaults_when_enabled() {
        let mut c = cfg();
        c.features = FeaturesConfig::default().with(SECURE_POD_DEFAULTS, Flag::Enabled);
        let mut s = spec(vec![with_port(container(""), 80)]);
        default_revision_spec(&mut s, &c);
        assert_eq!(
            s.containers[0].security_context,
            Some(json!({
                "allowPrivilegeEscalation": false,
                "seccompProfile": {"type": "RuntimeDefault"},
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                "runAsNonRoot": true,
            }))
        );
        // Off by default.
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &cfg());
        assert!(s.containers[0].security_context.is_none());
        // AllowRootBounded leaves runAsNonRoot alone.
        c.features = FeaturesConfig::default().with(SECURE_POD_DEFAULTS, Flag::AllowRootBounded);
        let mut s = spec(vec![container("")]);
        default_revision_spec(&mut s, &c);
        let sc = s.containers[0].security_context.as_ref().unwrap();
        assert!(sc.get("runAsNonRoot").is_none());
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    }

    #[test]
    fn service_traffic_defaults_to_latest() {
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, None, &cfg());
        assert_eq!(
            svc.spec.traffic,
            vec![TrafficTarget {
                percent: Some(100),
                latest_revision: Some(true),
                ..Default::default()
            }]
        );
    }

    #[test]
    fn traffic_targets_get_latest_revision_and_percent() {
        let mut r = Route::default();
        r.spec.traffic = vec![
            TrafficTarget {
                revision_name: "hello-00001".into(),
                percent: Some(50),
                ..Default::default()
            },
            TrafficTarget {
                configuration_name: "hello".into(),
                ..Default::default()
            },
        ];
        default_route(&mut r, None, &cfg());
        assert_eq!(r.spec.traffic[0].latest_revision, Some(false));
        assert_eq!(r.spec.traffic[0].percent, Some(50));
        assert_eq!(r.spec.traffic[1].latest_revision, Some(true));
        assert_eq!(r.spec.traffic[1].percent, Some(0));

        // A standalone Route gets no default target.
        let mut r = Route::default();
        default_route(&mut r, None, &cfg());
        assert!(r.spec.traffic.is_empty());
    }

    #[test]
    fn update_with_unchanged_byo_name_skips_template_defaults() {
        let old = service("hello", "hello-v1", vec![container("")]);
        let mut svc = service("hello", "hello-v1", vec![container("")]);
        default_service(&mut svc, Some(&old), &cfg());
        assert_eq!(svc.spec.template.spec.timeout_seconds, None);
        assert_eq!(svc.spec.template.spec.containers[0].name, "");
        // Traffic is still defaulted.
        assert_eq!(svc.spec.traffic.len(), 1);

        // Re-applying the manifest a BYO-named service was created from is a no-op.
        let mut stored = service("hello", "hello-v1", vec![container("")]);
        default_service(&mut stored, None, &cfg());
        let mut again = service("hello", "hello-v1", vec![container("")]);
        default_service(&mut again, Some(&stored), &cfg());
        assert_eq!(again, stored);
        // With a real change, defaulting stays skipped (validation then asks for a new name).
        let mut changed = service("hello", "hello-v1", vec![container("other")]);
        default_service(&mut changed, Some(&stored), &cfg());
        assert_eq!(changed.spec.template.spec.timeout_seconds, None);

        // A new name, or no name, is defaulted.
        let mut svc = service("hello", "hello-v2", vec![container("")]);
        default_service(&mut svc, Some(&old), &cfg());
        assert_eq!(svc.spec.template.spec.timeout_seconds, Some(300));
        let old = service("hello", "", vec![container("")]);
        let mut svc = service("hello", "", vec![container("")]);
        default_service(&mut svc, Some(&old), &cfg());
        assert_eq!(svc.spec.template.spec.timeout_seconds, Some(300));

        let mut old = Configuration::default();
        old.spec.template.metadata.name = "c-v1".into();
        let mut c = old.clone();
        default_configuration(&mut c, Some(&old), &cfg());
        assert_eq!(c, old);
        default_configuration(&mut c, None, &cfg());
        assert_eq!(c.spec.template.spec.timeout_seconds, Some(300));
    }

    #[test]
    fn revisions_are_defaulted_on_create_only() {
        let manifest = Revision {
            spec: spec(vec![container("")]),
            ..Default::default()
        };
        let mut r = manifest.clone();
        default_revision(&mut r, Some(&manifest), &cfg());
        assert_eq!(r, manifest);
        default_revision(&mut r, None, &cfg());
        assert_eq!(r.spec.timeout_seconds, Some(300));
        assert_eq!(r.spec.containers[0].name, "user-container");

        // On update the spec is left alone, unless defaulting makes it the stored spec
        // (re-applying the creating manifest).
        let stored = r;
        let mut again = manifest.clone();
        default_revision(&mut again, Some(&stored), &cfg());
        assert_eq!(again, stored);
        let mut changed = manifest;
        changed.spec.containers[0].command = vec!["other".into()];
        let before = changed.clone();
        default_revision(&mut changed, Some(&stored), &cfg());
        assert_eq!(changed, before);
    }

    #[test]
    fn pod_autoscalers_get_the_configured_class_and_its_metric() {
        use crate::autoscaling::PodAutoscaler;
        use crate::autoscaling::annotations::{CLASS, METRIC};
        let mut pa = PodAutoscaler::default();
        default_pod_autoscaler(&mut pa, None, &cfg());
        let got = |pa: &PodAutoscaler, key: &str| pa.metadata.annotations.get(key).cloned();
        assert_eq!(
            got(&pa, CLASS).as_deref(),
            Some("kpa.autoscaling.knative.dev")
        );
        assert_eq!(got(&pa, METRIC).as_deref(), Some("concurrency"));
        // What is set stays; an HPA's metric is cpu.
        let mut hpa = PodAutoscaler::default();
        hpa.metadata
            .annotations
            .insert(CLASS.into(), "hpa.autoscaling.knative.dev".into());
        default_pod_autoscaler(&mut hpa, None, &cfg());
        assert_eq!(got(&hpa, METRIC).as_deref(), Some("cpu"));
        let mut rps = PodAutoscaler::default();
        rps.metadata.annotations.insert(METRIC.into(), "rps".into());
        default_pod_autoscaler(&mut rps, None, &cfg());
        assert_eq!(got(&rps, METRIC).as_deref(), Some("rps"));
        // The class config-autoscaler names; another class gets no metric.
        let mut other_cfg = cfg();
        other_cfg.autoscaler.pod_autoscaler_class = "custom.example.com".into();
        let mut custom = PodAutoscaler::default();
        default_pod_autoscaler(&mut custom, None, &other_cfg);
        assert_eq!(got(&custom, CLASS).as_deref(), Some("custom.example.com"));
        assert_eq!(got(&custom, METRIC), None);
    }

    #[test]
    fn ingresses_get_http_option_visibility_and_a_lone_splits_percent() {
        let mut ing: crate::ingress::Ingress = serde_json::from_value(json!({
            "apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "b"},
            "spec": {"rules": [
                {"hosts": ["a.b"], "http": {"paths": [
                    {"splits": [{"serviceNamespace": "b", "serviceName": "r1", "servicePort": 80}]},
                    {"splits": [
                        {"serviceNamespace": "b", "serviceName": "r1", "servicePort": 80, "percent": 30},
                        {"serviceNamespace": "b", "serviceName": "r2", "servicePort": 80, "percent": 70}]}]}},
                {"hosts": ["a.b.svc"], "visibility": "ClusterLocal", "http": {"paths": [
                    {"splits": [{"serviceNamespace": "b", "serviceName": "r1", "servicePort": 80, "percent": 40}]}]}}]},
        }))
        .unwrap();
        default_ingress(&mut ing);
        let spec = &ing.spec;
        assert_eq!(spec.http_option, "Enabled");
        let visibility: Vec<&str> = spec.rules.iter().map(|r| r.visibility.as_str()).collect();
        assert_eq!(visibility, ["ExternalIP", "ClusterLocal"]);
        let percents = |rule: usize| -> Vec<Vec<i64>> {
            spec.rules[rule]
                .http
                .as_ref()
                .unwrap()
                .paths
                .iter()
                .map(|p| p.splits.iter().map(|s| s.percent).collect())
                .collect()
        };
        assert_eq!(percents(0), [vec![100], vec![30, 70]]);
        // A lone split that names its percent keeps it (validation refuses it).
        assert_eq!(percents(1), [vec![40]]);
        let mut redirected = ing.clone();
        redirected.spec.http_option = "Redirected".into();
        default_ingress(&mut redirected);
        assert_eq!(redirected.spec.http_option, "Redirected");
    }
}
