//! Registry credentials: the `WWW-Authenticate` challenge a registry answers 401 with, and
//! the keychain made of a revision's image pull Secrets (`kubernetes.io/dockerconfigjson` and
//! `kubernetes.io/dockercfg`), matched to an image by registry host (globs allowed), port and
//! path prefix, the most specific entry first, as the kubelet matches them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::reference::{DOCKER_HUB, ImageRef};

/// How a registry asks to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`: send the credentials with each request.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: fetch a token from the realm.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Why a challenge, a Secret or a credential cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unsupported WWW-Authenticate challenge {0:?}")]
    Challenge(String),
    #[error("Secret {secret}: {reason}")]
    Secret { secret: String, reason: String },
}

/// Parses a `WWW-Authenticate` header (RFC 7235: a scheme, then `key=value` pairs, values
/// plain or quoted with `\` escapes). The first Bearer or Basic challenge is taken.
pub fn parse_challenge(header: &str) -> Result<Challenge, AuthError> {
    let bad = || AuthError::Challenge(header.to_string());
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest).ok_or_else(bad)?;
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Ok(Challenge::Basic),
        "bearer" => {
            let realm = params.get("realm").cloned().ok_or_else(bad)?;
            Ok(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => Err(bad()),
    }
}

/// `key=value, key="quoted, value"`; keys lower-cased. A second challenge (a token without
/// `=` after a comma) ends the list.
fn parse_params(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next_if_eq(&'=').is_none() {
            // The start of another challenge: this one is complete.
            return Some(out);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return None;
        }
        out.insert(key.to_ascii_lowercase(), value);
    }
}

/// What a registry is sent.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (Basic, and to the token realm).
    Basic { username: String, password: String },
    /// A registry token (`registrytoken`): sent as a bearer token as is.
    Token(String),
}

impl std::fmt::Debug for Credential {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username:?}, <password>)"),
            Credential::Token(_) => write!(f, "Token(<token>)"),
        }
    }
}

impl Credential {
    /// The `Authorization` value for Basic authentication, if this is a password.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::Token(_) => None,
        }
    }
}

/// Where a keychain entry applies: a host (labels may be `*`), a port, a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: String,
    port: Option<String>,
    path: String,
}

