//! The queue-proxy's request log (`config-observability`): one line per request, rendered
//! with the configured template once the response is over, appended to the instance's log
//! (local mode) or written to stdout (the sidecar), as Knative's queue-proxy does.
//!
//! Off, it costs one atomic load per request. On, a request keeps its start time, method,
//! target and (only when the template reads them) its headers, all cheap clones; the body is
//! counted as it streams and the line is rendered into a reused buffer.

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rouse_api::config::observability::ObservabilityConfig;
use rouse_api::request_log::{Field, Fields, Template, write_go_float};

use rouse_http::{Body, BoxError, boxed};

/// What to log, shared by every queue-proxy of a process and switched while they run.
#[derive(Debug, Default)]
pub struct RequestLogSwitch {
    on: AtomicBool,
    settings: RwLock<Option<Arc<Settings>>>,
}

/// Two switches are the same only when they are one.
impl PartialEq for RequestLogSwitch {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for RequestLogSwitch {}

#[derive(Debug)]
struct Settings {
    template: Arc<Template>,
    /// The headers `.Request.Header.Get` reads, as the template names them.
    named_headers: Vec<(String, Option<header::HeaderName>)>,
    requests: bool,
    probes: bool,
}

impl RequestLogSwitch {
    /// A switch that is off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows `config-observability`.
    pub fn set(&self, cfg: &ObservabilityConfig) {
        let settings = cfg.request_log().map(|t| {
            Arc::new(Settings {
                named_headers: t
                    .header_names()
                    .map(|n| {
                        (
                            n.to_string(),
                            header::HeaderName::from_bytes(n.as_bytes()).ok(),
                        )
                    })
                    .collect(),
                template: t.clone(),
                requests: cfg.enable_request_log,
                probes: cfg.enable_probe_request_log,
            })
        });
        let on = settings.is_some();
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
        self.on.store(on, Ordering::Release);
    }

    /// Whether anything is logged now.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<Arc<Settings>> {
        if !self.is_on() {
            return None;
        }
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    /// The process's stdout (the sidecar: the pod's log).
    Stdout,
    /// Appended to a file (a local instance's log, which its program writes too).
    File(PathBuf),
}

/// The `.Revision` values of the lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionInfo {
    /// `.Revision.Name`
    pub name: String,
    /// `.Revision.Namespace`
    pub namespace: String,
    /// `.Revision.Service`
    pub service: String,
    /// `.Revision.Configuration`
    pub configuration: String,
    /// `.Revision.PodName` (locally: the instance)
    pub pod_name: String,
    /// `.Revision.PodIP`
    pub pod_ip: String,
}

/// One queue-proxy's request log.
pub struct RequestLogger {
    switch: Arc<RequestLogSwitch>,
    output: LogOutput,
    revision: RevisionInfo,
    /// The log file, opened at the first line.
    file: Mutex<Option<File>>,
}

impl std::fmt::Debug for RequestLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLogger")
            .field("output", &self.output)
            .field("revision", &self.revision)
            .finish()
    }
}

/// Two loggers are the same only when they are one (a config compares equal to itself).
impl PartialEq for RequestLogger {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for RequestLogger {}

/// The address of the hop that sent a request, when it came over a socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl RequestLogger {
    /// A logger following `switch`, writing to `output`.
    pub fn new(switch: Arc<RequestLogSwitch>, output: LogOutput, revision: RevisionInfo) -> Self {
        RequestLogger {
            switch,
            output,
            revision,
            file: Mutex::new(None),
        }
    }

    /// Whether requests are being logged now.
    pub fn is_on(&self) -> bool {
        self.switch.is_on()
    }

