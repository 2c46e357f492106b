//! Kubernetes name rules (DNS-1035 and DNS-1123 labels, subdomains, qualified names) with the
//! messages Kubernetes prints, since Knative's errors embed them.

const DNS1035_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const MAX_LABEL: usize = 63;
const MAX_SUBDOMAIN: usize = 253;

/// True when `s` is a DNS-1035 label: lower-case alphanumerics and '-', starting with a letter,
/// ending with an alphanumeric, at most 63 characters. Knative names must be such labels.
pub fn is_dns1035_label(s: &str) -> bool {
    s.len() <= MAX_LABEL && matches_dns1035(s)
}

fn matches_dns1035(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && alnum(b[b.len() - 1])
        && b.iter().all(|c| alnum(*c) || *c == b'-')
}

fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|c| alnum(*c) || *c == b'-')
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// Kubernetes' `RegexError`: the message, examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// Kubernetes' `IsDNS1035Label` messages (empty when valid).
pub(crate) fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_LABEL {
        errs.push(max_len_error(MAX_LABEL));
    }
    if !matches_dns1035(s) {
        errs.push(regex_error(
            DNS1035_MSG,
            DNS1035_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// Kubernetes' `NameIsDNS1035Label(name, prefix=true)`: a `generateName` may end in '-'.
pub(crate) fn dns1035_prefix_errors(s: &str) -> Vec<String> {
    // Kubernetes swaps the last two characters for an 'a' when the prefix ends in '-'.
    if s.len() > 1 && s.ends_with('-') && s.is_char_boundary(s.len() - 2) {
        dns1035_label_errors(&format!("{}a", &s[..s.len() - 2]))
    } else {
        dns1035_label_errors(s)
    }
}

/// Kubernetes' `IsDNS1123Label` messages.
pub(crate) fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_LABEL {
        errs.push(max_len_error(MAX_LABEL));
    }
    if !matches_dns1123_label(s) {
        if matches_dns1123_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// Kubernetes' `IsDNS1123Subdomain` messages.
pub(crate) fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_SUBDOMAIN {
        errs.push(max_len_error(MAX_SUBDOMAIN));
    }
    if !matches_dns1123_subdomain(s) {
        let fmt = format!("{DNS1123_LABEL_FMT}(\\.{DNS1123_LABEL_FMT})*");
        errs.push(regex_error(DNS1123_SUBDOMAIN_MSG, &fmt, &["example.com"]));
    }
    errs
}

/// Kubernetes' `IsQualifiedName` (a label key: optional DNS prefix, '/', name) messages.
pub(crate) fn qualified_name_errors(s: &str) -> Vec<String> {
    let example = regex_error(
        QUALIFIED_NAME_MSG,
        QUALIFIED_NAME_FMT,
        &["MyName", "my.name", "123-abc"],
    );
    let parts: Vec<&str> = s.split('/').collect();
    let mut errs = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            return vec![format!(
                "a valid label key {example} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > MAX_LABEL {
        errs.push(format!("name part {}", max_len_error(MAX_LABEL)));
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        errs.push(format!("name part {example}"));
    }
    errs
}

/// Formats messages the way Go prints a `[]string` with `%v`: `[a b]`.
pub(crate) fn go_list(msgs: &[String]) -> String {
    format!("[{}]", msgs.join(" "))
}

/// Go's `%q` for the plain strings names are (Rust's debug quoting agrees on ASCII).
pub(crate) fn quote(s: &str) -> String {
    format!("{s:?}")
}
