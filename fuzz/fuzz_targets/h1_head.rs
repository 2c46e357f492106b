//! The fast path's HTTP/1.1 head parsers: requests (`FastRequest::parse` and the head it
//! writes for the app) and responses (`parse_response`).
//!
//! Invariants: no panic; a request the fast path takes is one the general path's strict rules
//! (`settle_request`) accept too, with exactly one Host, an origin-form target and none of
//! the headers that send a request the general way; the head written for the app parses back
//! to the same request line, the same end-to-end headers in order, one Host, and the
//! forwarding headers for the client, with no hop-by-hop, internal or underscored names; a
//! response head written for the client parses back with the same status and framing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse_http::fuzzing::{ClientAddr, FastRequest, MAX_FAST_HEADERS, Parsed, header_slots};
use rouse_http::h1::{Framing, ParsedResponse, parse_response};
use rouse_http::settle_request;

fuzz_target!(|data: &[u8]| {
    request(data);
    response(data);
});

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn dropped_before_the_app(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ];
    let lower = name.to_ascii_lowercase();
    HOP.contains(&lower.as_str())
        || lower.starts_with("knative-serving-")
        || lower.starts_with("k-network-")
        || ["k-proxy-request", "k-original-host", "k-passthrough-lb"].contains(&lower.as_str())
        || lower.contains('_')
        || ["x-forwarded-for", "x-forwarded-proto", "forwarded"].contains(&lower.as_str())
}

fn request(data: &[u8]) {
    let mut headers = header_slots();
    let Parsed::Fast(req) = FastRequest::parse(data, &mut headers) else {
        return;
    };
    assert!(req.head_len <= data.len());
    assert!(req.target.starts_with('/'));
    assert!(req.body_len <= 64 * 1024);
    assert!(!req.host.is_empty());
    let hosts = req.headers.iter().filter(|h| eq(h.name, "host")).count();
    assert_eq!(hosts, 1);
    for h in req.headers {
        for general in ["transfer-encoding", "upgrade", "expect", "k-network-probe"] {
            assert!(!eq(h.name, general), "fast path took {general}");
        }
        if eq(h.name, "connection") {
            assert!(h.value.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
        }
    }

    // The general path's strict rules accept what the fast path takes.
    let mut b = http::Request::builder().method(req.method).uri(req.target);
    for h in req.headers {
        b = b.header(h.name, h.value);
    }
    if let Ok(mut r) = b.body(()) {
        assert_eq!(
            settle_request(&mut r),
            Ok(()),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }

    // The head for the app parses back to the same request.
    let client = ClientAddr::new("192.0.2.1".parse().unwrap());
    let mut out = Vec::new();
    req.write_upstream_head(&client, &mut out);
    let mut back_headers = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS + 8];
    let mut back = httparse::Request::new(&mut back_headers);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten head does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(back.method, Some(req.method));
    assert_eq!(back.path, Some(req.target));
    assert_eq!(back.version, Some(1));
    let kept: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .filter(|h| !dropped_before_the_app(h.name))
        .map(|h| (h.name, h.value))
        .collect();
    let mut written = Vec::new();
    let (mut xff, mut proto, mut fwd) = (0, 0, 0);
    for h in back.headers.iter() {
        if eq(h.name, "x-forwarded-for") {
            xff += 1;
            assert!(h.value.ends_with(b"192.0.2.1"));
        } else if eq(h.name, "x-forwarded-proto") {
            proto += 1;
            assert_eq!(h.value, b"http");
        } else if eq(h.name, "forwarded") {
            fwd += 1;
            assert!(h.value.ends_with(b";proto=http"));
        } else if eq(h.name, "te") {
            assert_eq!(h.value, b"trailers");
        } else {
            assert!(
                !dropped_before_the_app(h.name),
                "{} reached the app",
                h.name
            );
            written.push((h.name, h.value));
        }
    }
    assert_eq!((xff, proto, fwd), (1, 1, 1));
    assert_eq!(written, kept);
    let back_hosts: Vec<&[u8]> = back
        .headers
        .iter()
        .filter(|h| eq(h.name, "host"))
        .map(|h| h.value)
        .collect();
    assert_eq!(back_hosts, vec![req.host.as_bytes()]);
}

fn response(data: &[u8]) {
    let head_request = data.first().is_some_and(|b| b & 1 == 1);
    let mut out = Vec::new();
    let Ok(ParsedResponse::Head(head)) = parse_response(data, head_request, false, b"", &mut out)
    else {
        return;
    };
    assert!(head.head_len <= data.len());
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut back = httparse::Response::new(&mut headers);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten response does not parse: {other:?} {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(back.code, Some(head.status));
    let lengths: Vec<&[u8]> = back
        .headers
        .iter()
        .filter(|h| eq(h.name, "content-length"))
        .map(|h| h.value.trim_ascii())
        .collect();
    let chunked = back.headers.iter().any(|h| eq(h.name, "transfer-encoding"));
    match head.framing {
        Framing::Chunked => {
            assert!(chunked);
            assert!(lengths.is_empty());
        }
        Framing::Length(n) => {
            assert!(!chunked);
            assert!(!lengths.is_empty());
            // As written (leading zeros kept), but every one says the same length.
            assert!(lengths.iter().all(|l| {
                std::str::from_utf8(l)
                    .ok()
                    .and_then(|l| l.parse::<u64>().ok())
                    == Some(n)
            }));
        }
        Framing::UntilClose => assert!(head.closes),
        Framing::Empty => {}
    }
    for h in back.headers.iter() {
        for hop in ["keep-alive", "proxy-connection", "upgrade"] {
            assert!(!eq(h.name, hop), "{hop} passed to the client");
        }
        if eq(h.name, "connection") {
            assert_eq!(h.value, b"close");
        }
    }
}