    /// Starts a request's entry, when it is to be logged (`probe`: a health check).
    pub(crate) fn begin<B>(self: &Arc<Self>, req: &Request<B>, probe: bool) -> Option<Pending> {
        let settings = self.switch.current()?;
        if !(if probe {
            settings.probes
        } else {
            settings.requests
        }) {
            return None;
        }
        let h = req.headers();
        let remote = match req.extensions().get::<PeerAddr>() {
            Some(PeerAddr(a)) => Remote::Addr(*a),
            // Handed over in-process: the client as the gateway saw it (its last hop).
            None => Remote::Forwarded(
                h.get_all("x-forwarded-for")
                    .iter()
                    .next_back()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .and_then(|ip| ip.trim().parse().ok()),
            ),
        };
        Some(Pending {
            logger: self.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: if settings.template.reads_headers() {
                Captured::from(h, &settings.named_headers)
            } else {
                Captured::default()
            },
            content_length: content_length(h),
            trace_id: trace_id(h),
            remote,
            settings,
        })
    }

    fn write_line(&self, line: &str) {
        let result = match &self.output {
            LogOutput::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())
            }
            LogOutput::File(path) => {
                let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
                if file.is_none() {
                    match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        Ok(f) => *file = Some(f),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot open the request log");
                            return;
                        }
                    }
                }
                file.as_mut()
                    .map_or(Ok(()), |f| f.write_all(line.as_bytes()))
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "writing a request log line failed");
        }
    }
}

#[derive(Debug)]
enum Remote {
    Addr(SocketAddr),
    Forwarded(Option<std::net::IpAddr>),
}

/// The request headers a template reads (cheap clones of the values).
#[derive(Default)]
struct Captured {
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    host: Option<HeaderValue>,
    /// In the order of `Settings::named_headers`.
    named: Vec<Option<HeaderValue>>,
}

impl Captured {
    fn from(h: &HeaderMap, named: &[(String, Option<header::HeaderName>)]) -> Captured {
        Captured {
            user_agent: h.get(header::USER_AGENT).cloned(),
            referer: h.get(header::REFERER).cloned(),
            host: h.get(header::HOST).cloned(),
            named: named
                .iter()
                .map(|(_, n)| n.as_ref().and_then(|n| h.get(n)).cloned())
                .collect(),
        }
    }
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A request's entry, written when its response is over.
pub(crate) struct Pending {
    logger: Arc<RequestLogger>,
    settings: Arc<Settings>,
    start: Instant,
    method: Method,
    uri: Uri,
    version: Version,
    headers: Captured,
    content_length: i64,
    trace_id: [u8; 32],
    remote: Remote,
}

impl Pending {
    /// Wraps the response so the line is written when its body ends (or is dropped).
    pub(crate) fn wrap(self, resp: Response<Body>) -> Response<Body> {
        let code = resp.status().as_u16();
        resp.map(|inner| {
            boxed(LoggedBody {
                inner,
                done: Some(Done {
                    pending: self,
                    code,
                    size: 0,
                }),
            })
        })
    }
}

/// The entry with the response's values, rendered on drop.
struct Done {
    pending: Pending,
    code: u16,
    size: u64,
}

thread_local! {
    /// The line being rendered; its capacity is kept from one request to the next.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Drop for Done {
    fn drop(&mut self) {
        let latency = self.pending.start.elapsed().as_secs_f64();
        let view = View {
            done: self,
            latency,
        };
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            self.pending.settings.template.render(&view, &mut line);
            line.push('\n');
            self.pending.logger.write_line(&line);
        });
    }
}

struct View<'a> {
    done: &'a Done,
    latency: f64,
}

