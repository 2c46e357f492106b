//! The request-log template of `config-observability` (`logging.request-log-template`): the
//! subset of Go's `text/template` Knative's templates use, parsed once when the config is
//! loaded and rendered per request without parsing again.
//!
//! Supported: plain text; actions `{{ … }}` (with `{{-`/`-}}` trimming) holding a field of the
//! request data (`.Request.Method`, `.Response.Code`, `.Revision.Name`, `.TraceID`, …, see
//! [`Field`]), `.Request.Header.Get "Name"`, a string literal, the functions `js`, `html`,
//! `urlquery` and `print` (called as `js .X` or piped as `.X | js`), and comments
//! `{{/* … */}}`. Anything else (`if`, `range`, variables, other functions) is refused when the
//! config is loaded, with the construct and its position.

use std::fmt::Write as _;

/// A value of the request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `.Request.Method`
    Method,
    /// `.Request.RequestURI`: the request target as sent.
    RequestUri,
    /// `.Request.URL`: the request target (as Go prints a server request's URL).
    Url,
    /// `.Request.URL.Path`
    UrlPath,
    /// `.Request.URL.RawQuery`
    UrlRawQuery,
    /// `.Request.Proto` (`HTTP/1.1`)
    Proto,
    /// `.Request.ProtoMajor`
    ProtoMajor,
    /// `.Request.ProtoMinor`
    ProtoMinor,
    /// `.Request.Host`
    Host,
    /// `.Request.RemoteAddr` (`ip:port`)
    RemoteAddr,
    /// `.Request.ContentLength` (-1 when unknown)
    ContentLength,
    /// `.Request.UserAgent`
    UserAgent,
    /// `.Request.Referer`
    Referer,
    /// `.Request.Header.Get "Name"`: the first value of a header ("" when absent).
    Header(String),
    /// `.Response.Code`
    Code,
    /// `.Response.Size`: bytes of response body sent.
    Size,
    /// `.Response.Latency`: seconds, as Go prints a float64.
    Latency,
    /// `.Revision.Name`
    RevisionName,
    /// `.Revision.Namespace`
    RevisionNamespace,
    /// `.Revision.Service`
    RevisionService,
    /// `.Revision.Configuration`
    RevisionConfiguration,
    /// `.Revision.PodName`
    PodName,
    /// `.Revision.PodIP`
    PodIp,
    /// `.TraceID`
    TraceId,
}

/// Where a request's values come from when a line is rendered.
pub trait Fields {
    /// Writes the value of `field` (never called with a field the template does not use).
    fn write(&self, field: &Field, out: &mut String);
}

/// A function of the template language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Js,
    Html,
    UrlQuery,
    Print,
}

/// An operand: a field or a string literal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    Field(Field),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Operands (printed together, as `print` would), then functions applied in order.
    Action(Vec<Operand>, Vec<Func>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    source: String,
}

