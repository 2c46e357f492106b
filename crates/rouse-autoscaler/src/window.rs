//! Bucketed metric windows (reference §3.2): one bucket per second in a ring, averaged either
//! linearly over the valid part of the window or with exponentially decaying weights.
//!
//! Times are `tokio::time::Instant`s; bucket `i` holds what was recorded during second
//! `[epoch + i s, epoch + (i+1) s)`, where `epoch` is fixed when the window is made.

use std::time::Duration;

use rouse_api::autoscaling::annotations::AggregationAlgorithm;
use tokio::time::Instant;

/// Sum of weights the weighted-exponential average must reach.
const WEIGHT_PRECISION: f64 = 0.9999;
/// Smallest decay factor: large windows would otherwise be near-plain averages.
const MIN_ALPHA: f64 = 0.2;

/// The decay factor α for a window of `buckets` seconds: max(1 − (1 − 0.9999)^(1/n), 0.2).
pub fn weighted_alpha(buckets: usize) -> f64 {
    (1.0 - (1.0 - WEIGHT_PRECISION).powf(1.0 / buckets as f64)).max(MIN_ALPHA)
}

/// Rounds to 6 decimals, as Knative's linear average does.
pub fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// A window of per-second buckets.
#[derive(Debug, Clone)]
pub struct BucketWindow {
    algorithm: AggregationAlgorithm,
    epoch: Instant,
    /// Number of one-second buckets.
    len: usize,
    /// The ring of buckets; empty until the first write, so a revision that never gets
    /// traffic (one at zero) holds no buckets.
    buckets: Vec<f64>,
    /// Sum of every bucket, including ones outside the valid part.
    total: f64,
    /// Bucket index of the first write since the window last started over.
    first_write: Option<u64>,
    /// Bucket index of the latest write.
    last_write: Option<u64>,
    alpha: f64,
}

impl BucketWindow {
    /// A window of `window` (rounded up to whole seconds, at least one) counting seconds from
    /// `epoch`; every time passed later must be at or after `epoch`.
    pub fn new(window: Duration, algorithm: AggregationAlgorithm, epoch: Instant) -> Self {
        let n = bucket_count(window);
        Self {
            algorithm,
            epoch,
            len: n,
            buckets: Vec::new(),
            total: 0.0,
            first_write: None,
            last_write: None,
            alpha: weighted_alpha(n),
        }
    }

    /// Number of one-second buckets.
    pub fn buckets(&self) -> usize {
        self.len
    }

    /// The decay factor used by the weighted-exponential average.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    fn index(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_secs()
    }

    fn slot(&self, i: u64) -> usize {
        (i % self.len as u64) as usize
    }

    /// Adds `value` to the bucket of second `now`. Skipped seconds between the last write and
    /// this one become zeros; after a whole window of silence the window starts over; a value
    /// older than a window before the last write is dropped.
    pub fn record(&mut self, now: Instant, value: f64) {
        let b = self.index(now);
        let n = self.len as u64;
        match self.last_write {
            None => self.start_over(b),
            Some(l) if b > l => {
                if b - l >= n {
                    self.start_over(b);
                } else {
                    for i in l + 1..=b {
                        let s = self.slot(i);
                        self.total -= self.buckets[s];
                        self.buckets[s] = 0.0;
                    }
                    self.last_write = Some(b);
                }
            }
            Some(l) if b < l => {
                if b + n <= l {
                    return;
                }
                if self.first_write.is_none_or(|f| f > b) {
                    self.first_write = Some(b);
                }
            }
            Some(_) => {}
        }
        let s = self.slot(b);
        self.buckets[s] += value;
        self.total += value;
    }

    fn start_over(&mut self, b: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0.0; self.len];
        } else {
            self.buckets.iter_mut().for_each(|v| *v = 0.0);
        }
        self.total = 0.0;
        self.first_write = Some(b);
        self.last_write = Some(b);
    }

    /// True when nothing was written for more than a whole window before `now`.
    pub fn is_empty(&self, now: Instant) -> bool {
        match self.last_write {
            None => true,
            Some(l) => self.index(now).saturating_sub(l) > self.len as u64,
        }
    }

    /// The window's average at `now`, by the configured algorithm.
    pub fn average(&self, now: Instant) -> f64 {
        match self.algorithm {
            AggregationAlgorithm::Linear => self.linear_average(now),
            AggregationAlgorithm::WeightedExponential => self.weighted_average(now),
        }
    }

    /// Linear average over the valid buckets of `(now − window, now]`: a partial window counts
    /// only since the first write, trailing silent seconds are left out, gaps inside count as
    /// zeros, and a window with no write at all gives 0. Rounded to 6 decimals.
    pub fn linear_average(&self, now: Instant) -> f64 {
        let (Some(first), Some(last)) = (self.first_write, self.last_write) else {
            return 0.0;
        };
        let n = self.len as u64;
        let now_i = self.index(now);
        let since_first = (last - first + 1) as f64;
        if now_i <= last {
            let valid = since_first.min(n as f64);
            return round6(self.total / valid);
        }
        let d = now_i - last;
        if d >= n {
            return 0.0;
        }
        // Buckets after the last write still hold values from a window ago: drop them.
        let mut sum = self.total;
        for i in last + 1..=now_i {
            sum -= self.buckets[self.slot(i)];
        }
        let valid = since_first.min((n - d) as f64);
        round6(sum / valid)
    }

    /// Weighted-exponential average: Σ α(1−α)^i · bucket[now − i]; silent trailing seconds
    /// count as zeros. Not rounded.
    pub fn weighted_average(&self, now: Instant) -> f64 {
        let Some(last) = self.last_write else {
            return 0.0;
        };
        if self.is_empty(now) {
            return 0.0;
        }
        let n = self.len as u64;
        let mut weight = self.alpha;
        let mut count = n;
        let now_i = self.index(now);
        if now_i > last {
            let zeros = now_i - last;
            weight *= (1.0 - self.alpha).powi(zeros as i32);
            count -= zeros;
        }
        let mut sum = 0.0;
        for i in 0..count {
            // Walk back from the last write, wrapping around the ring.
            let idx = (last + n - (i % n)) % n;
            sum += self.buckets[idx as usize] * weight;
            weight *= 1.0 - self.alpha;
        }
        sum
    }

    /// Changes the window length, keeping the most recent buckets that still fit (Knative's
    /// resize). With no write within the old window at `now`, the window starts empty.
    pub fn resize(&mut self, window: Duration, now: Instant) {
        let new_n = bucket_count(window);
        let old_n = self.len;
        if new_n == old_n {
            return;
        }
        let mut fresh = Vec::new();
        let mut total = 0.0;
        match self.last_write {
            Some(last) if self.index(now).saturating_sub(last) <= old_n as u64 => {
                fresh = vec![0.0; new_n];
                let mut t = last;
                for _ in 0..new_n.min(old_n) {
                    let v = self.buckets[(t % old_n as u64) as usize];
                    fresh[(t % new_n as u64) as usize] = v;
                    total += v;
                    if t == 0 {
                        break;
                    }
                    t -= 1;
                }
                self.first_write = Some(last.saturating_sub(old_n as u64 - 1));
            }
            _ => {
                self.first_write = None;
                self.last_write = None;
            }
        }
        self.len = new_n;
        self.buckets = fresh;
        self.total = total;
        self.alpha = weighted_alpha(new_n);
    }
}

