//! `config-features`: feature flags (Enabled, Disabled, Allowed), with Knative's keys and
//! defaults. Most gate optional PodSpec fields in validation.

use std::collections::BTreeMap;
use std::fmt;

use super::{ConfigData, ConfigError, EXAMPLE_KEY, get};

/// The ConfigMap's name.
pub const NAME: &str = "config-features";

/// A feature flag's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Enabled,
    Disabled,
    Allowed,
    /// Only for `secure-pod-defaults`: secure defaults without forcing `runAsNonRoot`.
    AllowRootBounded,
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flag::Enabled => "Enabled",
            Flag::Disabled => "Disabled",
            Flag::Allowed => "Allowed",
            Flag::AllowRootBounded => "AllowRootBounded",
        })
    }
}

// Keys Rouse's validation and defaulting consult.
pub const MULTI_CONTAINER: &str = "multi-container";
pub const MULTI_CONTAINER_PROBING: &str = "multi-container-probing";
pub const SECURE_POD_DEFAULTS: &str = "secure-pod-defaults";
pub const TAG_HEADER_BASED_ROUTING: &str = "tag-header-based-routing";
pub const CONTAINERSPEC_ADD_CAPABILITIES: &str = "kubernetes.containerspec-addcapabilities";
pub const PODSPEC_AFFINITY: &str = "kubernetes.podspec-affinity";
pub const PODSPEC_DNS_CONFIG: &str = "kubernetes.podspec-dnsconfig";
pub const PODSPEC_DNS_POLICY: &str = "kubernetes.podspec-dnspolicy";
pub const PODSPEC_EMPTYDIR: &str = "kubernetes.podspec-volumes-emptydir";
pub const PODSPEC_FIELDREF: &str = "kubernetes.podspec-fieldref";
pub const PODSPEC_HOSTALIASES: &str = "kubernetes.podspec-hostaliases";
pub const PODSPEC_HOSTPATH: &str = "kubernetes.podspec-volumes-hostpath";
pub const PODSPEC_INIT_CONTAINERS: &str = "kubernetes.podspec-init-containers";
pub const PODSPEC_MOUNT_PROPAGATION: &str = "kubernetes.podspec-volumes-mount-propagation";
pub const PODSPEC_NODESELECTOR: &str = "kubernetes.podspec-nodeselector";
pub const PODSPEC_PVC: &str = "kubernetes.podspec-persistent-volume-claim";
pub const PODSPEC_PV_WRITE: &str = "kubernetes.podspec-persistent-volume-write";
pub const PODSPEC_PRIORITYCLASSNAME: &str = "kubernetes.podspec-priorityclassname";
pub const PODSPEC_RUNTIMECLASSNAME: &str = "kubernetes.podspec-runtimeclassname";
pub const PODSPEC_SCHEDULERNAME: &str = "kubernetes.podspec-schedulername";
pub const PODSPEC_SECURITYCONTEXT: &str = "kubernetes.podspec-securitycontext";
pub const PODSPEC_TOLERATIONS: &str = "kubernetes.podspec-tolerations";
pub const PODSPEC_TOPOLOGYSPREADCONSTRAINTS: &str = "kubernetes.podspec-topologyspreadconstraints";
pub const PODSPEC_VOLUMES_CSI: &str = "kubernetes.podspec-volumes-csi";
pub const PODSPEC_VOLUMES_EPHEMERAL: &str = "kubernetes.podspec-volumes-ephemeral";
pub const PODSPEC_VOLUMES_IMAGE: &str = "kubernetes.podspec-volumes-image";

/// Every flag Knative's `config-features` knows, with its default.
pub const KNOWN_FLAGS: &[(&str, Flag)] = &[
    ("autodetect-http2", Flag::Disabled),
    (CONTAINERSPEC_ADD_CAPABILITIES, Flag::Disabled),
    (PODSPEC_AFFINITY, Flag::Disabled),
    (PODSPEC_DNS_CONFIG, Flag::Disabled),
    (PODSPEC_DNS_POLICY, Flag::Disabled),
    (PODSPEC_FIELDREF, Flag::Disabled),
    (PODSPEC_HOSTALIASES, Flag::Disabled),
    ("kubernetes.podspec-hostipc", Flag::Disabled),
    ("kubernetes.podspec-hostnetwork", Flag::Disabled),
    ("kubernetes.podspec-hostpid", Flag::Disabled),
    (PODSPEC_INIT_CONTAINERS, Flag::Disabled),
    (PODSPEC_NODESELECTOR, Flag::Disabled),
    (PODSPEC_PVC, Flag::Disabled),
    (PODSPEC_PV_WRITE, Flag::Disabled),
    (PODSPEC_PRIORITYCLASSNAME, Flag::Disabled),
    (PODSPEC_RUNTIMECLASSNAME, Flag::Disabled),
    (PODSPEC_SCHEDULERNAME, Flag::Disabled),
    (PODSPEC_SECURITYCONTEXT, Flag::Disabled),
    ("kubernetes.podspec-shareprocessnamespace", Flag::Disabled),
    (PODSPEC_TOLERATIONS, Flag::Disabled),
    (PODSPEC_TOPOLOGYSPREADCONSTRAINTS, Flag::Disabled),
    (PODSPEC_VOLUMES_CSI, Flag::Disabled),
    (PODSPEC_EMPTYDIR, Flag::Enabled),
    (PODSPEC_VOLUMES_EPHEMERAL, Flag::Disabled),
    (PODSPEC_HOSTPATH, Flag::Disabled),
    (PODSPEC_VOLUMES_IMAGE, Flag::Disabled),
    (PODSPEC_MOUNT_PROPAGATION, Flag::Disabled),
    (MULTI_CONTAINER, Flag::Enabled),
    (MULTI_CONTAINER_PROBING, Flag::Disabled),
    ("queueproxy.mount-podinfo", Flag::Disabled),
    ("queueproxy.resource-defaults", Flag::Disabled),
    (SECURE_POD_DEFAULTS, Flag::Disabled),
    (TAG_HEADER_BASED_ROUTING, Flag::Disabled),
];

