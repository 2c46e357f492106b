//! Header hygiene shared by every proxy hop.

use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::charset::is_name;

/// The header a health check carries; value `queue` asks whether a queue-proxy's app is ready.
pub const PROBE_HEADER: HeaderName = HeaderName::from_static("k-network-probe");
/// The header a proxy hop moves the client's Host into; the queue-proxy restores it.
pub const ORIGINAL_HOST_HEADER: HeaderName = HeaderName::from_static("k-original-host");
/// The header the activator marks the requests it forwards with (value [`PROXY_ACTIVATOR`]), so
/// their load is reported apart (the activator reports it itself).
pub const PROXY_HEADER: HeaderName = HeaderName::from_static("k-proxy-request");
/// The value of [`PROXY_HEADER`] on requests the activator forwards.
pub const PROXY_ACTIVATOR: &str = "activator";
/// The `User-Agent` prefixes of Knative's health checks (besides the kubelet's `kube-probe/`).
pub const PROBE_AGENT_PREFIXES: [&str; 3] = [
    "kube-probe/",
    "Knative-Activator-Probe",
    "Knative-Autoscaling-Probe",
];

/// Whether header names with `_` reach apps (`allow-underscores-in-headers` of
/// config-network); off by default, as nginx's `underscores_in_headers off`.
static ALLOW_UNDERSCORES: AtomicBool = AtomicBool::new(false);

/// Sets whether request headers whose names contain `_` are passed to apps (process-wide, as
/// the config-network key it comes from). Off, they are dropped: CGI and WSGI apps read
/// `X_Forwarded_For` and `X-Forwarded-For` both as `HTTP_X_FORWARDED_FOR`, so an underscore
/// variant would spoof what the platform sets.
pub fn set_allow_underscores_in_headers(allow: bool) {
    ALLOW_UNDERSCORES.store(allow, Ordering::Relaxed);
}

/// Whether a request header named `name` is dropped before the app for its underscore.
#[inline]
pub(crate) fn drops_underscored(name: &str) -> bool {
    dropped_for_underscore(name, ALLOW_UNDERSCORES.load(Ordering::Relaxed))
}

#[inline]
fn dropped_for_underscore(name: &str, allow: bool) -> bool {
    !allow && name.as_bytes().contains(&b'_')
}

/// Removes request headers whose names contain `_` (unless allowed, see
/// [`set_allow_underscores_in_headers`]).
pub fn strip_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| drops_underscored(n.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| drops_underscored(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Headers a `Connection` option can never remove: the Host, the forwarding headers the
/// platform sets and its internal ones. A client naming them there is ignored (as nginx,
/// which never lets `Connection` drop what it sets itself).
pub(crate) fn is_protected_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("x-forwarded-for")
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || name.eq_ignore_ascii_case("x-forwarded-host")
        || name.eq_ignore_ascii_case("forwarded")
        || is_internal_name(name)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Whether `name` is one of [`HOP_BY_HOP`] (any case).
pub(crate) fn is_hop_by_hop_name(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| is_name(name.as_bytes(), h.as_bytes()))
}

/// What a hop does with a request header on the fast path, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestHeader {
    /// Passed on as it came.
    Plain,
    /// Not for the next hop: hop-by-hop (`Transfer-Encoding` too), internal, or underscored
    /// (see [`drops_underscored`]).
    Dropped,
    /// `TE`: only `trailers` goes on.
    Te,
    /// `Host`.
    Host,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `Forwarded`.
    Forwarded,
}

/// Sorts a request header by its name (any case). Most names are told apart by their first
/// letter, without comparing them with each hop-by-hop and internal name in turn.
pub(crate) fn request_header(name: &str) -> RequestHeader {
    let eq = |known: &str| is_name(name.as_bytes(), known.as_bytes());
    let class = match name.as_bytes().first().map(u8::to_ascii_lowercase) {
        Some(b'h') if eq("host") => RequestHeader::Host,
        Some(b't') if eq("te") => RequestHeader::Te,
        Some(b'x') if eq("x-forwarded-for") => RequestHeader::XForwardedFor,
        Some(b'x') if eq("x-forwarded-proto") => RequestHeader::XForwardedProto,
        Some(b'f') if eq("forwarded") => RequestHeader::Forwarded,
        // Every hop-by-hop and internal name starts with one of these.
        Some(b'c' | b'k' | b'p' | b't' | b'u')
            if is_hop_by_hop_name(name) || eq("transfer-encoding") || is_internal_name(name) =>
        {
            RequestHeader::Dropped
        }
        _ => RequestHeader::Plain,
    };
    if class == RequestHeader::Plain && drops_underscored(name) {
        RequestHeader::Dropped
    } else {
        class
    }
}

