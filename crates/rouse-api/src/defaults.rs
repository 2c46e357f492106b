//! Defaulting, as Knative's webhook applies it on create and update (reference §1.4).
