//! A revision's endpoints and the spread of requests across them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rouse_http::RemoteHop;
use rouse_queue::InFlight;

/// One endpoint and the requests the gateway has in flight to it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub addr: SocketAddr,
    pub in_flight: InFlight,
    /// Kept-alive raw connections to it when it is another process, for the fast path and
    /// the general path's bodiless requests; dropped with the endpoint.
    pub hop: Arc<RemoteHop>,
}

/// A revision's endpoints.
#[derive(Debug)]
pub(crate) struct Backends {
    pub list: Vec<Backend>,
    next: AtomicUsize,
}

impl Backends {
    /// The endpoints `addrs`, keeping the in-flight counts of those already in `old` (so a
    /// swap does not forget which endpoints are busy).
    pub fn new(addrs: Vec<SocketAddr>, old: Option<&Backends>) -> Self {
        let list = addrs
            .into_iter()
            .map(|addr| {
                let kept = old.and_then(|o| o.list.iter().find(|b| b.addr == addr));
                Backend {
                    addr,
                    in_flight: kept.map(|b| b.in_flight.clone()).unwrap_or_default(),
                    hop: kept.map_or_else(|| Arc::new(RemoteHop::new(addr)), |b| b.hop.clone()),
                }
            })
            .collect();
        Backends {
            list,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint with the fewest requests in flight; ties go round robin.
    pub fn pick(&self) -> Option<&Backend> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = &self.list[start];
        for k in 1..n {
            let b = &self.list[(start + k) % n];
            if b.in_flight.get() < best.in_flight.get() {
                best = b;
            }
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    #[test]
    fn ties_rotate_and_busy_endpoints_are_avoided() {
        let b = Backends::new(vec![addr(1), addr(2), addr(3)], None);
        let picks: Vec<u16> = (0..6).map(|_| b.pick().unwrap().addr.port()).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
        let _busy1 = b.list[0].in_flight.start();
        let _busy2 = b.list[1].in_flight.start();
        assert!((0..5).all(|_| b.pick().unwrap().addr.port() == 3));
        // A swap keeps the counts of endpoints that stay.
        let swapped = Backends::new(vec![addr(2), addr(4)], Some(&b));
        assert_eq!(swapped.list[0].in_flight.get(), 1);
        assert!((0..5).all(|_| swapped.pick().unwrap().addr.port() == 4));
        assert!(Backends::new(vec![], None).pick().is_none());
    }
}
