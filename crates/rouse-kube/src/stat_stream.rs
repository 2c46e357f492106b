//! The autoscaler's end of the activators' stat stream ([`rouse_autoscaler::push`]): every
//! `rouse activator` holds one long `POST` open to the leading controller and writes a line per
//! second with its load per revision, and a "poke" line the moment a request finds a revision
//! at zero. [`ActivatorStats`] collects them for the autoscaler (the stats through
//! [`crate::networking::KubeNetworking`]'s `take_activator_stats`, the pokes as the
//! controller's poke channel); [`serve`] accepts the streams.
//!
//! Who may push: a caller presenting the bearer token kept in the Secret
//! `knative-serving/autoscaler-token` ([`keep_token`] creates it when missing and follows
//! changes; the activators mount it). Only the leader accepts streams: a follower answers 503
//! and a leader that loses its Lease ends its streams with 503, so activators reconnect and
//! find the new leader, which publishes its pod address as the endpoint of the `autoscaler`
//! Service ([`advertise`]).

use crate::lock;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rouse_autoscaler::push::{self, Message};
use rouse_controller::autoscaling::RevisionId;
use rouse_controller::networking::ActivatorLoad;
use rouse_http::{Body, boxed, text_response};
use rouse_store::StoreError;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::apply;
use crate::install::{AUTOSCALER_PORT, AUTOSCALER_SERVICE, NAMESPACE};

/// The Secret holding the stream's bearer token, in `knative-serving`.
pub const TOKEN_SECRET: &str = "autoscaler-token";
/// The token's key in the Secret (and its file name where the Secret is mounted).
pub const TOKEN_KEY: &str = "token";
/// Loads buffered between two of the autoscaler's reads before new ones are dropped.
const MAX_BUFFERED: usize = 100_000;
/// How often the token's Secret is read again.
const TOKEN_REFRESH: Duration = Duration::from_secs(30);

/// What the activators pushed: loads since the autoscaler last read them, and pokes.
#[derive(Default)]
pub struct ActivatorStats {
    loads: Mutex<Vec<ActivatorLoad>>,
    pokes: Mutex<Option<mpsc::UnboundedSender<RevisionId>>>,
    dropping: std::sync::atomic::AtomicBool,
}

impl ActivatorStats {
    /// The loads pushed since the last call.
    pub fn take(&self) -> Vec<ActivatorLoad> {
        self.dropping
            .store(false, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut *lock(&self.loads))
    }

    /// Starts a term of leadership: forgets loads left from before and returns the channel
    /// the pokes go to from now on (the previous one is closed).
    pub fn begin_term(&self) -> mpsc::UnboundedReceiver<RevisionId> {
        lock(&self.loads).clear();
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.pokes) = Some(tx);
        rx
    }

    /// Records one message.
    pub fn record(&self, msg: Message) {
        match msg {
            Message::Poke(r) => {
                if let Some(tx) = lock(&self.pokes).as_ref() {
                    let _ = tx.send((r.namespace, r.revision));
                }
            }
            Message::Stats(loads) => {
                let mut buf = lock(&self.loads);
                for l in loads {
                    if buf.len() >= MAX_BUFFERED {
                        // Nobody is reading (the autoscaler stalled): keep memory bounded.
                        if !self
                            .dropping
                            .swap(true, std::sync::atomic::Ordering::Relaxed)
                        {
                            tracing::warn!("activator stats are not being read; dropping them");
                        }
                        return;
                    }
                    buf.push(ActivatorLoad {
                        namespace: l.namespace,
                        revision: l.revision,
                        average_concurrency: l.average_concurrency,
                        request_count: l.request_count,
                    });
                }
            }
        }
    }
}

/// The bearer token streams must present; empty until known (every stream is refused then).
#[derive(Default)]
pub struct StreamToken(RwLock<String>);

impl StreamToken {
    /// A token known from the start.
    pub fn new(token: impl Into<String>) -> StreamToken {
        StreamToken(RwLock::new(token.into()))
    }

