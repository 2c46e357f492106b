//! rouse-autoscaler
