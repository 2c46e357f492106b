//! Image tag → digest resolution against container registries, as Knative's controller does
//! before a revision runs: reference parsing ([`reference`]), credentials from image pull
//! Secrets and registries' challenges ([`auth`]) and the registry API call ([`client`]).

pub mod auth;
pub mod client;
pub mod reference;

pub use auth::{AuthError, Challenge, Credential, Keychain, parse_challenge};
pub use client::{RegistryClient, RegistryError};
pub use reference::{ImageRef, ReferenceError};