fn bucket_count(window: Duration) -> usize {
    (window.as_nanos().div_ceil(1_000_000_000) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn linear(n: u64) -> (BucketWindow, Instant) {
        let t0 = Instant::now();
        (
            BucketWindow::new(Duration::from_secs(n), AggregationAlgorithm::Linear, t0),
            t0,
        )
    }

    #[test]
    fn alpha_matches_knative() {
        // 60 buckets: 1 − 0.0001^(1/60) ≈ 0.142, below the 0.2 floor.
        assert_eq!(weighted_alpha(60), 0.2);
        // 6 buckets: 1 − 0.0001^(1/6) = 1 − 0.2154… ≈ 0.7846.
        assert!((weighted_alpha(6) - 0.784_556_7).abs() < 1e-6);
        assert!((weighted_alpha(1) - 0.9999).abs() < 1e-12);
    }

    #[test]
    fn buckets_are_allocated_at_the_first_write() {
        let (mut w, t0) = linear(60);
        assert!(w.buckets.is_empty());
        assert_eq!(w.average(secs(t0, 5)), 0.0);
        w.resize(Duration::from_secs(30), secs(t0, 5));
        assert!(w.buckets.is_empty());
        assert_eq!(w.buckets(), 30);
        w.record(secs(t0, 6), 3.0);
        assert_eq!(w.buckets.len(), 30);
        assert_eq!(w.average(secs(t0, 6)), 3.0);
    }

    #[test]
    fn bucket_counts_round_up() {
        let t0 = Instant::now();
        let w = |d| BucketWindow::new(d, AggregationAlgorithm::Linear, t0).buckets();
        assert_eq!(w(Duration::from_secs(60)), 60);
        assert_eq!(w(Duration::from_millis(6500)), 7);
        assert_eq!(w(Duration::ZERO), 1);
    }

    #[test]
    fn empty_window_averages_zero() {
        let (w, t0) = linear(6);
        assert_eq!(w.average(secs(t0, 10)), 0.0);
        assert!(w.is_empty(secs(t0, 10)));
    }

    #[test]
    fn partial_window_averages_since_first_write() {
        let (mut w, t0) = linear(60);
        // Data only for seconds 10, 11, 12: the average is over 3 buckets, not 60.
        for s in 10..=12 {
            w.record(secs(t0, s), 30.0);
        }
        assert_eq!(w.linear_average(secs(t0, 12)), 30.0);
        w.record(secs(t0, 13), 70.0);
        assert_eq!(w.linear_average(secs(t0, 13)), 40.0);
    }

    #[test]
    fn full_window_averages_over_all_buckets() {
        let (mut w, t0) = linear(6);
        for s in 1..=10 {
            w.record(secs(t0, s), s as f64);
        }
        // Window (4, 10] holds 5..=10 → 45 / 6 = 7.5.
        assert_eq!(w.linear_average(secs(t0, 10)), 7.5);
    }

    #[test]
    fn gaps_inside_count_as_zeros() {
        let (mut w, t0) = linear(6);
        w.record(secs(t0, 1), 12.0);
        w.record(secs(t0, 4), 12.0);
        // Seconds 1..=4 are valid; 2 and 3 were never written → (12 + 0 + 0 + 12) / 4.
        assert_eq!(w.linear_average(secs(t0, 4)), 6.0);
    }

    #[test]
    fn trailing_silence_is_excluded() {
        let (mut w, t0) = linear(6);
        for s in 1..=6 {
            w.record(secs(t0, s), 6.0 * s as f64);
        }
        // At 6 the window is 1..=6: (6+12+…+36)/6 = 21.
        assert_eq!(w.linear_average(secs(t0, 6)), 21.0);
        // At 8, seconds 7–8 had no write: the average covers 3..=6 only (2 trailing seconds
        // dropped, and the values of seconds 1–2 that fell out are subtracted).
        assert_eq!(
            w.linear_average(secs(t0, 8)),
            (18.0 + 24.0 + 30.0 + 36.0) / 4.0
        );
        // A whole window of silence gives 0.
        assert_eq!(w.linear_average(secs(t0, 12)), 0.0);
        assert!(!w.is_empty(secs(t0, 12)));
        assert!(w.is_empty(secs(t0, 13)));
    }

    #[test]
    fn starts_over_after_a_window_of_silence() {
        let (mut w, t0) = linear(6);
        for s in 0..=5 {
            w.record(secs(t0, s), 100.0);
        }
        // 6 s of silence (6..=11), then a write at 11: the old data is gone, and the valid
        // part is measured from 11 again.
        w.record(secs(t0, 11), 10.0);
        assert_eq!(w.linear_average(secs(t0, 11)), 10.0);
        w.record(secs(t0, 12), 20.0);
        assert_eq!(w.linear_average(secs(t0, 12)), 15.0);
    }

    #[test]
    fn same_second_values_sum() {
        let (mut w, t0) = linear(6);
        w.record(secs(t0, 3), 5.0);
        w.record(secs(t0, 3) + Duration::from_millis(400), 7.0);
        assert_eq!(w.linear_average(secs(t0, 3)), 12.0);
    }

    #[test]
    fn late_values_land_in_their_bucket_or_are_dropped() {
        let (mut w, t0) = linear(6);
        w.record(secs(t0, 10), 6.0);
        // A late value for second 8 is within the window: it moves the first write back.
        w.record(secs(t0, 8), 6.0);
        assert_eq!(w.linear_average(secs(t0, 10)), 4.0);
        // One from second 4 is a whole window older than the last write: dropped.
        w.record(secs(t0, 4), 600.0);
        assert_eq!(w.linear_average(secs(t0, 10)), 4.0);
    }

    #[test]
    fn linear_rounds_to_six_decimals() {
        let (mut w, t0) = linear(3);
        w.record(secs(t0, 0), 1.0);
        w.record(secs(t0, 1), 0.0);
        w.record(secs(t0, 2), 0.0);
        assert_eq!(w.linear_average(secs(t0, 2)), 0.333_333);
    }

    #[test]
    fn weighted_exponential_average() {
        let t0 = Instant::now();
        let mut w = BucketWindow::new(
            Duration::from_secs(6),
            AggregationAlgorithm::WeightedExponential,
            t0,
        );
        let a = w.alpha();
        w.record(secs(t0, 1), 10.0);
        w.record(secs(t0, 2), 20.0);
        // Newest first: 20·α + 10·α(1−α).
        let want = 20.0 * a + 10.0 * a * (1.0 - a);
        assert!((w.average(secs(t0, 2)) - want).abs() < 1e-12);
        // Two silent seconds: weights skip ahead by (1−α)².
        let want2 = want * (1.0 - a).powi(2);
        assert!((w.average(secs(t0, 4)) - want2).abs() < 1e-12);
        // After more than a window of silence: 0.
        assert_eq!(w.average(secs(t0, 9)), 0.0);
    }

    #[test]
    fn weighted_sixty_second_window_uses_alpha_point_two() {
        let t0 = Instant::now();
        let mut w = BucketWindow::new(
            Duration::from_secs(60),
            AggregationAlgorithm::WeightedExponential,
            t0,
        );
        for s in 0..60 {
            w.record(secs(t0, s), 100.0);
        }
        // Σ_{i<60} 0.2·0.8^i·100 = 100·(1 − 0.8^60).
        let want = 100.0 * (1.0 - 0.8f64.powi(60));
        assert!((w.average(secs(t0, 59)) - want).abs() < 1e-9);
    }

    #[test]
    fn resize_keeps_recent_buckets() {
        let (mut w, t0) = linear(10);
        for s in 0..10 {
            w.record(secs(t0, s), s as f64);
        }
        w.resize(Duration::from_secs(4), secs(t0, 9));
        assert_eq!(w.buckets(), 4);
        // Keeps 6..=9.
        assert_eq!(w.linear_average(secs(t0, 9)), 7.5);
    }
}