impl Pattern {
    /// A docker config key: `gcr.io`, `https://index.docker.io/v1/`, `*.example.com:5000/team`.
    fn parse(key: &str) -> Option<Pattern> {
        let key = key.trim();
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let (authority, path) = key.split_once('/').unwrap_or((key, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (h, Some(p.to_string()))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return None;
        }
        let host = host.to_ascii_lowercase();
        let host = match host.as_str() {
            "docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => host,
        };
        // Docker's own key for Docker Hub ends in the API version, not a repository path.
        let path = path.trim_matches('/');
        let path = if matches!(path, "v1" | "v2") {
            ""
        } else {
            path
        };
        Some(Pattern {
            host,
            port,
            path: path.to_string(),
        })
    }

    fn matches(&self, image: &ImageRef) -> bool {
        let (host, port) = match image.registry.rsplit_once(':') {
            Some((h, p))
                if !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (!h.starts_with('[') || h.ends_with(']')) =>
            {
                (h.to_ascii_lowercase(), Some(p))
            }
            _ => (image.registry.to_ascii_lowercase(), None),
        };
        let labels: Vec<&str> = host.split('.').collect();
        let globs: Vec<&str> = self.host.split('.').collect();
        let host_ok =
            labels.len() == globs.len() && globs.iter().zip(&labels).all(|(g, l)| glob(g, l));
        let path_ok = self.path.is_empty()
            || image.repository == self.path
            || image
                .repository
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        host_ok && self.port.as_deref() == port && path_ok
    }

    /// More path, then fewer wildcards, is more specific.
    fn specificity(&self) -> (usize, usize) {
        let path = if self.path.is_empty() {
            0
        } else {
            self.path.split('/').count()
        };
        (path, usize::MAX - self.host.matches('*').count())
    }
}

/// `*` matches any run of characters within one label.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// The credentials of a revision's pull Secrets, in the order given (the revision's own
/// `imagePullSecrets`, then its ServiceAccount's).
#[derive(Debug, Clone, Default)]
pub struct Keychain {
    entries: Vec<(Pattern, Credential)>,
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    registrytoken: String,
}

impl Keychain {
    /// Adds a Secret's entries: its `type` and data (decoded bytes). Secrets of other types
    /// are ignored, as the kubelet ignores them.
    pub fn add_secret(
        &mut self,
        name: &str,
        type_: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), AuthError> {
        let fail = |reason: String| AuthError::Secret {
            secret: name.to_string(),
            reason,
        };
        let auths = match type_ {
            "kubernetes.io/dockerconfigjson" => {
                let raw = data
                    .get(".dockerconfigjson")
                    .ok_or_else(|| fail("no .dockerconfigjson key".into()))?;
                serde_json::from_slice::<DockerConfigJson>(raw)
                    .map_err(|e| fail(format!(".dockerconfigjson: {e}")))?
                    .auths
            }
            "kubernetes.io/dockercfg" => {
                let raw = data
                    .get(".dockercfg")
                    .ok_or_else(|| fail("no .dockercfg key".into()))?;
                serde_json::from_slice::<BTreeMap<String, DockerAuth>>(raw)
                    .map_err(|e| fail(format!(".dockercfg: {e}")))?
            }
            _ => return Ok(()),
        };
        for (key, a) in auths {
            let Some(pattern) = Pattern::parse(&key) else {
                continue;
            };
            let cred = if !a.registrytoken.is_empty() {
                Credential::Token(a.registrytoken)
            } else if !a.auth.is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.auth.trim())
                    .map_err(|e| fail(format!("{key}: auth is not base64: {e}")))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| fail(format!("{key}: auth is not UTF-8")))?;
                let (username, password) = text
                    .split_once(':')
                    .ok_or_else(|| fail(format!("{key}: auth is not user:password")))?;
                Credential::Basic {
                    username: username.to_string(),
                    password: password.to_string(),
                }
            } else if !a.username.is_empty() || !a.password.is_empty() {
                Credential::Basic {
                    username: a.username,
                    password: a.password,
                }
            } else {
                continue;
            };
            self.entries.push((pattern, cred));
        }
        Ok(())
    }

    /// The credential for `image`: the most specific matching entry, the first of equals.
    pub fn lookup(&self, image: &ImageRef) -> Option<&Credential> {
        let mut best: Option<&(Pattern, Credential)> = None;
        for e in self.entries.iter().filter(|(p, _)| p.matches(image)) {
            if best.is_none_or(|b| e.0.specificity() > b.0.specificity()) {
                best = Some(e);
            }
        }
        best.map(|(_, c)| c)
    }

    /// True when it holds no credential.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_with_quotes_and_escapes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
        let c =
            parse_challenge(r#"bearer Realm = "https://r.example/t?a=\"b\"" , scope=x"#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: r#"https://r.example/t?a="b""#.into(),
                service: None,
                scope: Some("x".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#).unwrap(),
            Challenge::Basic
        );
    }

    #[test]
    fn unusable_challenges_are_errors() {
        for bad in [
            "",
            "Negotiate abc",
            "Bearer service=x",
            r#"Bearer realm="open"#,
        ] {
            assert!(parse_challenge(bad).is_err(), "{bad:?}");
        }
    }

    fn secret(json: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(".dockerconfigjson".to_string(), json.as_bytes().to_vec())])
    }

    fn user(k: &Keychain, image: &str) -> Option<String> {
        match k.lookup(&ImageRef::parse(image).unwrap())? {
            Credential::Basic { username, .. } => Some(username.clone()),
            Credential::Token(t) => Some(format!("token {t}")),
        }
    }

    #[test]
    fn credentials_match_by_host_port_and_path() {
        let mut k = Keychain::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("hub:pw");
        k.add_secret(
            "pull",
            "kubernetes.io/dockerconfigjson",
            &secret(&format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "gcr.io": {{"username": "gcr", "password": "p"}},
                    "gcr.io/team": {{"username": "team", "password": "p"}},
                    "*.example.com": {{"username": "glob", "password": "p"}},
                    "localhost:5000": {{"registrytoken": "t0k"}},
                    "empty.io": {{}}
                }}}}"#
            )),
        )
        .unwrap();
        assert_eq!(user(&k, "nginx").as_deref(), Some("hub"));
        assert_eq!(user(&k, "docker.io/me/app").as_deref(), Some("hub"));
        assert_eq!(user(&k, "gcr.io/other/app").as_deref(), Some("gcr"));
        // The longer path wins; a path matches whole components only.
        assert_eq!(user(&k, "gcr.io/team/app").as_deref(), Some("team"));
        assert_eq!(user(&k, "gcr.io/teamx/app").as_deref(), Some("gcr"));
        assert_eq!(user(&k, "eu.example.com/app").as_deref(), Some("glob"));
        // A glob is one label, and the port must match.
        assert_eq!(user(&k, "a.b.example.com/app"), None);
        assert_eq!(user(&k, "localhost:5000/app").as_deref(), Some("token t0k"));
        assert_eq!(user(&k, "localhost:5001/app"), None);
        assert_eq!(user(&k, "empty.io/app"), None);
        assert_eq!(user(&k, "quay.io/app"), None);
    }

    #[test]
    fn dockercfg_secrets_and_other_types() {
        let mut k = Keychain::default();
        let data = BTreeMap::from([(
            ".dockercfg".to_string(),
            br#"{"quay.io": {"username": "q", "password": "p"}}"#.to_vec(),
        )]);
        k.add_secret("old", "kubernetes.io/dockercfg", &data)
            .unwrap();
        k.add_secret("opaque", "Opaque", &data).unwrap();
        assert_eq!(user(&k, "quay.io/org/app").as_deref(), Some("q"));
        let err = k
            .add_secret("broken", "kubernetes.io/dockerconfigjson", &secret("{"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Secret broken: .dockerconfigjson:"),
            "{err}"
        );
        let err = k
            .add_secret(
                "bad-auth",
                "kubernetes.io/dockerconfigjson",
                &secret(r#"{"auths": {"x.io": {"auth": "!!"}}}"#),
            )
            .unwrap_err();
        assert!(err.to_string().contains("auth is not base64"), "{err}");
    }

    #[test]
    fn the_first_secret_wins_among_equals_and_secrets_never_print() {
        let mut k = Keychain::default();
        for (name, u) in [("a", "first"), ("b", "second")] {
            k.add_secret(
                name,
                "kubernetes.io/dockerconfigjson",
                &secret(&format!(
                    r#"{{"auths": {{"gcr.io": {{"username": "{u}", "password": "hunter2"}}}}}}"#
                )),
            )
            .unwrap();
        }
        assert_eq!(user(&k, "gcr.io/x").as_deref(), Some("first"));
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
