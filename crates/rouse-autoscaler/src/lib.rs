//! Rouse's KPA autoscaler core: the Knative Pod Autoscaler's decisions, made exactly as
//! Knative makes them, as pure clock-injected code (no I/O).
//!
//! In the platform picture: queue-proxies and activators report per-second [`collector::Stat`]s;
//! the [`collector::Collection`] sums them into bucketed [`window`]s; every 2 s the
//! [`decider::Decider`] turns the window averages into a desired scale and an excess burst
//! capacity ([`revision::RevisionAutoscaler`] holds both for one revision); the [`apply`] state machine bounds that, gates scale-to-zero, and picks the SKS
//! mode (Serve or Proxy). The [`simulator`] runs the same code over a load trace and prints
//! or plots every decision.

pub mod apply;
pub mod collector;
pub mod decider;
pub mod push;
pub mod revision;
pub mod simulator;
pub mod window;

pub use apply::{Activity, Observed, Outcome, PaState, ScalingParams, SksMode, reconcile};
pub use collector::{Collection, NoData, Stat};
pub use decider::{Decider, DeciderSpec, DeciderStatus, Metric, ScaleResult, TICK_INTERVAL};
pub use revision::RevisionAutoscaler;
pub use window::BucketWindow;
