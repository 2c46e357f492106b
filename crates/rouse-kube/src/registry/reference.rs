//! Image references as Docker reads them: `[registry[:port]/]repository[:tag][@digest]`, with
//! Docker Hub (`index.docker.io`) for a name without a registry, `library/` in front of a
//! one-part Docker Hub name, and `latest` when neither tag nor digest is given.

use std::fmt;

/// Docker Hub's name in references (`docker.io` is an alias).
pub const DOCKER_HUB: &str = "index.docker.io";
/// Where Docker Hub's registry API is served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag of a reference that names none.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `index.docker.io`, `gcr.io`, `localhost:5000`, ...
    pub registry: String,
    /// `library/nginx`, `knative/helloworld-go`, ...
    pub repository: String,
    /// The tag (`latest` when the reference names neither tag nor digest).
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pins one (then it is used as is).
    pub digest: Option<String>,
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not parse reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl ImageRef {
    /// Parses `reference` the way Docker does.
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.is_empty() || reference.len() > 4096 {
            return Err(fail("empty or too long"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, d)) => {
                if !valid_digest(d) {
                    return Err(fail(
                        "a digest must be sha256: and 64 lower-case hex digits",
                    ));
                }
                (rest, Some(d.to_string()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(fail(
                "a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            return Err(fail(
                "the registry is not a host name with an optional port",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(fail(
                "a repository is lower-case letters, digits and single separators (. _ __ -) \
                 between '/'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`: what a resolved digest is appended to (`name@sha256:…`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host (and port) the registry API is asked at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What `/v2/<repository>/manifests/<reference>` names: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if r.starts_with('[') {
        match r.split_once(']') {
            Some((v6, rest)) => (
                &r[..v6.len() + 1],
                rest.strip_prefix(':').or((!rest.is_empty()).then_some("")),
            ),
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
    };
    port_ok && host_ok
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__`, or `-`+; letters or digits on both sides.
        let sep_len = match ch {
            b'.' => 1,
            b'_' if b.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => b[i..].iter().take_while(|c| **c == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        if !b
            .get(i)
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(r: &str) -> (String, String, Option<String>, Option<String>) {
        let i = ImageRef::parse(r).unwrap();
        (i.registry, i.repository, i.tag, i.digest)
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_get_the_default_registry_library_and_latest() {
        assert_eq!(
            parsed("nginx"),
            (
                "index.docker.io".into(),
                "library/nginx".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parsed("docker.io/nginx:1.27"),
            (
                "index.docker.io".into(),
                "library/nginx".into(),
                Some("1.27".into()),
                None
            )
        );
        assert_eq!(
            parsed("knative/helloworld-go"),
            (
                "index.docker.io".into(),
                "knative/helloworld-go".into(),
                Some("latest".into()),
                None
            )
        );
        let i = ImageRef::parse("nginx").unwrap();
        assert_eq!(i.name(), "index.docker.io/library/nginx");
        assert_eq!(i.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn a_first_part_with_a_dot_a_port_or_localhost_is_the_registry() {
        assert_eq!(
            parsed("ghcr.io/knative/helloworld-go:v1"),
            (
                "ghcr.io".into(),
                "knative/helloworld-go".into(),
                Some("v1".into()),
                None
            )
        );
        assert_eq!(
            parsed("localhost:5000/app"),
            (
                "localhost:5000".into(),
                "app".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parsed("127.0.0.1:5000/team/app:dev"),
            (
                "127.0.0.1:5000".into(),
                "team/app".into(),
                Some("dev".into()),
                None
            )
        );
        assert_eq!(parsed("localhost/app").0, "localhost");
        assert_eq!(parsed("[::1]:5000/app").0, "[::1]:5000");
        assert_eq!(parsed("kind.local/app").0, "kind.local");
        // No dot, port or localhost: a Docker Hub namespace.
        assert_eq!(parsed("team/app").0, "index.docker.io");
        assert_eq!(
            ImageRef::parse("localhost:5000/app").unwrap().api_host(),
            "localhost:5000"
        );
    }

    #[test]
    fn a_digest_is_kept_and_replaces_the_default_tag() {
        let (reg, repo, tag, digest) = parsed(&format!("gcr.io/p/app@{D}"));
        assert_eq!(
            (reg.as_str(), repo.as_str(), tag, digest.as_deref()),
            ("gcr.io", "p/app", None, Some(D))
        );
        let i = ImageRef::parse(&format!("gcr.io/p/app:v2@{D}")).unwrap();
        assert_eq!(i.tag.as_deref(), Some("v2"));
        assert_eq!(i.manifest_reference(), D);
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "",
            "UPPER/case",
            "app:",
            "app:-x",
            "a//b",
            "gcr.io/app@sha256:short",
            "gcr.io/app@md5:0123",
            "host:port:x/app",
            "app with space",
            "gcr.io:99999/app",
            "-bad.io/app",
            "app_",
        ] {
            let e = ImageRef::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("could not parse reference"), "{e}");
        }
    }

    #[test]
    fn display_is_the_full_name() {
        assert_eq!(
            ImageRef::parse("nginx").unwrap().to_string(),
            "index.docker.io/library/nginx:latest"
        );
    }
}