impl Fields for View<'_> {
    fn write(&self, field: &Field, out: &mut String) {
        use std::fmt::Write as _;
        let p = &self.done.pending;
        let h = &p.headers;
        match field {
            Field::Method => out.push_str(p.method.as_str()),
            Field::RequestUri => match p.uri.path_and_query() {
                Some(pq) => out.push_str(pq.as_str()),
                None => out.push_str(&p.uri.to_string()),
            },
            Field::Url => out.push_str(p.uri.path_and_query().map_or("/", |pq| pq.as_str())),
            Field::UrlPath => out.push_str(p.uri.path()),
            Field::UrlRawQuery => out.push_str(p.uri.query().unwrap_or("")),
            Field::Proto => out.push_str(proto(p.version)),
            Field::ProtoMajor => out.push(proto(p.version).as_bytes()[5] as char),
            Field::ProtoMinor => out.push(
                proto(p.version)
                    .as_bytes()
                    .get(7)
                    .map_or('0', |b| *b as char),
            ),
            Field::Host => match p.uri.authority() {
                Some(a) => out.push_str(a.as_str()),
                None => out.push_str(text(h.host.as_ref())),
            },
            Field::RemoteAddr => match p.remote {
                Remote::Addr(a) => {
                    let _ = write!(out, "{a}");
                }
                Remote::Forwarded(Some(ip)) => {
                    let _ = write!(out, "{ip}");
                }
                Remote::Forwarded(None) => {}
            },
            Field::ContentLength => {
                let _ = write!(out, "{}", p.content_length);
            }
            Field::UserAgent => out.push_str(text(h.user_agent.as_ref())),
            Field::Referer => out.push_str(text(h.referer.as_ref())),
            Field::Header(name) => {
                let at = p.settings.named_headers.iter().position(|(n, _)| n == name);
                out.push_str(text(at.and_then(|i| h.named.get(i)?.as_ref())));
            }
            Field::Code => {
                let _ = write!(out, "{}", self.done.code);
            }
            Field::Size => {
                let _ = write!(out, "{}", self.done.size);
            }
            Field::Latency => write_go_float(self.latency, out),
            Field::RevisionName => out.push_str(&p.logger.revision.name),
            Field::RevisionNamespace => out.push_str(&p.logger.revision.namespace),
            Field::RevisionService => out.push_str(&p.logger.revision.service),
            Field::RevisionConfiguration => out.push_str(&p.logger.revision.configuration),
            Field::PodName => out.push_str(&p.logger.revision.pod_name),
            Field::PodIp => out.push_str(&p.logger.revision.pod_ip),
            Field::TraceId => out.push_str(std::str::from_utf8(&p.trace_id).unwrap_or("")),
        }
    }
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Go's `Request.ContentLength`: the declared length, 0 without a body, -1 when unknown
/// (chunked).
fn content_length(h: &HeaderMap) -> i64 {
    if let Some(n) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        return n;
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        -1
    } else {
        0
    }
}

