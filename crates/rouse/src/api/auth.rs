//! Who may use the API: a bearer token kept in the data dir (owner-only), compared in constant
//! time, and a `Host` check that refuses names other than loopback's and the listen address
//! (a web page that rebinds its own DNS name to 127.0.0.1 still sends its name as `Host`).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use http::{HeaderMap, StatusCode, Uri, header};

use super::status::ApiError;

/// The token file's name inside the data dir.
pub const TOKEN_FILE: &str = "api-token";

/// Random bytes in a token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// The shortest token a token file may hold (so a truncated file is not a weak credential).
const MIN_TOKEN_CHARS: usize = 32;

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{path}: this secret file is readable by group or others (mode {mode:o}); run `chmod 600 {path}` or delete it to have a new one generated"
    )]
    TooOpen { path: String, mode: u32 },
    #[error(
        "{path}: the API token file holds no usable token (at least {MIN_TOKEN_CHARS} visible characters); delete it to have a new one generated"
    )]
    Invalid { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The token at `<data_dir>/api-token`, generated on first use. An existing file is kept (the
/// token survives restarts) but refused when group or others can access it.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::metadata(&path) {
        Ok(_) => read_token_file(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_token_file(&path),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Reads a file holding a secret, refusing one that group or others may access.
pub fn read_private_file(path: &Path) -> Result<String, TokenError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Reads a token file, refusing one that group or others may access.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let text = read_private_file(path)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.display().to_string(),
        });
    }
    Ok(token.to_string())
}

/// Writes a fresh token to a temporary owner-only file and renames it into place, so the token
/// file is never seen half-written or with wider permissions.
fn create_token_file(path: &Path) -> Result<String, TokenError> {
    let token = random_token().map_err(io_err(path))?;
    let tmp: PathBuf = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(token)
}

/// 32 bytes from the kernel's CSPRNG, hex-encoded.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// True when `a` and `b` are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 401 as Kubernetes answers it.
fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
}

/// Checks `Authorization: Bearer <token>` against the API's token.
pub fn check_bearer(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "Unauthorized: send Authorization: Bearer <token> (the token is in <data-dir>/api-token)",
        ));
    };
    let presented = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
        .map(|t| t.trim_ascii());
    match presented {
        Some(t) if constant_time_eq(t, token.as_bytes()) => Ok(()),
        _ => Err(unauthorized("Unauthorized: the bearer token is not valid")),
    }
}

/// Which `Host` values the API answers: loopback names and addresses, and the address it
/// listens on (any IP literal when it listens on all addresses: DNS rebinding needs a name).
#[derive(Debug, Clone)]
pub struct HostPolicy {
    listen: SocketAddr,
    /// Further names the operator gave (`--api-host`), lowercase.
    names: Vec<String>,
}

impl HostPolicy {
    /// The policy for an API listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            names: Vec::new(),
        }
    }

    /// Also answers to these host names (e.g. the name in `--tls-cert`).
    pub fn with_names(mut self, names: &[String]) -> Self {
        self.names = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    /// Checks the request's `Host` (and an absolute-form target's authority).
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => h
                .to_str()
                .map_err(|_| misdirected("a Host that is not text"))?,
            (None, _) => match uri.authority() {
                Some(a) => a.as_str(),
                None => return Err(misdirected("no Host header")),
            },
            (Some(_), Some(_)) => return Err(ApiError::bad_request("more than one Host header")),
        };
        if !self.allows(host) {
            return Err(misdirected(&format!("Host {host:?}")));
        }
        if let Some(authority) = uri.authority()
            && !self.allows(authority.as_str())
        {
            return Err(misdirected(&format!(
                "the request target's host {:?}",
                authority.as_str()
            )));
        }
        Ok(())
    }

    /// True if `host` (`name[:port]`) names this API.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if name.eq_ignore_ascii_case("localhost")
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            return true;
        }
        let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return false;
        };
        ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
    }
}

/// The name part of `name[:port]` / `[v6][:port]`, or None when the port part is not a number.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&host[..end + 2], port)
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return None;
    }
    (!name.is_empty()).then_some(name)
}

/// 421 Misdirected Request: this server does not answer for that name.
fn misdirected(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "MisdirectedRequest",
        format!(
            "{what} is not this API's address: the API answers only to localhost, 127.0.0.1, [::1] and the address it listens on (this refuses DNS-rebinding attacks from web pages)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let p = HostPolicy::new("127.0.0.1:8081".parse().unwrap());
        for ok in [
            "localhost",
            "localhost:8081",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8081",
            "[::1]",
            "[::1]:8081",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example:8081",
            "attacker.example",
            "localhost.attacker.example",
            "10.0.0.1:8081",
            "",
            ":8081",
            "localhost:x",
            "[::1",
            "[::1]x",
            "127.0.0.1.nip.io",
        ] {
            assert!(!p.allows(bad), "{bad}");
        }
        let lan = HostPolicy::new("192.168.1.5:8081".parse().unwrap());
        assert!(lan.allows("192.168.1.5:8081"));
        assert!(!lan.allows("192.168.1.6:8081"));
        let named = HostPolicy::new("0.0.0.0:8081".parse().unwrap())
            .with_names(&["API.example.com".to_string()]);
        assert!(named.allows("api.example.com:8081"));
        assert!(!named.allows("other.example.com:8081"));
        let any = HostPolicy::new("0.0.0.0:8081".parse().unwrap());
        assert!(any.allows("192.168.1.6:8081"));
        assert!(!any.allows("rebind.example:8081"));
    }

    #[test]
    fn bearer() {
        let token = "a".repeat(64);
        let mut h = HeaderMap::new();
        assert_eq!(check_bearer(&h, &token).unwrap_err().code, 401);
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert!(check_bearer(&h, &token).is_ok());
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}b").parse().unwrap(),
        );
        assert_eq!(check_bearer(&h, &token).unwrap_err().code, 401);
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        assert_eq!(check_bearer(&h, &token).unwrap_err().code, 401);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_file_is_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t1);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            load_or_create_token(dir.path()).unwrap_err(),
            TokenError::Invalid { .. }
        ));
        std::fs::remove_file(&path).unwrap();
        assert_ne!(load_or_create_token(dir.path()).unwrap(), t1);
    }
}
