//! Validation, as Knative's webhook applies it (reference §1.5, §2.1).
