//! Volumes and volume mounts of a revision: Knative's allowed sources (some behind
//! config-features), names, reserved mount paths and read-only rules.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::names::{dns1123_label_errors, quote};
use super::podspec::feature_disabled;
use crate::config::features::{self as feat, FeaturesConfig, Flag};
use crate::error::{FieldError, FieldErrors};
use crate::serving::VolumeMount;

/// Mount paths a container may not cover.
const RESERVED_PATHS: [&str; 3] = ["/", "/dev", "/dev/log"];

/// What validation needs to know of each declared volume.
#[derive(Default, Clone)]
pub(super) struct VolumeInfo {
    /// emptyDir, PVC or ephemeral: mounts may write.
    writable: bool,
    /// A PVC declared read-only.
    pvc_read_only: bool,
}

/// Declared volumes by name.
pub(super) type Volumes = BTreeMap<String, VolumeInfo>;

/// Volume sources Knative knows, with the flag gating each (None: always allowed).
const VOLUME_SOURCES: [(&str, Option<&str>); 9] = [
    ("secret", None),
    ("configMap", None),
    ("projected", None),
    ("emptyDir", Some(feat::PODSPEC_EMPTYDIR)),
    ("persistentVolumeClaim", Some(feat::PODSPEC_PVC)),
    ("hostPath", Some(feat::PODSPEC_HOSTPATH)),
    ("csi", Some(feat::PODSPEC_VOLUMES_CSI)),
    ("ephemeral", Some(feat::PODSPEC_VOLUMES_EPHEMERAL)),
    ("image", Some(feat::PODSPEC_VOLUMES_IMAGE)),
];