/// Why a template was refused: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: at byte {offset}: {reason}")]
pub struct TemplateError {
    /// Byte offset in the template text of the action at fault.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

const SUPPORTED: &str = "supported: fields such as .Request.Method, .Request.Header.Get \"Name\", string literals, js, html, urlquery, print and |";

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        let mut trim_next_text = false;
        while !rest.is_empty() {
            let Some(open) = rest.find("{{") else {
                push_text(&mut pieces, rest, trim_next_text, false);
                break;
            };
            let body_start = open + 2;
            let trim_left = rest[body_start..].starts_with("- ")
                || rest[body_start..].starts_with("-\t")
                || rest[body_start..].starts_with("-\n");
            push_text(&mut pieces, &rest[..open], trim_next_text, trim_left);
            let inner_start = body_start + usize::from(trim_left);
            let Some(close) = find_close(&rest[inner_start..]) else {
                return Err(TemplateError {
                    offset: offset + open,
                    reason: "unclosed action (no matching }})".into(),
                });
            };
            let mut inner = &rest[inner_start..inner_start + close];
            trim_next_text = false;
            if let Some(stripped) = inner
                .strip_suffix(" -")
                .or_else(|| inner.strip_suffix("\t-"))
                .or_else(|| inner.strip_suffix("\n-"))
            {
                inner = stripped;
                trim_next_text = true;
            }
            let at = offset + open;
            if let Some(piece) = parse_action(inner.trim(), at)? {
                pieces.push(piece);
            }
            let consumed = inner_start + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        Ok(Template {
            pieces,
            source: text.to_string(),
        })
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether any action reads request headers (`Header.Get`, `UserAgent`, `Referer`,
    /// `Host`): a caller can skip collecting them otherwise.
    pub fn reads_headers(&self) -> bool {
        self.fields().any(|f| {
            matches!(
                f,
                Field::Header(_) | Field::UserAgent | Field::Referer | Field::Host
            )
        })
    }

    /// The names of the headers `.Request.Header.Get` reads.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.fields().filter_map(|f| match f {
            Field::Header(name) => Some(name.as_str()),
            _ => None,
        })
    }

    fn fields(&self) -> impl Iterator<Item = &Field> {
        self.pieces.iter().flat_map(|p| match p {
            Piece::Action(ops, _) => ops
                .iter()
                .filter_map(|o| match o {
                    Operand::Field(f) => Some(f),
                    Operand::Literal(_) => None,
                })
                .collect::<Vec<_>>(),
            Piece::Text(_) => Vec::new(),
        })
    }

    /// Renders one line into `out` (cleared first; its capacity is reused, as is that of
    /// this thread's buffers for function arguments).
    pub fn render(&self, fields: &dyn Fields, out: &mut String) {
        out.clear();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Action(ops, funcs) if funcs.is_empty() || funcs == &[Func::Print] => {
                    write_operands(ops, fields, out);
                }
                Piece::Action(ops, funcs) => SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut bufs) => {
                        let (arg, next) = &mut *bufs;
                        call(ops, funcs, fields, arg, next, out);
                    }
                    Err(_) => call(
                        ops,
                        funcs,
                        fields,
                        &mut String::new(),
                        &mut String::new(),
                        out,
                    ),
                }),
            }
        }
    }
}

thread_local! {
    /// A function's argument and an intermediate result, kept from one line to the next.
    static SCRATCH: std::cell::RefCell<(String, String)> =
        const { std::cell::RefCell::new((String::new(), String::new())) };
}

/// Evaluates the operands into `arg`, then applies `funcs` in order, the last into `out`.
fn call(
    ops: &[Operand],
    funcs: &[Func],
    fields: &dyn Fields,
    arg: &mut String,
    next: &mut String,
    out: &mut String,
) {
    arg.clear();
    write_operands(ops, fields, arg);
    for (i, f) in funcs.iter().enumerate() {
        if i + 1 == funcs.len() {
            apply(*f, arg, out);
        } else {
            next.clear();
            apply(*f, arg, next);
            std::mem::swap(arg, next);
        }
    }
}

/// Writes operands as Go's `print` joins them: a space between two that are not strings.
fn write_operands(ops: &[Operand], fields: &dyn Fields, out: &mut String) {
    for (i, op) in ops.iter().enumerate() {
        if i > 0 && !is_string(&ops[i - 1]) && !is_string(op) {
            out.push(' ');
        }
        match op {
            Operand::Field(f) => fields.write(f, out),
            Operand::Literal(s) => out.push_str(s),
        }
    }
}

fn is_string(op: &Operand) -> bool {
    match op {
        Operand::Literal(_) => true,
        Operand::Field(f) => !matches!(
            f,
            Field::Code
                | Field::Size
                | Field::Latency
                | Field::ContentLength
                | Field::ProtoMajor
                | Field::ProtoMinor
        ),
    }
}

fn push_text(pieces: &mut Vec<Piece>, text: &str, trim_start: bool, trim_end: bool) {
    let mut t = text;
    if trim_start {
        t = t.trim_start();
    }
    if trim_end {
        t = t.trim_end();
    }
    if !t.is_empty() {
        pieces.push(Piece::Text(t.to_string()));
    }
}

