//! The store's error type, with Kubernetes-like messages the API server can pass through.

use rouse_api::Kind;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No object with that kind, namespace and name.
    #[error("{} \"{name}\" not found", resource(*.kind))]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// `create` found the name taken.
    #[error("{} \"{name}\" already exists", resource(*.kind))]
    AlreadyExists {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// The resourceVersion precondition failed (compare-and-swap lost), or the uid given does
    /// not match the stored object's.
    #[error("Operation cannot be fulfilled on {} \"{name}\": {message}", resource(*.kind))]
    Conflict {
        kind: Kind,
        namespace: String,
        name: String,
        message: String,
    },
    /// The object itself is unusable (no name, wrong kind, not a JSON object ...).
    #[error("{0}")]
    Invalid(String),
    /// `watch` asked for a resourceVersion older than what is retained; `oldest` is the
    /// smallest resourceVersion a watch can start from now. List again and watch from there.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// The database failed (I/O, corruption, data dir in use).
    #[error("{0}")]
    Backend(String),
}

/// The message a lost compare-and-swap carries.
pub(crate) const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// `services.serving.knative.dev`: how Kubernetes names a resource in messages.
fn resource(kind: Kind) -> String {
    format!("{}.{}", kind.plural(), kind.group())
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_kubernetes() {
        let nf = StoreError::NotFound {
            kind: Kind::Service,
            namespace: "default".into(),
            name: "hello".into(),
        };
        assert_eq!(
            nf.to_string(),
            "services.serving.knative.dev \"hello\" not found"
        );
        let ae = StoreError::AlreadyExists {
            kind: Kind::PodAutoscaler,
            namespace: "default".into(),
            name: "hello-00001".into(),
        };
        assert_eq!(
            ae.to_string(),
            "podautoscalers.autoscaling.internal.knative.dev \"hello-00001\" already exists"
        );
        let c = StoreError::Conflict {
            kind: Kind::Service,
            namespace: "default".into(),
            name: "hello".into(),
            message: MODIFIED.into(),
        };
        assert_eq!(
            c.to_string(),
            "Operation cannot be fulfilled on services.serving.knative.dev \"hello\": the object \
             has been modified; please apply your changes to the latest version and try again"
        );
    }
}
