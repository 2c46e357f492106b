//! Probe rules: exactly one handler, probe ports, and the readiness probe's thresholds
//! (including Knative's aggressive probing with `periodSeconds: 0`).

use crate::error::{FieldError, FieldErrors};
use crate::serving::{IntOrString, Probe};

/// Bound Kubernetes uses for probe fields.
const MAX_I32: i64 = i32::MAX as i64;

/// The port the serving container declares (named `http` when unnamed).
pub(super) struct ServingPort {
    pub(super) name: String,
}

fn port_string(p: &Option<IntOrString>) -> (String, bool) {
    match p {
        Some(IntOrString::String(s)) => (s.clone(), !s.is_empty()),
        Some(IntOrString::Int(n)) => (n.to_string(), false),
        None => ("0".to_string(), false),
    }
}

fn port_unset(p: &Option<IntOrString>) -> bool {
    match p {
        None | Some(IntOrString::Int(0)) => true,
        Some(IntOrString::String(s)) => s.is_empty(),
        Some(IntOrString::Int(_)) => false,
    }
}

/// Exactly one handler; on the serving container (`port` given) a named probe port must be
/// the container port's name, elsewhere the port must be given.
pub(super) fn probe(p: &Probe, port: Option<&ServingPort>) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let mut handlers = Vec::new();
    for (name, target) in [
        ("httpGet", p.http_get.as_ref().map(|h| &h.port)),
        ("tcpSocket", p.tcp_socket.as_ref().map(|t| &t.port)),
    ] {
        let Some(target) = target else { continue };
        handlers.push(name);
        let path = format!("{name}.port");
        let (shown, named) = port_string(target);
        match port {
            Some(sp) if named && shown != sp.name => errs.push(
                FieldError::invalid_value(&shown, &path)
                    .with_details("Probe port must match container port"),
            ),
            None if port_unset(target) => errs.push(
                FieldError::invalid_value(&shown, &path)
                    .with_details("Probe port must be specified"),
            ),
            _ => {}
        }
    }
    if p.exec.is_some() {
        handlers.push("exec");
    }
    if p.grpc.is_some() {
        handlers.push("gRPC");
    }
    match handlers.len() {
        0 => errs.push(FieldError::missing_one_of(&[
            "exec",
            "grpc",
            "httpGet",
            "tcpSocket",
        ])),
        1 => {}
        _ => {
            handlers.sort_unstable();
            errs.push(FieldError::multiple_one_of(&handlers));
        }
    }
    errs
}

/// A readiness probe's extra rules; `periodSeconds: 0` is Knative's aggressive probing, which
/// takes neither a failure threshold nor a timeout.
pub(super) fn readiness_probe(p: &Probe, port: Option<&ServingPort>) -> FieldErrors {
    let mut errs = probe(p, port);
    let period = i64::from(p.period_seconds.unwrap_or(0));
    let delay = i64::from(p.initial_delay_seconds.unwrap_or(0));
    let success = i64::from(p.success_threshold.unwrap_or(0));
    let failure = i64::from(p.failure_threshold.unwrap_or(0));
    let timeout = i64::from(p.timeout_seconds.unwrap_or(0));
    if period < 0 {
        errs.push(FieldError::out_of_bounds(
            period,
            0,
            MAX_I32,
            "periodSeconds",
        ));
    }
    if delay < 0 {
        errs.push(FieldError::out_of_bounds(
            delay,
            0,
            MAX_I32,
            "initialDelaySeconds",
        ));
    }
    if success < 1 {
        errs.push(FieldError::out_of_bounds(
            success,
            1,
            MAX_I32,
            "successThreshold",
        ));
    }
    if period == 0 {
        if failure != 0 {
            errs.push(FieldError::new(
                "failureThreshold is disallowed when periodSeconds is zero",
                &["failureThreshold"],
            ));
        }
        if timeout != 0 {
            errs.push(FieldError::new(
                "timeoutSeconds is disallowed when periodSeconds is zero",
                &["timeoutSeconds"],
            ));
        }
    } else {
        if timeout < 1 {
            errs.push(FieldError::out_of_bounds(
                timeout,
                1,
                MAX_I32,
                "timeoutSeconds",
            ));
        }
        if failure < 1 {
            errs.push(FieldError::out_of_bounds(
                failure,
                1,
                MAX_I32,
                "failureThreshold",
            ));
        }
    }
    errs
}

/// The fields a probe sets, by JSON name, sorted.
pub(super) fn probe_set_fields(p: &Probe) -> Vec<&'static str> {
    let nz = |v: Option<i32>| v.is_some_and(|n| n != 0);
    let mut set: Vec<&'static str> = [
        ("exec", p.exec.is_some()),
        ("failureThreshold", nz(p.failure_threshold)),
        ("grpc", p.grpc.is_some()),
        ("httpGet", p.http_get.is_some()),
        ("initialDelaySeconds", nz(p.initial_delay_seconds)),
        ("periodSeconds", nz(p.period_seconds)),
        ("successThreshold", nz(p.success_threshold)),
        ("tcpSocket", p.tcp_socket.is_some()),
        (
            "terminationGracePeriodSeconds",
            p.termination_grace_period_seconds.is_some_and(|n| n != 0),
        ),
        ("timeoutSeconds", nz(p.timeout_seconds)),
    ]
    .into_iter()
    .filter(|(_, s)| *s)
    .map(|(n, _)| n)
    .collect();
    set.sort_unstable();
    set
}