/// The end of an action: the first `}}` outside a string literal.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == b'\\' && q == b'"' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'`' => quote = Some(b),
            None if b == b'}' && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

fn parse_action(inner: &str, at: usize) -> Result<Option<Piece>, TemplateError> {
    let err = |reason: String| TemplateError { offset: at, reason };
    if inner.starts_with("/*") {
        if inner.ends_with("*/") {
            return Ok(None);
        }
        return Err(err("unclosed comment".into()));
    }
    let mut stages = split_pipes(inner).into_iter();
    let first = tokens(stages.next().unwrap_or_default()).map_err(&err)?;
    let (mut funcs, operand_tokens) = match first.first().map(String::as_str) {
        None => return Err(err("empty action".into())),
        Some(word)
            if !word.starts_with('.') && !word.starts_with('"') && !word.starts_with('`') =>
        {
            (vec![func(word).map_err(&err)?], &first[1..])
        }
        Some(_) => (Vec::new(), &first[..]),
    };
    let operands = operands(operand_tokens).map_err(&err)?;
    if operands.is_empty() {
        return Err(err(format!("{} needs an argument", first[0])));
    }
    for stage in stages {
        let words = tokens(stage).map_err(&err)?;
        match words.as_slice() {
            [one] => funcs.push(func(one).map_err(&err)?),
            [] => return Err(err("missing function after |".into())),
            _ => {
                return Err(err(format!(
                    "{:?} after |: only a function without arguments can follow a pipe ({SUPPORTED})",
                    stage.trim()
                )));
            }
        }
    }
    // In order of application: the first stage's function, then each piped one.
    Ok(Some(Piece::Action(operands, funcs)))
}

/// Splits on `|` outside string literals.
fn split_pipes(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None if c == '|' => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            None => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Words and string literals (kept with their quotes).
fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' || c == '`' {
            word.push(c);
            chars.next();
            let mut closed = false;
            while let Some(d) = chars.next() {
                word.push(d);
                if d == '\\' && c == '"' {
                    if let Some(e) = chars.next() {
                        word.push(e);
                    }
                    continue;
                }
                if d == c {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err("unterminated string literal".into());
            }
        } else {
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() {
                    break;
                }
                word.push(d);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

fn func(word: &str) -> Result<Func, String> {
    match word {
        "js" => Ok(Func::Js),
        "html" => Ok(Func::Html),
        "urlquery" => Ok(Func::UrlQuery),
        "print" => Ok(Func::Print),
        w if w.starts_with('$') => Err(format!("variables ({w}) are not supported ({SUPPORTED})")),
        w => Err(format!("{w:?} is not supported ({SUPPORTED})")),
    }
}

fn operands(words: &[String]) -> Result<Vec<Operand>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w.starts_with('"') || w.starts_with('`') {
            out.push(Operand::Literal(unquote(w)?));
            i += 1;
            continue;
        }
        if !w.starts_with('.') {
            return Err(format!(
                "{w:?} as an argument is not supported ({SUPPORTED})"
            ));
        }
        if w == ".Request.Header.Get" {
            let Some(name) = words
                .get(i + 1)
                .filter(|n| n.starts_with('"') || n.starts_with('`'))
            else {
                return Err(".Request.Header.Get needs a header name in quotes".into());
            };
            out.push(Operand::Field(Field::Header(unquote(name)?)));
            i += 2;
            continue;
        }
        out.push(Operand::Field(field(w)?));
        i += 1;
    }
    Ok(out)
}

