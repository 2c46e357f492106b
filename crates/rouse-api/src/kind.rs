//! The kinds of resource Rouse stores, with their API groups, plural names and the names and
//! short names the CLI accepts (Knative's and kubectl's).

use std::fmt;

/// A resource kind Rouse stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `serving.knative.dev/v1` Service.
    Service,
    /// `serving.knative.dev/v1` Configuration.
    Configuration,
    /// `serving.knative.dev/v1` Revision.
    Revision,
    /// `serving.knative.dev/v1` Route.
    Route,
    /// `autoscaling.internal.knative.dev/v1alpha1` PodAutoscaler.
    PodAutoscaler,
    /// `networking.internal.knative.dev/v1alpha1` ServerlessService.
    ServerlessService,
    /// `serving.knative.dev/v1beta1` DomainMapping.
    DomainMapping,
}

impl Kind {
    /// Every kind, in the order a cascade or a listing walks them.
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::Configuration,
        Kind::Revision,
        Kind::Route,
        Kind::PodAutoscaler,
        Kind::ServerlessService,
        Kind::DomainMapping,
    ];

    /// The `kind` field value.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Configuration => "Configuration",
            Kind::Revision => "Revision",
            Kind::Route => "Route",
            Kind::PodAutoscaler => "PodAutoscaler",
            Kind::ServerlessService => "ServerlessService",
            Kind::DomainMapping => "DomainMapping",
        }
    }

    /// The API group.
    pub const fn group(self) -> &'static str {
        match self {
            Kind::PodAutoscaler => "autoscaling.internal.knative.dev",
            Kind::ServerlessService => "networking.internal.knative.dev",
            _ => "serving.knative.dev",
        }
    }

    /// The group's version.
    pub const fn version(self) -> &'static str {
        match self {
            Kind::PodAutoscaler | Kind::ServerlessService => "v1alpha1",
            Kind::DomainMapping => "v1beta1",
            _ => "v1",
        }
    }

    /// The `apiVersion` field value, `group/version`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::PodAutoscaler => "autoscaling.internal.knative.dev/v1alpha1",
            Kind::ServerlessService => "networking.internal.knative.dev/v1alpha1",
            Kind::DomainMapping => "serving.knative.dev/v1beta1",
            _ => "serving.knative.dev/v1",
        }
    }

    /// The plural used in API paths.
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Configuration => "configurations",
            Kind::Revision => "revisions",
            Kind::Route => "routes",
            Kind::PodAutoscaler => "podautoscalers",
            Kind::ServerlessService => "serverlessservices",
            Kind::DomainMapping => "domainmappings",
        }
    }

    /// Looks a kind up by its plural (API paths).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }

    /// Looks a kind up by its `kind` field value.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The singular resource name (`kubectl get service`).
    pub const fn singular(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Configuration => "configuration",
            Kind::Revision => "revision",
            Kind::Route => "route",
            Kind::PodAutoscaler => "podautoscaler",
            Kind::ServerlessService => "serverlessservice",
            Kind::DomainMapping => "domainmapping",
        }
    }

    /// Knative's short names: one table for the CLI, the API's discovery and the CRDs.
    pub const fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["kservice", "ksvc"],
            Kind::Configuration => &["config", "cfg"],
            Kind::Revision => &["rev"],
            Kind::Route => &["rt"],
            Kind::PodAutoscaler => &["kpa", "pa"],
            Kind::ServerlessService => &["sks"],
            Kind::DomainMapping => &["dm"],
        }
    }

    /// Knative's categories (`kubectl get knative`, `kubectl get all`).
    pub const fn categories(self) -> &'static [&'static str] {
        match self {
            Kind::PodAutoscaler => &["all", "knative-internal", "autoscaling"],
            Kind::ServerlessService => &["all", "knative-internal", "networking"],
            _ => &["all", "knative", "serving"],
        }
    }

    /// Looks a kind up the way the CLI does: kind, singular, plural or short name (or a short
    /// name with an `s`), any case, optionally qualified by its group.
    pub fn from_cli(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        let s = s.split('.').next().unwrap_or("");
        Kind::ALL.into_iter().find(|k| {
            s == k.singular()
                || s == k.plural()
                || k.short_names()
                    .iter()
                    .any(|n| s == *n || s.strip_suffix('s') == Some(n))
        })
    }

    /// True for the kinds users write (the `serving.knative.dev` group).
    pub fn is_user_facing(self) -> bool {
        self.group() == "serving.knative.dev"
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names() {
        assert_eq!(Kind::from_cli("ksvc"), Some(Kind::Service));
        assert_eq!(Kind::from_cli("Services"), Some(Kind::Service));
        assert_eq!(Kind::from_cli("kpa"), Some(Kind::PodAutoscaler));
        assert_eq!(Kind::from_cli("sks"), Some(Kind::ServerlessService));
        assert_eq!(Kind::from_cli("rt"), Some(Kind::Route));
        assert_eq!(
            Kind::from_cli("services.serving.knative.dev"),
            Some(Kind::Service)
        );
        assert_eq!(Kind::from_cli("pods"), None);
        assert_eq!(Kind::from_cli("revs"), Some(Kind::Revision));
        assert_eq!(Kind::from_cli("configs"), Some(Kind::Configuration));
        assert_eq!(Kind::from_cli("pa"), Some(Kind::PodAutoscaler));
        assert_eq!(Kind::from_cli("dm"), Some(Kind::DomainMapping));
        assert_eq!(
            Kind::from_cli("domainmappings.serving.knative.dev"),
            Some(Kind::DomainMapping)
        );
        for k in Kind::ALL {
            assert_eq!(Kind::from_plural(k.plural()), Some(k));
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
    }
}
