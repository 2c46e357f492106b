//! The load report the autoscaler scrapes: time-weighted average concurrency and request
//! counts over the period since the previous report.
//!
//! Every non-probe request is an "in" event when it arrives and an "out" event when it
//! completes (its response body ended or it was dropped). Between events the concurrency is
//! constant, so the average over a period is Σ concurrency × dt / Σ dt, computed exactly.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

/// One report: what a queue-proxy saw since the previous report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Time-weighted average of requests in flight (queued or in the app).
    pub average_concurrency: f64,
    /// The same, counting only requests the activator proxied (`K-Proxy-Request: activator`).
    pub average_proxied_concurrency: f64,
    /// Requests that arrived in the period (those refused with a full queue included: they
    /// are demand too).
    pub request_count: f64,
    /// Requests the activator proxied that arrived in the period.
    pub proxied_request_count: f64,
    /// Seconds since the queue-proxy started.
    pub process_uptime: f64,
}

impl QueueStats {
    /// The report in Knative's wire format: the protobuf `Stat` message the autoscaler
    /// scrapes from `:9090/metrics` (`pod_name` = 1, the averages and counts = 2–6 as doubles,
    /// `timestamp` = 7 left unset: the autoscaler stamps it). Zero fields are omitted, as
    /// proto3 does.
    pub fn to_protobuf(&self, pod_name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(pod_name.len() + 48);
        if !pod_name.is_empty() {
            out.push(1 << 3 | 2);
            push_varint(&mut out, pod_name.len() as u64);
            out.extend_from_slice(pod_name.as_bytes());
        }
        let doubles = [
            (2, self.average_concurrency),
            (3, self.average_proxied_concurrency),
            (4, self.request_count),
            (5, self.proxied_request_count),
            (6, self.process_uptime),
        ];
        for (field, v) in doubles {
            if v != 0.0 {
                out.push(field << 3 | 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }
}

/// Why a protobuf `Stat` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatDecodeError {
    /// The message ends inside a field.
    #[error("the Stat message is truncated")]
    Truncated,
    /// A field's wire type is not the one `Stat` gives it, or is unknown.
    #[error("field {field} has wire type {wire_type}, not the Stat message's")]
    WireType {
        /// The field number.
        field: u64,
        /// The wire type found.
        wire_type: u8,
    },
    /// A load figure that is negative or not a number.
    #[error("field {0} is not a finite, non-negative number")]
    Value(u64),
}

impl QueueStats {
    /// Reads Knative's protobuf `Stat` (what [`QueueStats::to_protobuf`] writes, or Knative's
    /// own queue-proxy), returning the stats and the pod name. Unknown fields are skipped, as
    /// protobuf readers do; the timestamp (7) is ignored: the scraper stamps its own time.
    pub fn from_protobuf(mut b: &[u8]) -> Result<(QueueStats, String), StatDecodeError> {
        let mut stats = QueueStats::default();
        let mut pod = String::new();
        while !b.is_empty() {
            let key = read_varint(&mut b)?;
            let (field, wire_type) = (key >> 3, (key & 7) as u8);
            match (field, wire_type) {
                (2..=6, 1) => {
                    let (v, rest) = b
                        .split_first_chunk::<8>()
                        .ok_or(StatDecodeError::Truncated)?;
                    b = rest;
                    let v = f64::from_le_bytes(*v);
                    if !v.is_finite() || v < 0.0 {
                        return Err(StatDecodeError::Value(field));
                    }
                    *match field {
                        2 => &mut stats.average_concurrency,
                        3 => &mut stats.average_proxied_concurrency,
                        4 => &mut stats.request_count,
                        5 => &mut stats.proxied_request_count,
                        _ => &mut stats.process_uptime,
                    } = v;
                }
                (1 | 7, 2) | (8.., 2) => {
                    let len = usize::try_from(read_varint(&mut b)?)
                        .map_err(|_| StatDecodeError::Truncated)?;
                    if len > b.len() {
                        return Err(StatDecodeError::Truncated);
                    }
                    if field == 1 {
                        pod = String::from_utf8_lossy(&b[..len]).into_owned();
                    }
                    b = &b[len..];
                }
                (8.., 0) => {
                    read_varint(&mut b)?;
                }
                (8.., 1) => b = b.get(8..).ok_or(StatDecodeError::Truncated)?,
                (8.., 5) => b = b.get(4..).ok_or(StatDecodeError::Truncated)?,
                _ => return Err(StatDecodeError::WireType { field, wire_type }),
            }
        }
        Ok((stats, pod))
    }
}

fn read_varint(b: &mut &[u8]) -> Result<u64, StatDecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(StatDecodeError::Truncated)?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(StatDecodeError::Truncated)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Collects in/out events and turns them into [`QueueStats`]. Clones share the same counts.
#[derive(Clone, Debug)]
pub(crate) struct Stats {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    period_start: Instant,
    /// When the concurrencies last changed (or were last folded into the sums).
    last: Instant,
    concurrency: u64,
    proxied_concurrency: u64,
    /// Σ concurrency × dt in the period, in request-seconds.
    weighted: f64,
    weighted_proxied: f64,
    requests: u64,
    proxied_requests: u64,
}

impl State {
    /// Folds the time since the last event into the sums.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.weighted += self.concurrency as f64 * dt;
        self.weighted_proxied += self.proxied_concurrency as f64 * dt;
        self.last = now;
    }
}

/// One request's "out" event, sent when dropped.
#[derive(Debug)]
pub(crate) struct StatsGuard {
    stats: Stats,
    proxied: bool,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Stats {
            inner: Arc::new(Mutex::new(State {
                started: now,
                period_start: now,
                last: now,
                concurrency: 0,
                proxied_concurrency: 0,
                weighted: 0.0,
                weighted_proxied: 0.0,
                requests: 0,
                proxied_requests: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a request's arrival; its completion is recorded when the guard drops.
    pub(crate) fn start(&self, proxied: bool) -> StatsGuard {
        let mut s = self.lock();
        s.advance(Instant::now());
        s.concurrency += 1;
        s.requests += 1;
        if proxied {
            s.proxied_concurrency += 1;
            s.proxied_requests += 1;
        }
        drop(s);
        StatsGuard {
            stats: self.clone(),
            proxied,
        }
    }

    /// The report since the previous call (or since the start), and a new period from now.
    pub(crate) fn take(&self) -> QueueStats {
        let now = Instant::now();
        let mut s = self.lock();
        s.advance(now);
        let period = now.saturating_duration_since(s.period_start).as_secs_f64();
        let (avg, avg_proxied) = if period > 0.0 {
            (s.weighted / period, s.weighted_proxied / period)
        } else {
            // Two reports at the same instant: the average over no time is the level now.
            (s.concurrency as f64, s.proxied_concurrency as f64)
        };
        let report = QueueStats {
            average_concurrency: avg,
            average_proxied_concurrency: avg_proxied,
            request_count: s.requests as f64,
            proxied_request_count: s.proxied_requests as f64,
            process_uptime: now.saturating_duration_since(s.started).as_secs_f64(),
        };
        s.period_start = now;
        s.weighted = 0.0;
        s.weighted_proxied = 0.0;
        s.requests = 0;
        s.proxied_requests = 0;
        report
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let mut s = self.stats.lock();
        s.advance(Instant::now());
        s.concurrency -= 1;
        if self.proxied {
            s.proxied_concurrency -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_stat_message_in_protobuf_wire_format() {
        let stats = QueueStats {
            average_concurrency: 1.5,
            average_proxied_concurrency: 0.0,
            request_count: 3.0,
            proxied_request_count: 0.0,
            process_uptime: 2.0,
        };
        let mut want = vec![0x0a, 3, b'p', b'o', b'd'];
        want.push(0x11);
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.push(0x21);
        want.extend_from_slice(&3.0f64.to_le_bytes());
        want.push(0x31);
        want.extend_from_slice(&2.0f64.to_le_bytes());
        assert_eq!(stats.to_protobuf("pod"), want);
        // A long name takes a multi-byte length.
        let long = "p".repeat(200);
        let bytes = QueueStats::default().to_protobuf(&long);
        assert_eq!(&bytes[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(bytes.len(), 203);
    }

    #[test]
    fn the_stat_message_reads_back_and_bad_ones_are_refused() {
        let stats = QueueStats {
            average_concurrency: 2.25,
            average_proxied_concurrency: 0.5,
            request_count: 7.0,
            proxied_request_count: 1.0,
            process_uptime: 90.0,
        };
        let long = "p".repeat(200);
        let mut bytes = stats.to_protobuf(&long);
        // A timestamp (field 7, a message) and an unknown varint field are skipped.
        bytes.extend_from_slice(&[0x3a, 2, 0x08, 0x01, 0x48, 0x96, 0x01]);
        assert_eq!(QueueStats::from_protobuf(&bytes), Ok((stats, long)));
        assert_eq!(
            QueueStats::from_protobuf(&[]),
            Ok((QueueStats::default(), String::new()))
        );
        let truncated = &stats.to_protobuf("pod")[..10];
        assert_eq!(
            QueueStats::from_protobuf(truncated),
            Err(StatDecodeError::Truncated)
        );
        // Concurrency as a varint: not Knative's Stat.
        assert_eq!(
            QueueStats::from_protobuf(&[0x10, 0x01]),
            Err(StatDecodeError::WireType {
                field: 2,
                wire_type: 0
            })
        );
        let mut negative = vec![0x11];
        negative.extend_from_slice(&(-1.0f64).to_le_bytes());
        assert_eq!(
            QueueStats::from_protobuf(&negative),
            Err(StatDecodeError::Value(2))
        );
        let mut nan = vec![0x21];
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(
            QueueStats::from_protobuf(&nan),
            Err(StatDecodeError::Value(4))
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn sleep(n: u64) {
        tokio::time::sleep(ms(n)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_for_half_the_period_averages_one_half() {
        let stats = Stats::new();
        sleep(250).await;
        let r = stats.start(false);
        sleep(500).await;
        drop(r);
        sleep(250).await;
        let s = stats.take();
        assert_eq!(s.average_concurrency, 0.5);
        assert_eq!(s.average_proxied_concurrency, 0.0);
        assert_eq!(s.request_count, 1.0);
        assert_eq!(s.proxied_request_count, 0.0);
        assert_eq!(s.process_uptime, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_add_up() {
        let stats = Stats::new();
        // 0–600 ms: a; 400–1000 ms: b. Overlap 200 ms at 2, 800 ms at 1: 1.2 request-seconds.
        let a = stats.start(false);
        sleep(400).await;
        let b = stats.start(false);
        sleep(200).await;
        drop(a);
        sleep(400).await;
        let s = stats.take();
        assert!((s.average_concurrency - 1.2).abs() < 1e-9, "{s:?}");
        assert_eq!(s.request_count, 2.0);
        // b is still in flight: the next period sees it throughout.
        sleep(1000).await;
        let s = stats.take();
        assert_eq!(s.average_concurrency, 1.0);
        assert_eq!(s.request_count, 0.0, "b arrived in the previous period");
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn proxied_requests_are_counted_apart() {
        let stats = Stats::new();
        let direct = stats.start(false);
        let proxied = stats.start(true);
        sleep(500).await;
        drop(proxied);
        sleep(500).await;
        drop(direct);
        let s = stats.take();
        assert_eq!(s.average_concurrency, 1.5);
        assert_eq!(s.average_proxied_concurrency, 0.5);
        assert_eq!(s.request_count, 2.0);
        assert_eq!(s.proxied_request_count, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn taking_resets_the_period() {
        let stats = Stats::new();
        for _ in 0..3 {
            drop(stats.start(true));
        }
        sleep(1000).await;
        let s = stats.take();
        assert_eq!((s.request_count, s.proxied_request_count), (3.0, 3.0));
        assert_eq!(s.average_concurrency, 0.0, "instant requests weigh nothing");
        sleep(1000).await;
        let s = stats.take();
        assert_eq!(s.request_count, 0.0);
        assert_eq!(s.proxied_request_count, 0.0);
        assert_eq!(s.average_concurrency, 0.0);
        assert_eq!(s.process_uptime, 2.0);
        // Nothing elapsed since the last take: the level now.
        let held = stats.start(false);
        let s = stats.take();
        assert_eq!(s.average_concurrency, 1.0);
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn periods_of_different_lengths_are_weighted_by_their_own_length() {
        let stats = Stats::new();
        let r = stats.start(false);
        sleep(100).await;
        drop(r);
        sleep(300).await;
        // 100 ms busy out of 400 ms.
        let avg = stats.take().average_concurrency;
        assert!((avg - 0.25).abs() < 1e-9, "{avg}");
    }
}