fn field(path: &str) -> Result<Field, String> {
    Ok(match path {
        ".Request.Method" => Field::Method,
        ".Request.RequestURI" => Field::RequestUri,
        ".Request.URL" | ".Request.URL.String" => Field::Url,
        ".Request.URL.Path" => Field::UrlPath,
        ".Request.URL.RawQuery" => Field::UrlRawQuery,
        ".Request.Proto" => Field::Proto,
        ".Request.ProtoMajor" => Field::ProtoMajor,
        ".Request.ProtoMinor" => Field::ProtoMinor,
        ".Request.Host" => Field::Host,
        ".Request.RemoteAddr" => Field::RemoteAddr,
        ".Request.ContentLength" => Field::ContentLength,
        ".Request.UserAgent" => Field::UserAgent,
        ".Request.Referer" => Field::Referer,
        ".Response.Code" => Field::Code,
        ".Response.Size" => Field::Size,
        ".Response.Latency" => Field::Latency,
        ".Revision.Name" => Field::RevisionName,
        ".Revision.Namespace" => Field::RevisionNamespace,
        ".Revision.Service" => Field::RevisionService,
        ".Revision.Configuration" => Field::RevisionConfiguration,
        ".Revision.PodName" => Field::PodName,
        ".Revision.PodIP" => Field::PodIp,
        ".TraceID" => Field::TraceId,
        other => {
            return Err(format!(
                "unknown field {other} (known: .Request.{{Method,RequestURI,URL,URL.Path,URL.RawQuery,Proto,ProtoMajor,ProtoMinor,Host,RemoteAddr,ContentLength,UserAgent,Referer,Header.Get \"Name\"}}, .Response.{{Code,Size,Latency}}, .Revision.{{Name,Namespace,Service,Configuration,PodName,PodIP}}, .TraceID)"
            ));
        }
    })
}

fn unquote(lit: &str) -> Result<String, String> {
    if let Some(raw) = lit.strip_prefix('`').and_then(|l| l.strip_suffix('`')) {
        return Ok(raw.to_string());
    }
    let body = lit
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .ok_or_else(|| format!("malformed string literal {lit}"))?;
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => return Err(format!("unsupported escape \\{other} in {lit}")),
            None => return Err(format!("malformed string literal {lit}")),
        }
    }
    Ok(out)
}

fn apply(f: Func, input: &str, out: &mut String) {
    match f {
        Func::Js => js_escape(input, out),
        Func::Html => html_escape(input, out),
        Func::UrlQuery => query_escape(input, out),
        Func::Print => out.push_str(input),
    }
}

