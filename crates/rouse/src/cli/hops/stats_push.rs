//! The activator's end of its stat stream to the autoscaler ([`rouse_autoscaler::push`]): one
//! long `POST` carrying a line per second with the activator's load per revision and a "poke"
//! line the moment a request finds a revision at zero. The stream reconnects on its own, with
//! backoff, whatever ended it (the autoscaler restarted, a follower answered, the network
//! broke); messages wait in a bounded queue meanwhile, and stats that grew stale waiting are
//! dropped rather than reported late.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rouse_autoscaler::push::{self, Message, RevisionLoad, RevisionRef};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Messages waiting for the stream (a few seconds' worth while it reconnects).
const QUEUE: usize = 256;
/// Lines written to a connection but not yet taken by it: more means the autoscaler stopped
/// reading, and the connection is dropped for a new one.
const IN_FLIGHT: usize = 64;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a sent poke is kept to be sent again if its connection breaks.
const POKE_REPLAY: Duration = Duration::from_secs(2);

/// `rouse activator`'s autoscaler flags.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The autoscaler to push stats and pokes to (the leading `rouse controller`), as
    /// `http://HOST:PORT`; in the cluster `http://autoscaler.knative-serving.svc:8080`.
    /// Without it nothing is pushed.
    #[arg(
        long = "autoscaler",
        env = "ROUSE_AUTOSCALER_URL",
        value_name = "URL",
        requires = "token_file"
    )]
    pub url: Option<String>,
    /// The file holding the stream's bearer token (the Secret `knative-serving/
    /// autoscaler-token`, mounted), read again at every connection.
    #[arg(
        long = "autoscaler-token-file",
        env = "ROUSE_AUTOSCALER_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
}

/// Where the stream goes.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    authority: String,
    token_file: PathBuf,
}

impl Target {
    /// The target the flags name, if any.
    pub fn from_args(args: &PushArgs) -> anyhow::Result<Option<Target>> {
        let (Some(url), Some(token_file)) = (&args.url, &args.token_file) else {
            return Ok(None);
        };
        Target::new(url, token_file.clone()).map(Some)
    }

    /// `url` is `http://HOST[:PORT][/]`.
    pub fn new(url: &str, token_file: PathBuf) -> anyhow::Result<Target> {
        let bad = |why: &str| anyhow::anyhow!("--autoscaler {url:?}: {why}");
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("must start with http://"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("must have no path (http://HOST:PORT)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        Ok(Target {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.to_string(),
            token_file,
        })
    }
}

/// The activator's handle on its stream: queues messages, never blocks.
pub struct StatsPush {
    tx: mpsc::Sender<(Instant, Message)>,
}

impl StatsPush {
    /// Starts pushing to `target` (on the current runtime) until the handle is dropped.
    pub fn start(target: Target) -> Arc<StatsPush> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(target, rx));
        Arc::new(StatsPush { tx })
    }

    /// A request found the revision with no ready instance: tells the autoscaler at once.
    pub fn poke(&self, namespace: &str, revision: &str) {
        self.send(Message::Poke(RevisionRef {
            namespace: namespace.to_string(),
            revision: revision.to_string(),
        }));
    }

    /// The last second's load (sent even when empty: it keeps the stream alive).
    pub fn report(&self, loads: Vec<RevisionLoad>) {
        self.send(Message::Stats(loads));
    }

    fn send(&self, msg: Message) {
        if self.tx.try_send((Instant::now(), msg)).is_err() {
            tracing::debug!("the autoscaler stream's queue is full; a message is dropped");
        }
    }
}

/// Sends the activator's load every second (Knative's report interval).
pub async fn report_every_second(activator: Arc<rouse_activator::Activator>, push: Arc<StatsPush>) {
    let mut every = tokio::time::interval(push::REPORT_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let loads = activator
            .take_stats()
            .into_iter()
            .map(|s| RevisionLoad {
                namespace: s.namespace,
                revision: s.revision,
                average_concurrency: s.average_concurrency,
                request_count: s.request_count,
            })
            .collect();
        push.report(loads);
    }
}