/// Removes hop-by-hop headers, including any named in `Connection` (but never a protected
/// one: Host, the forwarding headers, the internal ones), and `Transfer-Encoding` (the next
/// hop frames the body itself). `TE: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at each name is cheaper than removing each kind.
    let any = headers
        .keys()
        .any(|n| n == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(&n.as_str()));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !is_protected_name(n))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a header is one of the platform's internal headers, which only Rouse's own hops may
/// set: `Knative-Serving-*`, `K-Network-*`, `K-Proxy-Request`, `K-Original-Host`,
/// `K-Passthrough-Lb`.
pub fn is_internal(name: &HeaderName) -> bool {
    is_internal_name(name.as_str())
}

/// [`is_internal`] for a raw header name, in any case.
pub(crate) fn is_internal_name(name: &str) -> bool {
    let name = name.as_bytes();
    let starts = |p: &str| {
        name.get(..p.len())
            .is_some_and(|n| is_name(n, p.as_bytes()))
    };
    starts("knative-serving-")
        || starts("k-network-")
        || is_name(name, b"k-proxy-request")
        || is_name(name, b"k-original-host")
        || is_name(name, b"k-passthrough-lb")
}

/// Appends `s` as an RFC 7230 token when it is one, else as a quoted-string (for
/// `Forwarded: host=`).
pub fn push_token_or_quoted(s: &[u8], out: &mut Vec<u8>) {
    if crate::charset::is_token(s) {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    for &c in s {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// Removes every internal header (see [`is_internal`]).
pub fn strip_internal(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_internal(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_headers_sort_as_the_name_by_name_checks_do() {
        let names = [
            "Host",
            "TE",
            "te",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "Forwarded",
            "Connection",
            "Keep-Alive",
            "Proxy-Authenticate",
            "proxy-authorization",
            "Proxy-Connection",
            "Trailer",
            "Upgrade",
            "Transfer-Encoding",
            "Knative-Serving-Revision",
            "K-Network-Hash",
            "K-Proxy-Request",
            "k-original-host",
            "K-Passthrough-Lb",
            "X_Forwarded_For",
            "Accept",
            "Content-Length",
            "Cookie",
            "Kind",
            "Pragma",
            "Tracestate",
            "User-Agent",
            "Hostname",
            "X-Forwarded-Host",
            "K-",
            "",
            "T",
        ];
        for name in names {
            let lower = name.to_ascii_lowercase();
            let expected = match lower.as_str() {
                "host" => RequestHeader::Host,
                "te" => RequestHeader::Te,
                "x-forwarded-for" => RequestHeader::XForwardedFor,
                "x-forwarded-proto" => RequestHeader::XForwardedProto,
                "forwarded" => RequestHeader::Forwarded,
                _ if is_hop_by_hop_name(name)
                    || lower == "transfer-encoding"
                    || is_internal_name(name)
                    || lower.contains('_') =>
                {
                    RequestHeader::Dropped
                }
                _ => RequestHeader::Plain,
            };
            assert_eq!(request_header(name), expected, "{name}");
        }
        assert_eq!(request_header("Connection"), RequestHeader::Dropped);
        assert_eq!(
            request_header("Knative-Serving-Tag"),
            RequestHeader::Dropped
        );
        assert_eq!(request_header("Cookie"), RequestHeader::Plain);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("TE", "trailers, deflate"),
            ("X-User", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, vec!["x-user", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn connection_never_removes_host_forwarding_or_internal_headers() {
        let mut h = map(&[
            (
                "Connection",
                "Host, X-Forwarded-For, forwarded, X-Forwarded-Proto, K-Original-Host, X-Gone",
            ),
            ("Host", "h"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("X-Forwarded-Proto", "http"),
            ("K-Original-Host", "o"),
            ("X-Gone", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "forwarded",
                "host",
                "k-original-host",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn underscored_names_go() {
        let mut h = map(&[
            ("X_Forwarded_For", "6.6.6.6"),
            ("K_Original_Host", "admin.internal"),
            ("X-Kept", "1"),
        ]);
        strip_underscored(&mut h);
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
        // `allow-underscores-in-headers: "true"` keeps them.
        assert!(dropped_for_underscore("X_Forwarded_For", false));
        assert!(!dropped_for_underscore("X_Forwarded_For", true));
        assert!(!dropped_for_underscore("X-Forwarded-For", false));
    }

    #[test]
    fn internal_headers_go_user_headers_stay() {
        let mut h = map(&[
            ("Knative-Serving-Revision", "r"),
            ("knative-serving-namespace", "n"),
            ("K-Network-Probe", "queue"),
            ("K-Network-Hash", "x"),
            ("K-Proxy-Request", "activator"),
            ("K-Original-Host", "evil"),
            ("K-Passthrough-Lb", "true"),
            ("K-Something-Else", "kept"),
            ("Knative-Other", "kept"),
        ]);
        strip_internal(&mut h);
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["k-something-else", "knative-other"]);
    }
}