pub(super) fn volumes(
    list: &[Value],
    mounted: &BTreeSet<&str>,
    f: &FeaturesConfig,
) -> (Volumes, FieldErrors) {
    let mut out = BTreeMap::new();
    let mut errs = FieldErrors::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("[{i}]");
        let Some(obj) = v.as_object() else {
            errs.push(FieldError::invalid_value(v, &at));
            continue;
        };
        let name = obj.get("name").and_then(Value::as_str).unwrap_or("");
        if out.contains_key(name) {
            errs.push(
                FieldError::new(format!("duplicate volume name {}", quote(name)), &["name"])
                    .via_field(&at),
            );
        }
        if !mounted.contains(name) {
            errs.push(
                FieldError::new(
                    format!("volume with name {} not mounted", quote(name)),
                    &["name"],
                )
                .via_field(&at),
            );
        }
        if name.is_empty() {
            errs.push(FieldError::missing_field(&["name"]).via_field(&at));
        } else if !dns1123_label_errors(name).is_empty() {
            errs.push(FieldError::invalid_value(name, "name").via_field(&at));
        }
        let set = |k: &str| obj.get(k).is_some_and(|s| !s.is_null());
        let claim = obj
            .get("persistentVolumeClaim")
            .and_then(|p| p.get("claimName"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let pvc_read_only = obj
            .get("persistentVolumeClaim")
            .and_then(|p| p.get("readOnly"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let enabled = |flag: &str| f.get(flag) == Flag::Enabled;
        // Knative's own "support is disabled" messages (they carry no path).
        if set("persistentVolumeClaim") {
            if !enabled(feat::PODSPEC_PVC) {
                errs.push(FieldError::new(
                    format!(
                        "Persistent volume claim support is disabled, but found persistent volume claim {claim}"
                    ),
                    &[],
                ));
            }
            if !pvc_read_only && !enabled(feat::PODSPEC_PV_WRITE) {
                errs.push(FieldError::new(
                    format!(
                        "Persistent volume write support is disabled, but found persistent volume claim {claim} that is not read-only"
                    ),
                    &[],
                ));
            }
        }
        for (key, label, flag) in [
            ("image", "Image", feat::PODSPEC_VOLUMES_IMAGE),
            ("emptyDir", "EmptyDir", feat::PODSPEC_EMPTYDIR),
            ("hostPath", "HostPath", feat::PODSPEC_HOSTPATH),
            ("csi", "CSI", feat::PODSPEC_VOLUMES_CSI),
            ("ephemeral", "Ephemeral", feat::PODSPEC_VOLUMES_EPHEMERAL),
        ] {
            if set(key) && !enabled(flag) {
                errs.push(FieldError::new(
                    format!("{label} volume support is disabled, but found {label} volume {name}"),
                    &[],
                ));
            }
        }
        let mut specified = Vec::new();
        for key in obj.keys().filter(|k| *k != "name") {
            match VOLUME_SOURCES.iter().find(|(s, _)| s == key) {
                Some((s, gate)) => {
                    if !set(s) {
                        continue;
                    }
                    specified.push(*s);
                    if let Some(flag) = gate
                        && f.get(flag) == Flag::Disabled
                    {
                        errs.push(feature_disabled(s, flag).via_field(&at));
                    }
                }
                None => errs.push(FieldError::disallowed(&[key]).via_field(&at)),
            }
        }
        match specified.len() {
            0 => {
                let mut want: Vec<&str> = VOLUME_SOURCES
                    .iter()
                    .filter(|(_, gate)| gate.is_none_or(enabled))
                    .map(|(s, _)| *s)
                    .collect();
                want.sort_unstable();
                errs.push(FieldError::missing_one_of(&want).via_field(&at));
            }
            1 => {}
            _ => {
                specified.sort_unstable();
                errs.push(FieldError::multiple_one_of(&specified).via_field(&at));
            }
        }
        out.insert(
            name.to_string(),
            VolumeInfo {
                writable: set("emptyDir") || set("persistentVolumeClaim") || set("ephemeral"),
                pvc_read_only,
            },
        );
    }
    (out, errs)
}

pub(super) fn volume_mounts(mounts: &[VolumeMount], volumes: &Volumes) -> FieldErrors {
    let mut errs = FieldErrors::new();
    let mut seen_paths = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let at = format!("[{i}]");
        let volume = volumes.get(&m.name);
        if volume.is_none() {
            errs.push(
                FieldError::new("volumeMount has no matching volume", &["name"]).via_field(&at),
            );
        }
        let clean = clean_path(&m.mount_path);
        if m.mount_path.is_empty() {
            errs.push(FieldError::missing_field(&["mountPath"]).via_field(&at));
        } else if RESERVED_PATHS.contains(&clean.as_str()) {
            errs.push(
                FieldError::new(
                    format!("mountPath {} is a reserved path", quote(&clean)),
                    &["mountPath"],
                )
                .via_field(&at),
            );
        } else if !m.mount_path.starts_with('/') {
            errs.push(FieldError::invalid_value(&m.mount_path, "mountPath").via_field(&at));
        } else if seen_paths.contains(&clean) {
            errs.push(
                FieldError::invalid_value(
                    format!("{} must be unique", quote(&m.mount_path)),
                    "mountPath",
                )
                .via_field(&at),
            );
        }
        seen_paths.insert(clean);
        let info = volume.cloned().unwrap_or_default();
        let read_only = m.read_only == Some(true);
        if !info.writable && !read_only {
            errs.push(
                FieldError::new(
                    "volume mount should be readOnly for this type of volume",
                    &["readOnly"],
                )
                .via_field(&at),
            );
        }
        if info.pvc_read_only && !read_only {
            errs.push(
                FieldError::new("volume is readOnly but volume mount is not", &["readOnly"])
                    .via_field(&at),
            );
        }
    }
    errs
}

/// Go's `path.Clean`, so `/dev/` and `/dev/./log` count as the reserved paths they are.
fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_like_go() {
        assert_eq!(clean_path("/dev/"), "/dev");
        assert_eq!(clean_path("/dev/./log"), "/dev/log");
        assert_eq!(clean_path("/a/../"), "/");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("a/../.."), "..");
        assert_eq!(clean_path("rel/x"), "rel/x");
    }
}
