//! Protocol upgrades (WebSocket and the like) across a proxy hop: the handshake is forwarded
//! as a request; once both sides switched, a [`Tunnel`] copies bytes both ways.

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Whether a request asks to switch protocols: HTTP/1.1 with `Connection: upgrade` and an
/// `Upgrade` header (a WebSocket handshake, say). HTTP/2 has no such upgrades.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The protocol a request asks to switch to.
pub(super) fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::UPGRADE).cloned()
}

/// The two halves of a switched connection, to be joined: the client's (from the server that
/// received the handshake) and the upstream's (from the client that forwarded it).
#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Tunnel {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade) -> Self {
        Tunnel { client, upstream }
    }

    /// Waits for both sides to switch (the client's once the 101 response went out, so this
    /// must run apart from the handler that returns that response), then copies bytes both
    /// ways until either side closes. Returns the bytes sent (client → upstream, upstream →
    /// client). Dropping the future closes both connections.
    pub async fn run(self) -> std::io::Result<(u64, u64)> {
        let (client, upstream) = tokio::try_join!(self.client, self.upstream)
            .map_err(|e| std::io::Error::other(format!("upgrade failed: {e}")))?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::get("/").version(version);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn recognises_upgrade_handshakes() {
        let ws = [
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
        ];
        assert!(is_upgrade(&req(Version::HTTP_11, &ws)));
        assert!(!is_upgrade(&req(Version::HTTP_2, &ws)));
        assert!(!is_upgrade(&req(
            Version::HTTP_11,
            &[("Upgrade", "websocket")]
        )));
        assert!(!is_upgrade(&req(
            Version::HTTP_11,
            &[("Connection", "upgrade")]
        )));
    }
}