    /// Replaces the token (streams already open stay open).
    pub fn set(&self, token: String) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn is_set(&self) -> bool {
        !self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Whether `presented` is the token, compared in constant time.
    fn accepts(&self, presented: &str) -> bool {
        let token = self.0.read().unwrap_or_else(|p| p.into_inner());
        let (a, b) = (token.as_bytes(), presented.as_bytes());
        !a.is_empty()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// The stream endpoint's state.
pub struct StreamEnd {
    /// Where pushed stats and pokes go.
    pub stats: Arc<ActivatorStats>,
    /// The token callers must present.
    pub token: Arc<StreamToken>,
    /// Whether this replica leads: only the leader accepts streams.
    pub leading: watch::Receiver<bool>,
}

/// Serves the stream endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    end: Arc<StreamEnd>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let make = |_remote: SocketAddr| {
        let end = end.clone();
        service_fn(move |req: Request<Incoming>| {
            let end = end.clone();
            async move { Ok::<_, Infallible>(stream(end, req).await) }
        })
    };
    rouse_http::serve(listener, make, shutdown).await;
}

/// One activator's stream: checked (refusals answer at once, before any line is read), then
/// accepted with a 200 whose body stays open while the lines are read, and carries one line
/// saying why the stream ended: the activator closed it, it went silent, a bad line, or this
/// replica stopped leading. An activator sends nothing before the 200, so no message is lost
/// to a refused stream.
async fn stream(end: Arc<StreamEnd>, req: Request<Incoming>) -> http::Response<Body> {
    if req.uri().path() != push::PATH {
        return text_response(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::POST {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "POST a stream of stats");
    }
    if !end.token.is_set() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the autoscaler has not read its token yet",
        );
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|t| end.token.accepts(t)) {
        return text_response(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <the autoscaler-token Secret's token> is required",
        );
    }
    if !*end.leading.borrow() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not the leading autoscaler",
        );
    }
    let (ended, why) = oneshot::channel::<String>();
    let body = req.into_body();
    tokio::spawn(async move {
        let _ = ended.send(read_lines(&end, body).await);
    });
    let outcome = futures_util::stream::once(async move {
        let mut why = why.await.unwrap_or_default();
        why.push('\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(why)))
    });
    let mut resp = http::Response::new(boxed(StreamBody::new(outcome)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads and records the stream's lines; returns why it ended.
async fn read_lines(end: &StreamEnd, mut body: Incoming) -> String {
    let mut leading = end.leading.clone();
    let mut line: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(push::IDLE_LIMIT, body.frame()) => f,
            _ = leading.wait_for(|l| !*l) => return "no longer the leading autoscaler".into(),
        };
        let mut data = match frame {
            Err(_) => return format!("silent for {:?}", push::IDLE_LIMIT),
            Ok(None) => return "closed by the activator".into(),
            Ok(Some(Err(e))) => return format!("reading the stream: {e}"),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            let (part, complete) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            if line.len() + part.len() > push::MAX_LINE {
                return format!("bad line: longer than {} bytes", push::MAX_LINE);
            }
            line.extend_from_slice(part);
            let used = part.len() + usize::from(complete);
            data.advance(used);
            if complete {
                match Message::decode(&line) {
                    Ok(msg) => end.stats.record(msg),
                    Err(e) => return format!("bad line: {e}"),
                }
                line.clear();
            }
        }
    }
}

/// Reads the token from its Secret, creating the Secret with a fresh random token when it
/// does not exist (the first replica to start makes it; a racing one reads the winner's).
pub async fn ensure_token(client: &kube::Client) -> Result<String, StoreError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let what = format!("Secret {NAMESPACE}/{TOKEN_SECRET}");
    let read = |s: Secret| -> Result<String, StoreError> {
        s.data
            .as_ref()
            .and_then(|d| d.get(TOKEN_KEY))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| StoreError::Invalid(format!("{what}: data.{TOKEN_KEY} is empty")))
    };
    match api.get_opt(TOKEN_SECRET).await {
        Ok(Some(s)) => return read(s),
        Ok(None) => {}
        Err(e) => return Err(StoreError::Backend(format!("reading {what}: {e}"))),
    }
    let token = random_token().map_err(|e| StoreError::Backend(format!("random token: {e}")))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some([("app.kubernetes.io/part-of".to_string(), "rouse".to_string())].into()),
            ..ObjectMeta::default()
        },
        string_data: Some([(TOKEN_KEY.to_string(), token.clone())].into()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(token),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get(TOKEN_SECRET).await {
            Ok(s) => read(s),
            Err(e) => Err(StoreError::Backend(format!("reading {what}: {e}"))),
        },
        Err(e) => Err(StoreError::Backend(format!("creating {what}: {e}"))),
    }
}

/// 32 random bytes from the kernel, as hex.
fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Keeps `token` equal to the Secret's (made when missing), reading it every 30 s, so a
/// rotated token (the Secret edited or deleted) is taken up. Never ends.
pub async fn keep_token(client: kube::Client, token: Arc<StreamToken>) {
    let mut last_error = String::new();
    loop {
        match ensure_token(&client).await {
            Ok(t) => {
                token.set(t);
                last_error.clear();
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(error = %text, "cannot read the activator stream's token; retrying");
                    last_error = text;
                }
            }
        }
        let wait = if token.is_set() {
            TOKEN_REFRESH
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(wait).await;
    }
}

/// The EndpointSlice of the `autoscaler` Service (which has no selector): this replica's pod
/// address, written when it becomes the leader, so activators reach the leader.
pub fn leader_endpoints(ip: IpAddr, pod: Option<&str>) -> EndpointSlice {
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(AUTOSCALER_SERVICE.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(
                [
                    ("kubernetes.io/service-name", AUTOSCALER_SERVICE),
                    (
                        "endpointslice.kubernetes.io/managed-by",
                        "rouse.knative.dev",
                    ),
                    ("app.kubernetes.io/part-of", "rouse"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        address_type: family.into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            target_ref: pod.map(|p| k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                name: Some(p.into()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            }),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(AUTOSCALER_PORT)),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// Publishes this replica as the `autoscaler` Service's endpoint.
pub async fn advertise(
    client: &kube::Client,
    ip: IpAddr,
    pod: Option<&str>,
) -> Result<(), StoreError> {
    apply(client, &leader_endpoints(ip, pod)).await.map(|_| ())
}
