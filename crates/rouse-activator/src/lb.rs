//! Knative's load-balancing policies, chosen by containerConcurrency (reference §4.3).

/// What a policy needs to know about a backend.
pub(crate) trait Candidate {
    /// Passed its probe and not failed since.
    fn healthy(&self) -> bool;
    /// Requests this activator has in flight to it.
    fn in_flight(&self) -> u32;
}

/// How the next request is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// CC 0: two distinct random backends, the one with fewer in flight (tie: coin flip).
    PowerOfTwo,
    /// CC 1–3: the first backend in address order with a free slot.
    FirstAvailable(u32),
    /// CC ≥ 4: round robin from after the last pick, skipping full backends.
    RoundRobin(u32),
}

impl Policy {
    /// The policy for a revision's containerConcurrency.
    pub(crate) fn for_concurrency(cc: u32) -> Policy {
        match cc {
            0 => Policy::PowerOfTwo,
            1..=3 => Policy::FirstAvailable(cc),
            _ => Policy::RoundRobin(cc),
        }
    }

    /// The index of the backend to send the next request to, or `None` when no healthy
    /// backend has a free slot. `backends` are in address order; `next` is the round-robin
    /// cursor the policy keeps between calls.
    pub(crate) fn pick<C: Candidate>(&self, backends: &[C], next: &mut usize) -> Option<usize> {
        match *self {
            Policy::PowerOfTwo => power_of_two(backends),
            Policy::FirstAvailable(cc) => backends
                .iter()
                .position(|b| b.healthy() && b.in_flight() < cc),
            Policy::RoundRobin(cc) => {
                let n = backends.len();
                let found = (0..n)
                    .map(|k| (*next + k) % n)
                    .find(|&i| backends[i].healthy() && backends[i].in_flight() < cc)?;
                *next = found + 1;
                Some(found)
            }
        }
    }
}

fn power_of_two<C: Candidate>(backends: &[C]) -> Option<usize> {
    // The healthy ones counted and walked again rather than collected: no allocation per
    // request.
    let healthy = || (0..backends.len()).filter(|&i| backends[i].healthy());
    match healthy().count() {
        0 => None,
        1 => healthy().next(),
        n => {
            let a = fastrand::usize(0..n);
            // A second, distinct choice: shift by 1..n.
            let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
            let (a, b) = (healthy().nth(a)?, healthy().nth(b)?);
            let (la, lb) = (backends[a].in_flight(), backends[b].in_flight());
            Some(match la.cmp(&lb) {
                std::cmp::Ordering::Less => a,
                std::cmp::Ordering::Greater => b,
                std::cmp::Ordering::Equal if fastrand::bool() => a,
                std::cmp::Ordering::Equal => b,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct B(bool, u32);
    impl Candidate for B {
        fn healthy(&self) -> bool {
            self.0
        }
        fn in_flight(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn policy_follows_container_concurrency() {
        assert_eq!(Policy::for_concurrency(0), Policy::PowerOfTwo);
        assert_eq!(Policy::for_concurrency(1), Policy::FirstAvailable(1));
        assert_eq!(Policy::for_concurrency(3), Policy::FirstAvailable(3));
        assert_eq!(Policy::for_concurrency(4), Policy::RoundRobin(4));
    }

    #[test]
    fn first_available_takes_the_first_free_in_order() {
        let p = Policy::FirstAvailable(2);
        let mut next = 0;
        let bs = [B(false, 0), B(true, 2), B(true, 1), B(true, 0)];
        assert_eq!(p.pick(&bs, &mut next), Some(2));
        let full = [B(true, 2), B(false, 0)];
        assert_eq!(p.pick(&full, &mut next), None);
    }

    #[test]
    fn round_robin_rotates_and_skips_full_or_unhealthy() {
        let p = Policy::RoundRobin(4);
        let mut next = 0;
        let bs = [B(true, 0), B(true, 4), B(false, 0), B(true, 3)];
        let picks: Vec<_> = (0..4).map(|_| p.pick(&bs, &mut next).unwrap()).collect();
        assert_eq!(picks, vec![0, 3, 0, 3]);
        assert_eq!(p.pick(&[B(true, 4)], &mut next), None);
        assert_eq!(p.pick::<B>(&[], &mut next), None);
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded_and_ignores_unhealthy() {
        let p = Policy::PowerOfTwo;
        let mut next = 0;
        assert_eq!(p.pick::<B>(&[], &mut next), None);
        assert_eq!(p.pick(&[B(false, 0)], &mut next), None);
        assert_eq!(p.pick(&[B(false, 0), B(true, 99)], &mut next), Some(1));
        // With two healthy backends both are always compared: the idle one wins.
        let bs = [B(true, 5), B(false, 0), B(true, 0)];
        assert!((0..100).all(|_| p.pick(&bs, &mut next) == Some(2)));
        // Ties spread over both.
        let tie = [B(true, 1), B(true, 1)];
        let zeros = (0..200)
            .filter(|_| p.pick(&tie, &mut next) == Some(0))
            .count();
        assert!((40..=160).contains(&zeros), "{zeros}");
        // Among many, the busiest is never picked (it loses every comparison).
        let many = [B(true, 1), B(true, 1), B(true, 9), B(true, 1)];
        assert!((0..200).all(|_| p.pick(&many, &mut next) != Some(2)));
    }
}