/// Go's `js`: quotes, backslash and `<>&=` escaped, control and unprintable characters as
/// `\u` and their four hex digits.
pub fn js_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 || c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Go's `html`: `"'&<>` as entities, NUL as U+FFFD.
fn html_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Go's `urlquery`: query escaping (space as `+`).
fn query_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// Writes a float64 as Go's `%v` does: the shortest digits that read back the same, in
/// exponent form when the decimal exponent is below -4 or at least 6 (Go's `%g` rule for the
/// shortest precision).
pub fn write_go_float(v: f64, out: &mut String) {
    if v == 0.0 {
        out.push('0');
        return;
    }
    if !v.is_finite() {
        out.push_str(if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        });
        return;
    }
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(mantissa);
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else {
        let _ = write!(out, "{}", v.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knative's default template.
    const KNATIVE_DEFAULT: &str = r#"{"httpRequest": {"requestMethod": "{{.Request.Method}}", "requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", "status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", "userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", "serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", "latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, "traceId": "{{.TraceID}}"}"#;

    struct Sample;

    impl Fields for Sample {
        fn write(&self, field: &Field, out: &mut String) {
            match field {
                Field::Method => out.push_str("GET"),
                Field::RequestUri => out.push_str("/a?b=\"c\"&d=<e>"),
                Field::ContentLength => out.push('0'),
                Field::Code => out.push_str("200"),
                Field::Size => out.push_str("42"),
                Field::UserAgent => out.push_str("curl/8"),
                Field::RemoteAddr => out.push_str("127.0.0.1:5000"),
                Field::PodIp => out.push_str("127.0.0.1"),
                Field::Referer => {}
                Field::Latency => write_go_float(0.0012345, out),
                Field::Proto => out.push_str("HTTP/1.1"),
                Field::TraceId => out.push_str("0af7651916cd43dd8448eb211c80319c"),
                Field::Header(name) if name == "X-Id" => out.push_str("abc"),
                Field::Header(_) => {}
                Field::RevisionName => out.push_str("hello-00001"),
                other => out.push_str(&format!("<{other:?}>")),
            }
        }
    }

    fn render(t: &str) -> String {
        let mut out = String::new();
        Template::parse(t).unwrap().render(&Sample, &mut out);
        out
    }

    #[test]
    fn knatives_default_template_renders_json() {
        let line = render(KNATIVE_DEFAULT);
        assert_eq!(
            line,
            r#"{"httpRequest": {"requestMethod": "GET", "requestUrl": "/a?b\u003D\"c\"\u0026d\u003D\u003Ce\u003E", "requestSize": "0", "status": 200, "responseSize": "42", "userAgent": "curl/8", "remoteIp": "127.0.0.1:5000", "serverIp": "127.0.0.1", "referer": "", "latency": "0.0012345s", "protocol": "HTTP/1.1"}, "traceId": "0af7651916cd43dd8448eb211c80319c"}"#
        );
        assert!(Template::parse(KNATIVE_DEFAULT).unwrap().reads_headers());
    }

    #[test]
    fn headers_pipes_literals_trimming_and_comments() {
        assert_eq!(
            render(r#"id={{.Request.Header.Get "X-Id"}} {{.Revision.Name | js}}"#),
            "id=abc hello-00001"
        );
        assert_eq!(render("a  {{- .Response.Code -}}  b"), "a200b");
        assert_eq!(render("{{/* nothing */}}x"), "x");
        assert_eq!(
            render(r#"{{"<a>" | html}} {{urlquery "a b&c"}}"#),
            "&lt;a&gt; a+b%26c"
        );
        assert_eq!(render("{{print .Response.Code .Response.Size}}"), "200 42");
        assert_eq!(render(r#"{{print "}}" .Request.Method}}"#), "}}GET");
        assert_eq!(
            render(r#"{{"<a b>" | html | urlquery}}"#),
            "%26lt%3Ba+b%26gt%3B"
        );
        let t = Template::parse(r#"{{.Request.Header.Get "X-Id"}}{{.Request.Header.Get "B"}}"#)
            .unwrap();
        assert_eq!(t.header_names().collect::<Vec<_>>(), vec!["X-Id", "B"]);
        assert!(
            !Template::parse("{{.Response.Code}}")
                .unwrap()
                .reads_headers()
        );
    }

    #[test]
    fn unsupported_constructs_are_refused_with_position_and_reason() {
        for (text, want) in [
            (
                "ab{{if .Request.Method}}x{{end}}",
                "\"if\" is not supported",
            ),
            ("{{range .X}}", "\"range\" is not supported"),
            ("{{$x := 1}}", "variables ($x) are not supported"),
            ("{{.Request.Nope}}", "unknown field .Request.Nope"),
            (
                "{{printf \"%s\" .Request.Method}}",
                "\"printf\" is not supported",
            ),
            ("x {{.Request.Method", "unclosed action"),
            ("{{.Request.Header.Get X}}", "needs a header name in quotes"),
            ("{{}}", "empty action"),
            ("{{js}}", "js needs an argument"),
            (
                "{{.Request.Method | printf \"%q\"}}",
                "only a function without arguments",
            ),
            ("{{\"abc}}", "unclosed action"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        assert_eq!(Template::parse("ab{{if 1}}").unwrap_err().offset, 2);
    }

    #[test]
    fn js_escaping_matches_go() {
        let mut out = String::new();
        js_escape("a'b\"c\\d\n\u{7f}é<>&=", &mut out);
        assert_eq!(
            out,
            "a\\'b\\\"c\\\\d\\u000A\\u007Fé\\u003C\\u003E\\u0026\\u003D"
        );
    }

    #[test]
    fn floats_print_as_go_prints_them() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.25, "0.25"),
            (0.0012345, "0.0012345"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (123456.5, "123456.5"),
            (1e21, "1e+21"),
            (1234567.0, "1.234567e+06"),
            (-2.5, "-2.5"),
        ] {
            let mut out = String::new();
            write_go_float(v, &mut out);
            assert_eq!(out, want, "{v}");
        }
    }
}
