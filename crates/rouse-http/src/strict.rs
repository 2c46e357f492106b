//! What a hop checks and settles on a client's request head before anything acts on it
//! (RFC 9112 §3.2–3.3): one Host, a target an app can be asked for, the absolute-form's
//! authority as the Host, no `h2c` upgrade. The fast path takes only heads that pass these
//! already ([`super::h1::FastRequest`]); everything else reaches the general path, which
//! calls [`settle_request`].

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::charset::valid_host;

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Why a request head is refused (400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHead {
    /// More than one Host field line (RFC 9112 §3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// An HTTP/1.1 request with neither a Host nor an absolute-form target.
    #[error("missing Host header")]
    MissingHost,
    /// A Host value that is no `uri-host [":" port]`.
    #[error("invalid Host header")]
    InvalidHost,
    /// A target in neither origin form (`/path`) nor absolute form (`http://host/path`):
    /// `*`, an authority alone, a path without its leading slash.
    #[error("the request target must be an absolute path or an absolute URI")]
    BadTarget,
}

/// Settles a request as the first hop to see it: refuses ([`BadHead`]) duplicate Host lines,
/// an invalid Host, a missing one (HTTP/1.1), and targets no app can be asked for (`*`,
/// authority-form, no leading slash); makes an absolute-form target's authority the Host
/// (it wins, RFC 9112 §3.2.2; over HTTP/2 a Host header, if any, stays); and drops an `Upgrade: h2c` offer (the hop speaks HTTP/1.1 to
/// the app; nginx does the same), with its `HTTP2-Settings` and `Connection` options.
pub fn settle_request<B>(req: &mut Request<B>) -> Result<(), BadHead> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadHead::DuplicateHost);
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(BadHead::InvalidHost);
    }
    let uri = req.uri();
    let origin_form =
        uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/');
    let absolute_form = uri.scheme().is_some()
        && uri.authority().is_some()
        && (uri.path().starts_with('/') || uri.path().is_empty());
    if !(origin_form || absolute_form) || req.method() == Method::CONNECT {
        return Err(BadHead::BadTarget);
    }
    // Over HTTP/2 the URI always carries `:authority`; a Host header beside it is kept, as
    // before (clients that connect by address and name the site in Host rely on it).
    let http2 = req.version() >= Version::HTTP_2;
    if absolute_form && !(http2 && host.is_some()) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if !valid_host(authority.as_bytes()) {
            return Err(BadHead::InvalidHost);
        }
        let value = HeaderValue::from_str(authority).map_err(|_| BadHead::InvalidHost)?;
        req.headers_mut().insert(header::HOST, value);
    } else if host.is_none() && req.version() == Version::HTTP_11 {
        return Err(BadHead::MissingHost);
    }
    drop_h2c_upgrade(req.headers_mut());
    Ok(())
}

/// Removes an `Upgrade` that offers `h2c` (with `HTTP2-Settings` and the `Connection`
/// options naming them).
fn drop_h2c_upgrade(headers: &mut http::HeaderMap) {
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"));
    if !h2c {
        return;
    }
    headers.remove(header::UPGRADE);
    headers.remove(HTTP2_SETTINGS);
    let kept: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|o| {
            !o.is_empty()
                && !o.eq_ignore_ascii_case("upgrade")
                && !o.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONNECTION);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(header::CONNECTION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method("GET").uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_and_targets_are_settled_or_refused() {
        let mut r = req("/a", &[("host", "h")]);
        assert_eq!(settle_request(&mut r), Ok(()));
        let mut r = req("/a", &[("host", "h"), ("host", "h")]);
        assert_eq!(settle_request(&mut r), Err(BadHead::DuplicateHost));
        let mut r = req("/a", &[]);
        assert_eq!(settle_request(&mut r), Err(BadHead::MissingHost));
        let mut r = req("/a", &[("host", "a b")]);
        assert_eq!(settle_request(&mut r), Err(BadHead::InvalidHost));
        let mut r = req("*", &[("host", "h")]);
        assert_eq!(settle_request(&mut r), Err(BadHead::BadTarget));
        let mut r = req("noslash", &[("host", "h")]);
        assert_eq!(settle_request(&mut r), Err(BadHead::BadTarget));
        let mut r = req("http://real.example/p", &[("host", "fake.example")]);
        assert_eq!(settle_request(&mut r), Ok(()));
        assert_eq!(r.headers()["host"], "real.example");
    }

    #[test]
    fn an_h2c_upgrade_offer_is_dropped() {
        let mut r = req(
            "/",
            &[
                ("host", "h"),
                ("connection", "Upgrade, HTTP2-Settings, x-opt"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
        );
        assert_eq!(settle_request(&mut r), Ok(()));
        assert!(!r.headers().contains_key("upgrade"));
        assert!(!r.headers().contains_key("http2-settings"));
        assert_eq!(r.headers()["connection"], "x-opt");
        let mut r = req(
            "/",
            &[
                ("host", "h"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
        );
        assert_eq!(settle_request(&mut r), Ok(()));
        assert_eq!(r.headers()["upgrade"], "websocket");
    }
}
