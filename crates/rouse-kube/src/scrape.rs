//! Scraping a revision's queue-proxies over the network, as Knative's autoscaler does
//! (reference §3.1): `GET http://{podIP}:9090/metrics` asking for the protobuf `Stat`; beyond
//! three ready pods only a sample is read (Knative's sample size,
//! [`rouse_autoscaler::collector::sample_size`]), pods older than the stable window first;
//! the sample's sum is extrapolated to every ready pod. A pod that fails or does not answer
//! within the timeout is replaced by the next one in line; when the pods run out before the
//! sample is complete the second records nothing, since a short sample would misstate the
//! load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rouse_autoscaler::Stat;
use rouse_autoscaler::collector::{extrapolate, sample_size, scrape_order};
use rouse_queue::QueueStats;
use tokio::net::TcpStream;

/// How long one pod's scrape may take (Knative's scrape client timeout).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest stats answer read: a `Stat` is about a hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// One ready pod to scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The pod's name (for messages).
    pub pod: String,
    /// Its queue-proxy's stats address, `{podIP}:9090`.
    pub addr: SocketAddr,
    /// Up for longer than the stable window: its figures cover a whole window, so the
    /// sample prefers it.
    pub old: bool,
}

/// Why a revision's scrape recorded nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// Fewer pods answered than the sample needs.
    #[error("{got} of the {wanted} pods the sample needs answered (last failure: {last})")]
    Incomplete {
        /// Pods that answered.
        got: usize,
        /// The sample size.
        wanted: usize,
        /// The last pod's failure.
        last: String,
    },
}

/// Reads one queue-proxy's stats: a fresh connection (as Knative's scraper, no keep-alive),
/// the protobuf `Stat`, all within `timeout`.
pub async fn scrape_pod(addr: SocketAddr, timeout: Duration) -> Result<QueueStats, String> {
    match tokio::time::timeout(timeout, exchange(addr)).await {
        Ok(r) => r.map_err(|e| format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
    }
}

async fn exchange(addr: SocketAddr) -> Result<QueueStats, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends with the exchange: aborted when this function returns, however it returns.
    let conn = AbortOnDrop(tokio::spawn(conn));
    let req = http::Request::get("/metrics")
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "application/protobuf")
        .header(header::USER_AGENT, "rouse-autoscaler")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    drop(conn);
    QueueStats::from_protobuf(&body)
        .map(|(stats, _pod)| stats)
        .map_err(|e| e.to_string())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Scrapes a revision's ready pods: `Ok(None)` without any, else one report for all of them
/// (the sample's sum extrapolated; uptime the sample's longest).
pub async fn scrape_revision(
    targets: Vec<Target>,
    timeout: Duration,
    rng: &mut fastrand::Rng,
) -> Result<Option<QueueStats>, ScrapeError> {
    let population = targets.len();
    if population == 0 {
        return Ok(None);
    }
    let wanted = sample_size(population);
    let (old, young): (Vec<Target>, Vec<Target>) = targets.into_iter().partition(|t| t.old);
    let order = scrape_order(old, young, rng);
    // `wanted` workers, each taking the next pod in line until one answers.
    let next = AtomicUsize::new(0);
    let last_failure = std::sync::Mutex::new(String::new());
    let worker = || async {
        loop {
            let t = order.get(next.fetch_add(1, Ordering::Relaxed))?;
            match scrape_pod(t.addr, timeout).await {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::debug!(pod = %t.pod, error = %e, "scrape failed; trying the next pod");
                    *last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        format!("pod {}: {e}", t.pod);
                }
            }
        }
    };
    let sample: Vec<QueueStats> = futures_util::future::join_all((0..wanted).map(|_| worker()))
        .await
        .into_iter()
        .flatten()
        .collect();
    if sample.len() < wanted {
        return Err(ScrapeError::Incomplete {
            got: sample.len(),
            wanted,
            last: last_failure.into_inner().unwrap_or_else(|p| p.into_inner()),
        });
    }
    let stats: Vec<Stat> = sample.iter().map(to_stat).collect();
    let all = extrapolate(&stats, wanted, population);
    Ok(Some(QueueStats {
        average_concurrency: all.average_concurrent_requests,
        average_proxied_concurrency: all.average_proxied_concurrent_requests,
        request_count: all.request_count,
        proxied_request_count: all.proxied_request_count,
        process_uptime: sample.iter().map(|s| s.process_uptime).fold(0.0, f64::max),
    }))
}

fn to_stat(q: &QueueStats) -> Stat {
    Stat {
        average_concurrent_requests: q.average_concurrency,
        average_proxied_concurrent_requests: q.average_proxied_concurrency,
        request_count: q.request_count,
        proxied_request_count: q.proxied_request_count,
        process_uptime: q.process_uptime,
        ..Stat::default()
    }
}
