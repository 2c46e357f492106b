//! The local runner's own implementations of the controller's seams: what `rouse serve` plugs
//! into the controller so it drives the fused, in-process data path.

pub mod networking;