/// Parsed `config-features`: every known flag with its state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeaturesConfig {
    /// Flags by key (e.g. `kubernetes.podspec-affinity`); missing keys take Knative's default.
    pub flags: BTreeMap<String, Flag>,
}

impl FeaturesConfig {
    /// Parses `config-features`' data. Values are case-insensitive `Enabled`, `Disabled` or
    /// `Allowed` (`secure-pod-defaults` takes `Enabled`, `Disabled` or `AllowRootBounded`).
    pub fn from_data(d: &ConfigData) -> Result<Self, ConfigError> {
        let mut flags: BTreeMap<String, Flag> = KNOWN_FLAGS
            .iter()
            .map(|(k, f)| (k.to_string(), *f))
            .collect();
        let known: Vec<&str> = KNOWN_FLAGS.iter().map(|(k, _)| *k).collect();
        super::check_keys(NAME, d, &known)?;
        for key in d.keys().filter(|k| *k != EXAMPLE_KEY) {
            let raw = get(d, key).unwrap_or_default();
            let choices: &[Flag] = if key == SECURE_POD_DEFAULTS {
                &[Flag::Disabled, Flag::AllowRootBounded, Flag::Enabled]
            } else {
                &[Flag::Enabled, Flag::Allowed, Flag::Disabled]
            };
            let flag = choices
                .iter()
                .find(|f| f.to_string().eq_ignore_ascii_case(raw))
                .ok_or_else(|| {
                    let names: Vec<String> = choices.iter().map(Flag::to_string).collect();
                    ConfigError::new(
                        NAME,
                        key,
                        format!("invalid flag {raw:?} (want one of {})", names.join(", ")),
                    )
                })?;
            flags.insert(key.clone(), *flag);
        }
        Ok(Self { flags })
    }

    /// The state of `key`: as configured, else Knative's default (Disabled for unknown keys).
    pub fn get(&self, key: &str) -> Flag {
        self.flags.get(key).copied().unwrap_or_else(|| {
            KNOWN_FLAGS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, f)| *f)
                .unwrap_or(Flag::Disabled)
        })
    }

    /// Overrides one flag (for tests and embedding).
    pub fn with(mut self, key: &str, flag: Flag) -> Self {
        self.flags.insert(key.to_string(), flag);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::data;

    #[test]
    fn defaults_match_knative() {
        let empty = FeaturesConfig::default();
        let parsed = FeaturesConfig::from_data(&data(&[])).unwrap();
        for f in [&empty, &parsed] {
            assert_eq!(f.get(MULTI_CONTAINER), Flag::Enabled);
            assert_eq!(f.get(PODSPEC_EMPTYDIR), Flag::Enabled);
            assert_eq!(f.get(PODSPEC_AFFINITY), Flag::Disabled);
            assert_eq!(f.get(TAG_HEADER_BASED_ROUTING), Flag::Disabled);
            assert_eq!(f.get(SECURE_POD_DEFAULTS), Flag::Disabled);
        }
    }

    #[test]
    fn values_are_case_insensitive() {
        let f = FeaturesConfig::from_data(&data(&[
            (PODSPEC_AFFINITY, "enabled"),
            (PODSPEC_TOLERATIONS, "ALLOWED"),
            (MULTI_CONTAINER, "Disabled"),
            (SECURE_POD_DEFAULTS, "allowrootbounded"),
            ("_example", "whatever"),
        ]))
        .unwrap();
        assert_eq!(f.get(PODSPEC_AFFINITY), Flag::Enabled);
        assert_eq!(f.get(PODSPEC_TOLERATIONS), Flag::Allowed);
        assert_eq!(f.get(MULTI_CONTAINER), Flag::Disabled);
        assert_eq!(f.get(SECURE_POD_DEFAULTS), Flag::AllowRootBounded);
    }

    #[test]
    fn invalid_values_and_keys() {
        let err = FeaturesConfig::from_data(&data(&[(PODSPEC_AFFINITY, "on")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config-features: kubernetes.podspec-affinity: invalid flag \"on\" (want one of Enabled, Allowed, Disabled)"
        );
        let err =
            FeaturesConfig::from_data(&data(&[(SECURE_POD_DEFAULTS, "Allowed")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config-features: secure-pod-defaults: invalid flag \"Allowed\" (want one of Disabled, AllowRootBounded, Enabled)"
        );
        let err = FeaturesConfig::from_data(&data(&[("kubernetes.podspec-afinity", "Enabled")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config-features: kubernetes.podspec-afinity: unknown key (did you mean \"kubernetes.podspec-affinity\"?)"
        );
    }
}
