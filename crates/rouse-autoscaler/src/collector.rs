//! Metric collection (reference §3.1): per-second [`Stat`]s from queue-proxies (scraped) and
//! activators (pushed) are summed into one revision's windows, with the requests the
//! activator proxied taken out of the queue-proxy figures; plus the scrape sample size and the
//! extrapolation of a sample to every instance.

use std::time::Duration;

use rouse_api::autoscaling::annotations::{AggregationAlgorithm, RevisionScaling};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::decider::Metric;
use crate::window::BucketWindow;

/// Pod name on the synthetic stat a scrape produces for the whole revision.
pub const SCRAPER_POD_NAME: &str = "service-scraper";

/// One second of load as seen by one queue-proxy or one activator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The reporting instance (or activator).
    pub pod_name: String,
    /// Time-weighted average of in-flight requests over the second.
    pub average_concurrent_requests: f64,
    /// The part of the above that came through the activator.
    pub average_proxied_concurrent_requests: f64,
    /// Requests that arrived during the second.
    pub request_count: f64,
    /// The part of the above that came through the activator.
    pub proxied_request_count: f64,
    /// Seconds since the reporter started.
    pub process_uptime: f64,
    /// When the stat was taken; `None` means "when it is recorded".
    #[serde(skip)]
    pub timestamp: Option<Instant>,
}

impl Stat {
    /// Adds the load fields of `other` into `self`.
    pub fn add(&mut self, other: &Stat) {
        self.average_concurrent_requests += other.average_concurrent_requests;
        self.average_proxied_concurrent_requests += other.average_proxied_concurrent_requests;
        self.request_count += other.request_count;
        self.proxied_request_count += other.proxied_request_count;
    }
}

/// The windows were not written for more than a stable window and instances are being
/// scraped: the decider must keep its last decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no data available")]
pub struct NoData;

/// One revision's metric windows: stable and panic, for concurrency and rps.
#[derive(Debug, Clone)]
pub struct Collection {
    concurrency_stable: BucketWindow,
    concurrency_panic: BucketWindow,
    rps_stable: BucketWindow,
    rps_panic: BucketWindow,
    scrape_target: bool,
}

impl Collection {
    /// New empty windows counting seconds from `epoch`. `scrape_target` is false when the
    /// queue-proxies are not scraped (TBC = −1): only activator stats arrive then, and empty
    /// windows read as zero load instead of "no data".
    pub fn new(
        stable: Duration,
        panic: Duration,
        algorithm: AggregationAlgorithm,
        scrape_target: bool,
        epoch: Instant,
    ) -> Self {
        let w = |d| BucketWindow::new(d, algorithm, epoch);
        Self {
            concurrency_stable: w(stable),
            concurrency_panic: w(panic),
            rps_stable: w(stable),
            rps_panic: w(panic),
            scrape_target,
        }
    }

    /// Windows for a revision's settings (scraping unless TBC is −1).
    pub fn for_revision(scaling: &RevisionScaling, epoch: Instant) -> Self {
        Self::new(
            scaling.window,
            scaling.panic_window(),
            scaling.metric_aggregation_algorithm,
            scaling.target_burst_capacity != -1.0,
            epoch,
        )
    }

    /// Whether queue-proxies are scraped for this revision.
    pub fn scrape_target(&self) -> bool {
        self.scrape_target
    }

    /// Changes whether queue-proxies are scraped.
    pub fn set_scrape_target(&mut self, scrape: bool) {
        self.scrape_target = scrape;
    }

    /// Records one stat at its timestamp (or `now`): concurrency minus proxied concurrency
    /// and requests minus proxied requests, since the activator reports those itself. Stats of
    /// the same second add up to the revision's total.
    pub fn record(&mut self, now: Instant, stat: &Stat) {
        let at = stat.timestamp.unwrap_or(now);
        let concurrency =
            stat.average_concurrent_requests - stat.average_proxied_concurrent_requests;
        let rps = stat.request_count - stat.proxied_request_count;
        self.concurrency_stable.record(at, concurrency);
        self.concurrency_panic.record(at, concurrency);
        self.rps_stable.record(at, rps);
        self.rps_panic.record(at, rps);
    }

