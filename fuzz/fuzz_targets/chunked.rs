//! The chunked decoders: the fast path's `ChunkedScanner` (fed in two pieces, split where the
//! first byte says) and the general path's response reader (`decode_chunked`), against a
//! plain reference of the strict grammar written here.
//!
//! Invariants: no panic; the scanner's verdict does not depend on how the bytes are split;
//! whenever any of the three finds the body complete, all three do, at the same byte, and the
//! two decoders give the same data; nothing the strict grammar refuses (a size that is not 1
//! to 15 hex digits — `5g`, `0x5`, `-5`, 2^64 —, a bare LF, a control character in a line, a
//! trailer that is not `token: value`) is ever accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rouse_http::fuzzing::{ChunkedScanner, decode_chunked};

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Complete(usize, Vec<u8>),
    Incomplete,
    Bad,
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    // The general path's reader caps lines at 8 KiB; keep under it.
    if data.len() >= 8 * 1024 {
        return;
    }
    let whole = ChunkedScanner::default().feed(data).map_err(|_| ());
    let split = usize::from(split).min(data.len());
    let mut s = ChunkedScanner::default();
    let pieces = match s.feed(&data[..split]) {
        Ok(None) => s
            .feed(&data[split..])
            .map(|end| end.map(|n| n + split))
            .map_err(|_| ()),
        other => other.map_err(|_| ()),
    };
    assert_eq!(whole, pieces, "split at {split}");

    let reference = reference(data);
    let raw = decode_chunked(data);
    let scanned_end = whole.ok().flatten();
    let raw_end = raw
        .as_ref()
        .ok()
        .and_then(|r| r.as_ref().map(|(_, end)| *end));
    match &reference {
        Verdict::Complete(end, body) => {
            assert_eq!(scanned_end, Some(*end), "scanner");
            assert_eq!(raw_end, Some(*end), "decoder");
            assert_eq!(&raw.unwrap().unwrap().0, body);
        }
        Verdict::Incomplete | Verdict::Bad => {
            assert_eq!(
                scanned_end, None,
                "scanner accepted what the grammar does not: {reference:?}"
            );
            assert_eq!(
                raw_end, None,
                "decoder accepted what the grammar does not: {reference:?}"
            );
        }
    }
});

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The next CRLF-ended line at `at`: its end (before the CRLF).
fn line_end(d: &[u8], at: usize) -> Option<usize> {
    d[at..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| at + p)
}

/// chunk-size = 1*15HEXDIG, then optional blanks, then nothing or `;` and an extension; no
/// control characters anywhere.
fn size_line(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 || line.iter().any(|&b| is_ctl(b)) {
        return None;
    }
    let rest = &line[digits..];
    let blanks = rest
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let rest = &rest[blanks..];
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    let mut n = 0u64;
    for &b in &line[..digits] {
        n = n * 16 + u64::from((b as char).to_digit(16)?);
    }
    Some(n)
}

/// trailer-field = 1*tchar ":" value without control characters.
fn trailer_line(line: &[u8]) -> bool {
    let name = line.iter().take_while(|b| is_tchar(**b)).count();
    name > 0 && line.get(name) == Some(&b':') && !line[name + 1..].iter().any(|&b| is_ctl(b))
}

fn reference(d: &[u8]) -> Verdict {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(end) = line_end(d, at) else {
            return Verdict::Incomplete;
        };
        let Some(size) = size_line(&d[at..end]) else {
            return Verdict::Bad;
        };
        at = end + 2;
        if size == 0 {
            loop {
                let Some(end) = line_end(d, at) else {
                    return Verdict::Incomplete;
                };
                let line = &d[at..end];
                at = end + 2;
                if line.is_empty() {
                    return Verdict::Complete(at, body);
                }
                if !trailer_line(line) {
                    return Verdict::Bad;
                }
            }
        }
        let size = size as usize;
        if d.len() < at + size + 2 {
            return Verdict::Incomplete;
        }
        body.extend_from_slice(&d[at..at + size]);
        at += size;
        if &d[at..at + 2] != b"\r\n" {
            return Verdict::Bad;
        }
        at += 2;
    }
}
