//! The Knative API as Rouse speaks it: resource types for `serving.knative.dev/v1` (Service,
//! Configuration, Revision, Route), `v1beta1` DomainMapping, and the internal PodAutoscaler and
//! ServerlessService, their
//! defaulting and validation (the webhook's rules), conditions, and the ConfigMap-keyed config.
//!
//! Pure data and rules: nothing here does I/O, so every rule is unit-tested in isolation.

pub mod autoscaling;
pub mod clock;
pub mod condition;
pub mod config;
pub mod decode;
pub mod defaults;
pub mod domainmapping;
pub mod duration;
pub mod error;
pub mod ingress;
pub mod kind;
pub mod meta;
pub mod networking;
pub mod request_log;
pub mod serving;
pub mod suggest;
pub mod validation;

pub use error::{FieldError, FieldErrors};
pub use kind::Kind;
pub use meta::{Object, ObjectMeta, OwnerReference};