    /// The stable and panic averages of `metric` at `now`, or [`NoData`].
    pub fn stable_and_panic(&self, metric: Metric, now: Instant) -> Result<(f64, f64), NoData> {
        let (stable, panic) = self.windows(metric);
        if stable.is_empty(now) && self.scrape_target {
            return Err(NoData);
        }
        Ok((stable.average(now), panic.average(now)))
    }

    /// The averages whatever the data state (for display).
    pub fn averages(&self, metric: Metric, now: Instant) -> (f64, f64) {
        let (stable, panic) = self.windows(metric);
        (stable.average(now), panic.average(now))
    }

    fn windows(&self, metric: Metric) -> (&BucketWindow, &BucketWindow) {
        match metric {
            Metric::Concurrency => (&self.concurrency_stable, &self.concurrency_panic),
            Metric::Rps => (&self.rps_stable, &self.rps_panic),
        }
    }

    /// Resizes the windows (a config change), keeping recent data.
    pub fn resize(&mut self, stable: Duration, panic: Duration, now: Instant) {
        self.concurrency_stable.resize(stable, now);
        self.rps_stable.resize(stable, now);
        self.concurrency_panic.resize(panic, now);
        self.rps_panic.resize(panic, now);
    }
}

/// How many of `population` instances to scrape each second: all of them up to 3, else
/// ceil(N·X / (N + X − 1)) with X = 1.96² · 100 / 5² = 15.3664 (N=10 → 7, N=100 → 14).
pub fn sample_size(population: usize) -> usize {
    const X: f64 = 1.96 * 1.96 * 100.0 / (5.0 * 5.0);
    if population <= 3 {
        return population;
    }
    let n = population as f64;
    (n * X / (n + X - 1.0)).ceil() as usize
}

/// The order to try instances in when scraping: instances older than the stable window
/// first, then young ones. Only the group the sample is drawn from is shuffled: the old ones
/// when there are enough of them, else the young ones.
pub fn scrape_order<T>(mut old: Vec<T>, mut young: Vec<T>, rng: &mut fastrand::Rng) -> Vec<T> {
    let n = sample_size(old.len() + young.len());
    if old.len() < n {
        rng.shuffle(&mut young);
    } else {
        rng.shuffle(&mut old);
    }
    old.append(&mut young);
    old
}