/// The trace ID of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else all zeros (as
/// an unsampled span's).
fn trace_id(h: &HeaderMap) -> [u8; 32] {
    let mut id = [b'0'; 32];
    let found = h
        .get("traceparent")
        .map(HeaderValue::as_bytes)
        .and_then(|v| v.get(3..35).filter(|_| v.get(2) == Some(&b'-')))
        .filter(|t| t.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if let Some(t) = found {
        id.copy_from_slice(t);
    }
    id
}

pin_project_lite::pin_project! {
    /// A response body that counts what it passes on and writes the entry when dropped.
    struct LoggedBody {
        #[pin]
        inner: Body,
        done: Option<Done>,
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let (Some(data), Some(done)) = (frame.data_ref(), this.done.as_mut())
        {
            done.size += data.len() as u64;
        }
        if let Poll::Ready(None) = &polled {
            // The end: the entry is complete now, not whenever the body is dropped.
            this.done.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use rouse_api::config::observability::{
        ENABLE_PROBE_REQUEST_LOG, ENABLE_REQUEST_LOG, REQUEST_LOG_TEMPLATE,
    };
    use rouse_http::full;

    fn config(pairs: &[(&str, &str)]) -> ObservabilityConfig {
        let data = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ObservabilityConfig::from_data(&data).unwrap()
    }

    fn logger(dir: &std::path::Path, switch: &Arc<RequestLogSwitch>) -> Arc<RequestLogger> {
        Arc::new(RequestLogger::new(
            switch.clone(),
            LogOutput::File(dir.join("i.log")),
            RevisionInfo {
                name: "hello-00001".into(),
                pod_ip: "127.0.0.1".into(),
                ..RevisionInfo::default()
            },
        ))
    }

    fn request(probe: bool) -> Request<()> {
        let mut b = Request::builder()
            .method("POST")
            .uri("/path?q=%22x%22")
            .header("user-agent", "tester \"1\"")
            .header("content-length", "5")
            .header("x-id", "abc")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("x-forwarded-for", "203.0.113.9, 198.51.100.7");
        if probe {
            b = b.header("k-network-probe", "queue");
        }
        b.body(()).unwrap()
    }

    async fn serve_one(log: &Arc<RequestLogger>, probe: bool) {
        if let Some(p) = log.begin(&request(probe), probe) {
            let resp = p.wrap(Response::new(full("hello world")));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello world");
        }
    }

    #[tokio::test]
    async fn one_line_per_request_with_the_templates_fields() {
        let dir = tempfile::tempdir().unwrap();
        let switch = RequestLogSwitch::new();
        let log = logger(dir.path(), &switch);
        serve_one(&log, false).await;
        assert!(!dir.path().join("i.log").exists(), "off: nothing written");

        switch.set(&config(&[
            (ENABLE_REQUEST_LOG, "true"),
            (
                REQUEST_LOG_TEMPLATE,
                r#"{{.Request.Method}} {{js .Request.RequestURI}} {{.Request.ContentLength}} {{.Response.Code}} {{.Response.Size}} "{{js .Request.UserAgent}}" {{.Request.RemoteAddr}} {{.Request.Header.Get "X-Id"}} {{.Revision.Name}} {{.TraceID}} {{.Request.Proto}}"#,
            ),
        ]));
        serve_one(&log, false).await;
        serve_one(&log, true).await;
        let text = std::fs::read_to_string(dir.path().join("i.log")).unwrap();
        assert_eq!(
            text,
            "POST /path?q\\u003D%22x%22 5 200 11 \"tester \\\"1\\\"\" 198.51.100.7 abc hello-00001 0af7651916cd43dd8448eb211c80319c HTTP/1.1\n",
            "one line, and none for the probe"
        );

        switch.set(&config(&[
            (ENABLE_PROBE_REQUEST_LOG, "true"),
            (REQUEST_LOG_TEMPLATE, "{{.Response.Latency}}"),
        ]));
        serve_one(&log, false).await;
        serve_one(&log, true).await;
        let text = std::fs::read_to_string(dir.path().join("i.log")).unwrap();
        let last = text.lines().nth(1).unwrap();
        assert!(last.parse::<f64>().is_ok_and(|l| l >= 0.0), "{text}");
        assert_eq!(text.lines().count(), 2, "only the probe this time: {text}");
    }

    #[tokio::test]
    async fn a_response_cut_off_is_logged_with_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let switch = RequestLogSwitch::new();
        switch.set(&config(&[
            (ENABLE_REQUEST_LOG, "true"),
            (
                REQUEST_LOG_TEMPLATE,
                "{{.Response.Code}} {{.Response.Size}}",
            ),
        ]));
        let log = logger(dir.path(), &switch);
        let p = log.begin(&request(false), false).unwrap();
        let resp = p.wrap(Response::new(full("partial")));
        drop(resp);
        let text = std::fs::read_to_string(dir.path().join("i.log")).unwrap();
        assert_eq!(text, "200 0\n");
    }

    #[test]
    fn trace_ids_and_content_lengths() {
        let mut h = HeaderMap::new();
        assert_eq!(&trace_id(&h), b"00000000000000000000000000000000");
        h.insert("traceparent", HeaderValue::from_static("00-XYZ-1-01"));
        assert_eq!(&trace_id(&h), b"00000000000000000000000000000000");
        assert_eq!(content_length(&h), 0);
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(content_length(&h), -1);
    }
}