/// Connects, streams, and connects again, until every handle is gone.
async fn run(target: Target, mut rx: mpsc::Receiver<(Instant, Message)>) {
    let mut backoff = BACKOFF_START;
    let mut last_reason = String::new();
    let mut recent_pokes = VecDeque::new();
    loop {
        let started = Instant::now();
        let reason = match stream(&target, &mut rx, &mut recent_pokes).await {
            Ended::Shutdown => return,
            Ended::Broken(reason) => reason,
        };
        // A stream that lasted was a good one: start the backoff again.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_START;
        }
        if reason != last_reason {
            tracing::warn!(autoscaler = %target.authority, reason = %reason, "the stream to the autoscaler ended; reconnecting");
            last_reason = reason;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Ended {
    Shutdown,
    Broken(String),
}

/// One connection: the request, then every message as a line, until something ends it. A
/// line written just before a connection broke may be lost with it: pokes younger than
/// [`POKE_REPLAY`] are sent again on the next connection (a repeated poke is harmless).
async fn stream(
    target: &Target,
    rx: &mut mpsc::Receiver<(Instant, Message)>,
    recent_pokes: &mut VecDeque<(Instant, Message)>,
) -> Ended {
    let tcp = match connect(target).await {
        Ok(c) => c,
        Err(e) => return Ended::Broken(format!("{e:#}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(c) => c,
        Err(e) => return Ended::Broken(format!("the connection failed: {e}")),
    };
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let (lines, mut pending) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        pending
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    }));
    let token = match std::fs::read_to_string(&target.token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            return Ended::Broken(format!(
                "reading the token {}: {e}",
                target.token_file.display()
            ));
        }
    };
    let req = Request::post(push::PATH)
        .header(header::HOST, &target.authority)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, push::CONTENT_TYPE)
        .body(body);
    let req = match req {
        Ok(r) => r,
        Err(e) => return Ended::Broken(format!("the request: {e}")),
    };
    // Nothing is taken from the queue until the autoscaler accepts the stream.
    let resp = match tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(req)).await {
        Err(_) => return Ended::Broken("the autoscaler did not answer".into()),
        Ok(Err(e)) => return Ended::Broken(format!("the connection failed: {e}")),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    if status != http::StatusCode::OK {
        let text = Limited::new(resp.into_body(), 1024)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Ended::Broken(format!("the autoscaler answered {status}: {}", text.trim()));
    }
    tracing::info!(autoscaler = %target.authority, "streaming stats to the autoscaler");
    // The answer's body stays open while the stream lives and ends with the reason.
    let mut answer = resp.into_body();
    let mut why = Vec::new();
    recent_pokes.retain(|(at, _)| at.elapsed() < POKE_REPLAY);
    for (_, poke) in recent_pokes.iter() {
        let _ = lines.try_send(Bytes::from(poke.encode()));
    }
    loop {
        tokio::select! {
            f = answer.frame() => match f {
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        let room = 1024usize.saturating_sub(why.len());
                        why.extend_from_slice(&d[..d.len().min(room)]);
                    }
                }
                Some(Err(e)) => return Ended::Broken(format!("the connection failed: {e}")),
                None => {
                    let why = String::from_utf8_lossy(&why).trim().to_string();
                    return Ended::Broken(format!("the autoscaler ended the stream: {why}"));
                }
            },
            m = rx.recv() => {
                let Some((at, msg)) = m else { return Ended::Shutdown };
                // Stats that waited through a reconnect would be recorded in the wrong second.
                if matches!(msg, Message::Stats(_)) && at.elapsed() > 2 * push::REPORT_INTERVAL {
                    continue;
                }
                if lines.try_send(Bytes::from(msg.encode())).is_err() {
                    return Ended::Broken("the autoscaler stopped reading".into());
                }
                if matches!(msg, Message::Poke(_)) {
                    recent_pokes.retain(|(at, _)| at.elapsed() < POKE_REPLAY);
                    if recent_pokes.len() < QUEUE {
                        recent_pokes.push_back((at, msg));
                    }
                }
            }
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<TcpStream> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {}: timed out", target.authority))?
    .with_context(|| format!("connecting to {}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