/// One stat for the whole revision from a sample: each load field summed over the sample,
/// divided by the sample size and multiplied by the instance count.
pub fn extrapolate(sample: &[Stat], sample_size: usize, population: usize) -> Stat {
    let mut s = Stat {
        pod_name: SCRAPER_POD_NAME.to_string(),
        ..Stat::default()
    };
    for st in sample {
        s.add(st);
    }
    if sample_size == 0 {
        return s;
    }
    let f = population as f64 / sample_size as f64;
    s.average_concurrent_requests *= f;
    s.average_proxied_concurrent_requests *= f;
    s.request_count *= f;
    s.proxied_request_count *= f;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sizes_match_knative() {
        let want = [(0, 0), (1, 1), (3, 3), (4, 4), (5, 4), (10, 7), (100, 14)];
        for (n, s) in want {
            assert_eq!(sample_size(n), s, "N={n}");
        }
        // Approaches X from below: never more than 16.
        assert_eq!(sample_size(1_000_000), 16);
    }

    #[test]
    fn extrapolates_to_every_instance() {
        let st = |c: f64, r: f64| Stat {
            average_concurrent_requests: c,
            request_count: r,
            average_proxied_concurrent_requests: 1.0,
            ..Stat::default()
        };
        // 7 of 10 scraped: Σ × 10 / 7.
        let sample: Vec<Stat> = (0..7).map(|_| st(7.0, 14.0)).collect();
        let s = extrapolate(&sample, 7, 10);
        assert_eq!(s.pod_name, SCRAPER_POD_NAME);
        assert!((s.average_concurrent_requests - 70.0).abs() < 1e-9);
        assert!((s.request_count - 140.0).abs() < 1e-9);
        assert!((s.average_proxied_concurrent_requests - 10.0).abs() < 1e-9);
    }

    #[test]
    fn scrape_order_prefers_old_instances() {
        let mut rng = fastrand::Rng::with_seed(7);
        // 10 old, 5 young: sample 9 ≤ 10 old, so old (shuffled) come first, young untouched.
        let old: Vec<u32> = (0..10).collect();
        let young: Vec<u32> = (100..105).collect();
        let order = scrape_order(old, young.clone(), &mut rng);
        let mut first: Vec<u32> = order[..10].to_vec();
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(&order[10..], &young[..]);
        // 2 old, 8 young: sample 7 > 2, so young are shuffled behind the old ones.
        let order = scrape_order(vec![1, 2], (10..18).collect(), &mut rng);
        assert_eq!(&order[..2], &[1, 2]);
        let mut rest = order[2..].to_vec();
        rest.sort();
        assert_eq!(rest, (10..18).collect::<Vec<_>>());
    }

    #[test]
    fn records_sum_sources_and_subtract_proxied() {
        let t0 = Instant::now();
        let mut c = Collection::new(
            Duration::from_secs(60),
            Duration::from_secs(6),
            AggregationAlgorithm::Linear,
            true,
            t0,
        );
        let now = t0 + Duration::from_secs(1);
        // Queue-proxy total 10 of which 4 came via the activator; activator reports its 4.
        let qp = Stat {
            pod_name: "rev-1".into(),
            average_concurrent_requests: 10.0,
            average_proxied_concurrent_requests: 4.0,
            request_count: 20.0,
            proxied_request_count: 5.0,
            ..Stat::default()
        };
        let act = Stat {
            pod_name: "activator".into(),
            average_concurrent_requests: 4.0,
            request_count: 5.0,
            ..Stat::default()
        };
        c.record(now, &qp);
        c.record(now, &act);
        assert_eq!(
            c.stable_and_panic(Metric::Concurrency, now),
            Ok((10.0, 10.0))
        );
        assert_eq!(c.stable_and_panic(Metric::Rps, now), Ok((20.0, 20.0)));
    }

    #[test]
    fn no_data_only_with_a_scrape_target() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100);
        let mk = |scrape| {
            Collection::new(
                Duration::from_secs(60),
                Duration::from_secs(6),
                AggregationAlgorithm::Linear,
                scrape,
                t0,
            )
        };
        assert_eq!(
            mk(true).stable_and_panic(Metric::Concurrency, later),
            Err(NoData)
        );
        assert_eq!(
            mk(false).stable_and_panic(Metric::Concurrency, later),
            Ok((0.0, 0.0))
        );
        // Written 61 s ago: more than a stable window → no data; 60 s ago → zeros.
        let mut c = mk(true);
        c.record(
            t0,
            &Stat {
                average_concurrent_requests: 5.0,
                ..Stat::default()
            },
        );
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            c.stable_and_panic(Metric::Concurrency, at(60)),
            Ok((0.0, 0.0))
        );
        assert_eq!(c.stable_and_panic(Metric::Concurrency, at(61)), Err(NoData));
    }

    #[test]
    fn stat_timestamp_wins_over_now() {
        let t0 = Instant::now();
        let mut c = Collection::new(
            Duration::from_secs(60),
            Duration::from_secs(6),
            AggregationAlgorithm::Linear,
            true,
            t0,
        );
        let stamped = Stat {
            average_concurrent_requests: 6.0,
            timestamp: Some(t0 + Duration::from_secs(5)),
            ..Stat::default()
        };
        c.record(t0 + Duration::from_secs(9), &stamped);
        // Recorded in second 5: at 5 the panic window sees it.
        let (_, p) = c.averages(Metric::Concurrency, t0 + Duration::from_secs(5));
        assert_eq!(p, 6.0);
    }
}
