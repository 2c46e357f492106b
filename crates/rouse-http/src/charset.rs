//! Byte classes of HTTP's grammar, each byte's looked up in one table: the fast path checks
//! every byte of a Host value (and of chunk trailers) on every request, and a lookup costs a
//! fraction of a chain of comparisons.

/// An RFC 9110 `tchar`.
const TCHAR: u8 = 1;
/// A byte a Host value may hold (`uri-host [":" port]`, see [`valid_host`]).
const HOST: u8 = 2;

static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let alnum = b.is_ascii_alphanumeric();
        if alnum
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
            )
            || matches!(b, b'^' | b'_' | b'`' | b'|' | b'~')
        {
            table[i] |= TCHAR;
        }
        if alnum
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\''
            )
            || matches!(
                b,
                b'(' | b')' | b'*' | b'+' | b';' | b'=' | b':' | b'[' | b']'
            )
        {
            table[i] |= HOST;
        }
        i += 1;
    }
    table
}

/// An RFC 9110 token character.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    CLASSES[usize::from(b)] & TCHAR != 0
}

/// Whether `s` is an RFC 9110 token (non-empty, `tchar`s only).
#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Whether `v` may be a Host value: a registered name, IPv4 or bracketed IPv6 with an
/// optional port; no whitespace, userinfo, path, list or control characters.
#[inline]
pub(crate) fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| CLASSES[usize::from(b)] & HOST != 0)
}

/// [`valid_host`] and [`is_token`] of a Host value in one look at each byte (the fast path
/// checks the first and writes `Forwarded: host=` by the second).
#[inline]
pub(crate) fn host_kind(v: &[u8]) -> (bool, bool) {
    let all = v
        .iter()
        .fold(HOST | TCHAR, |all, &b| all & CLASSES[usize::from(b)]);
    (all & HOST != 0, !v.is_empty() && all & TCHAR != 0)
}

/// Whether the header name `name` (a token) is `known` (lowercase letters, digits and `-`)
/// in any case, compared eight bytes at a time: setting bit 0x20 lowercases a letter and
/// leaves digits and `-` as they are, and no other token byte becomes one of these.
#[inline]
pub(crate) fn is_name(name: &[u8], known: &[u8]) -> bool {
    debug_assert!(
        known
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    );
    if name.len() != known.len() {
        return false;
    }
    let (mut a, mut b) = (name.chunks_exact(8), known.chunks_exact(8));
    let words = (&mut a)
        .zip(&mut b)
        .all(|(x, y)| word(x) | 0x2020_2020_2020_2020 == word(y));
    words
        && a.remainder()
            .iter()
            .zip(b.remainder())
            .all(|(x, y)| x | 0x20 == *y)
}

/// Eight bytes as one number.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_grammar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), tchar, "{b:#x}");
            let host = b.is_ascii_alphanumeric() || b"-._~%!$&'()*+;=:[]".contains(&b);
            assert_eq!(valid_host(&[b]), host, "{b:#x}");
        }
        assert!(is_token(b"hello.default.example.com"));
        assert!(!is_token(b"hello:8080"));
        assert!(!is_token(b""));
        assert!(valid_host(b"[::1]:8080"));
        for host in [
            "h.example.com",
            "h.example.com:8080",
            "[::1]",
            "",
            "a b",
            "x\"y",
        ] {
            let v = host.as_bytes();
            assert_eq!(host_kind(v), (valid_host(v), is_token(v)), "{host}");
        }
        for (name, known, same) in [
            ("Content-Length", "content-length", true),
            ("CONTENT-LENGTH", "content-length", true),
            ("Content-Lengti", "content-length", false),
            ("Content_Length", "content-length", false),
            ("x-forwarded-for", "x-forwarded-for", true),
            ("X-Forwarded-Fo", "x-forwarded-for", false),
            ("Host", "host", true),
            ("Hosts", "host", false),
            ("te", "te", true),
            ("K-Network-Probe", "k-network-probe", true),
            ("K-Network-Prob3", "k-network-probe", false),
            ("", "", true),
        ] {
            assert_eq!(is_name(name.as_bytes(), known.as_bytes()), same, "{name}");
            assert_eq!(name.eq_ignore_ascii_case(known), same, "{name}");
        }
        assert!(!valid_host(b"a b"));
    }
}
