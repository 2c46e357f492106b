//! Field errors in the shape of Knative's `apis.FieldError`: a message, the field paths it
//! concerns and optional details. Their text matches what Knative's webhook prints, e.g.
//! `Traffic targets sum to 90, want 100: spec.traffic`.

use std::fmt;

/// One validation failure: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    /// Human-readable reason, e.g. `missing field(s)`.
    pub message: String,
    /// Dotted field paths, e.g. `spec.template.spec.containers[0].image`.
    pub paths: Vec<String>,
    /// Extra explanation printed on the next line.
    pub details: String,
}

impl FieldError {
    /// A free-form error at the given paths.
    pub fn new(message: impl Into<String>, paths: &[&str]) -> Self {
        Self {
            message: message.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            details: String::new(),
        }
    }

    /// Knative's `ErrMissingField`.
    pub fn missing_field(paths: &[&str]) -> Self {
        Self::new("missing field(s)", paths)
    }

    /// Knative's `ErrDisallowedFields`.
    pub fn disallowed(paths: &[&str]) -> Self {
        Self::new("must not set the field(s)", paths)
    }

    /// Knative's `ErrInvalidValue`.
    pub fn invalid_value(value: impl fmt::Display, path: &str) -> Self {
        Self::new(format!("invalid value: {value}"), &[path])
    }

    /// Knative's `ErrOutOfBoundsValue`.
    pub fn out_of_bounds(
        value: impl fmt::Display,
        lower: impl fmt::Display,
        upper: impl fmt::Display,
        path: &str,
    ) -> Self {
        Self::new(format!("expected {lower} <= {value} <= {upper}"), &[path])
    }

    /// Knative's `ErrMultipleOneOf`.
    pub fn multiple_one_of(paths: &[&str]) -> Self {
        Self::new("expected exactly one, got both", paths)
    }

    /// Knative's `ErrMissingOneOf`.
    pub fn missing_one_of(paths: &[&str]) -> Self {
        Self::new("expected exactly one, got neither", paths)
    }

    /// Sets the details line.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefixes every path with `prefix.` (or makes `prefix` the path when a path is empty).
    pub fn via_field(mut self, prefix: &str) -> Self {
        for p in &mut self.paths {
            *p = join_path(prefix, p);
        }
        self
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else if prefix.is_empty() {
        path.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.paths.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.message, self.paths.join(", "))?;
        }
        if !self.details.is_empty() {
            write!(f, "\n{}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// Several field errors, printed one per line in a stable (sorted) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one error.
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    /// Adds all errors of `other`, their paths prefixed with `prefix`.
    pub fn extend_via(&mut self, prefix: &str, other: FieldErrors) {
        self.0
            .extend(other.0.into_iter().map(|e| e.via_field(prefix)));
    }

    /// Adds all errors of `other` unchanged.
    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }

    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when empty, else the errors.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// True when some error has this exact message and path (for tests).
    pub fn has(&self, message: &str, path: &str) -> bool {
        self.0
            .iter()
            .any(|e| e.message == message && e.paths.iter().any(|p| p == path))
    }
}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        lines.sort();
        lines.dedup();
        write!(f, "{}", lines.join("\n"))
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_knative() {
        let e =
            FieldError::new("Traffic targets sum to 90, want 100", &["traffic"]).via_field("spec");
        assert_eq!(
            e.to_string(),
            "Traffic targets sum to 90, want 100: spec.traffic"
        );
        let e = FieldError::missing_field(&["image"]).via_field("containers[0]");
        assert_eq!(e.to_string(), "missing field(s): containers[0].image");
        let e = FieldError::missing_field(&[""]).via_field("spec");
        assert_eq!(e.paths, vec!["spec"]);
    }
}
