//! Image references, parsed as go-containerregistry's weak validation does (what Knative's
//! webhook uses).

/// go-containerregistry's weak reference parsing: `[registry/]repo[:tag]` or `...@sha256:hex`.
pub(super) fn parse_image_reference(s: &str) -> Result<(), String> {
    if parse_tag(s).is_ok() || parse_digest(s).is_ok() {
        Ok(())
    } else {
        Err(format!("could not parse reference: {s}"))
    }
}

/// Returns the repository part of a tag reference.
fn parse_tag(s: &str) -> Result<&str, ()> {
    let (base, tag) = match s.rsplit_once(':') {
        Some((base, tag)) if !tag.contains('/') => (base, Some(tag)),
        _ => (s, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(());
        }
    }
    parse_repository(base)?;
    Ok(base)
}

fn parse_repository(name: &str) -> Result<(), ()> {
    if name.is_empty() {
        return Err(());
    }
    let (registry, repo) = match name.split_once('/') {
        Some((first, rest)) if first == "localhost" || first.contains(['.', ':']) => (first, rest),
        _ => ("", name),
    };
    let repo_ok = !repo.is_empty()
        && repo.len() <= 255
        && repo.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '/')
        });
    let registry_ok = registry
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if repo_ok && registry_ok {
        Ok(())
    } else {
        Err(())
    }
}

fn parse_digest(s: &str) -> Result<(), ()> {
    let (base, digest) = s.split_once('@').ok_or(())?;
    if digest.contains('@') {
        return Err(());
    }
    let hex = digest.strip_prefix("sha256:").ok_or(())?;
    if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(());
    }
    match parse_tag(base) {
        Ok(_) => Ok(()),
        Err(()) => parse_repository(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "library/nginx:1.25",
            "gcr.io/knative-samples/helloworld-go",
            "localhost:5000/app:v1",
            "ghcr.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "ghcr.io/a/b:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(parse_image_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Nginx", "app:", "a b", "app@sha256:xyz", "app:tag!"] {
            assert_eq!(
                parse_image_reference(bad),
                Err(format!("could not parse reference: {bad}")),
                "{bad}"
            );
        }
    }
}
