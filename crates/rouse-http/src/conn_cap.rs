//! A cap on a server loop's client connections, and a descriptor reserve.
//!
//! Every connection is registered with whether a request is in progress on it and since when
//! it has been idle. At the cap ([`ConnectionLimit::max`]) a new connection is let in by
//! closing the idlest idle one (its server loop is told to stop: an idle connection closes at
//! once, one that became busy meanwhile finishes its request first); with none idle the new
//! one is refused with a 503 at once. Independently, a connection accepted on a descriptor
//! within [`ConnectionLimit::descriptor_reserve`] of the open-file limit is refused (the
//! kernel hands out the lowest free number, so every one below is in use), and the idlest
//! one closed, so the rest of the process (an API, new instances) keeps descriptors to work
//! with. When the limit is hit anyway (`EMFILE` on accept), a spare descriptor is given up
//! to accept and refuse the waiting client instead of leaving it hanging.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// How many client connections a server loop holds, and how close to the open-file limit it
/// may go. `Default`: no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// The most client connections at once; `None`: no cap.
    pub max: Option<usize>,
    /// The process's open-file limit; `None`: descriptors are not watched.
    pub descriptor_limit: Option<u64>,
    /// Descriptors left to the rest of the process: a connection accepted on a descriptor
    /// this close to the limit is refused.
    pub descriptor_reserve: u64,
}

impl ConnectionLimit {
    fn is_off(&self) -> bool {
        self.max.is_none() && self.descriptor_limit.is_none()
    }
}

/// The answer a refused client gets.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n";

/// One server loop's connections.
pub(super) struct Admission {
    limit: ConnectionLimit,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<Registry>,
    /// Given up to accept (and refuse) a client when descriptors ran out.
    spare: Mutex<Option<File>>,
}

#[derive(Default)]
struct Registry {
    slots: HashMap<u64, Arc<Slot>>,
    /// Slots told to close that have not closed yet.
    closing: usize,
}

/// One connection's state, as the cap sees it.
pub(super) struct Slot {
    /// Requests in progress (the fast path counts itself while it is not waiting idle).
    active: AtomicUsize,
    /// When it last became idle, in microseconds after the admission's epoch.
    idle_since: AtomicU64,
    /// Told to close to make room.
    evicted: AtomicBool,
    /// The connection's own stop signal, when registered.
    stop: Option<watch::Sender<bool>>,
    epoch: Instant,
}

impl Slot {
    fn new(epoch: Instant, stop: Option<watch::Sender<bool>>) -> Slot {
        Slot {
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(epoch.elapsed().as_micros() as u64),
            evicted: AtomicBool::new(false),
            stop,
            epoch,
        }
    }

    /// A slot no cap tracks.
    #[cfg(test)]
    pub(super) fn detached() -> Arc<Slot> {
        Arc::new(Slot::new(Instant::now(), None))
    }

    /// A request is in progress until the guard drops.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.begin();
        Busy(self.clone())
    }

    /// The connection waits, idle since `since` (a time its caller read already), until
    /// the guard drops.
    pub(super) fn idle(&self, since: Instant) -> Idle<'_> {
        self.end_at(since);
        Idle(self)
    }

    pub(super) fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn end(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_from(Instant::now());
        }
    }

    fn end_at(&self, at: Instant) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_from(at);
        }
    }

    fn idle_from(&self, at: Instant) {
        let since = at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.idle_since.store(since, Ordering::Relaxed);
    }
}

/// See [`Slot::busy`].
pub(super) struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// See [`Slot::idle`].
pub(super) struct Idle<'a>(&'a Slot);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.begin();
    }
}

/// A connection's place: its slot and its stop signal; leaves the registry when dropped.
pub(super) struct Ticket {
    admission: Option<Arc<Admission>>,
    id: u64,
    pub(super) slot: Arc<Slot>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(adm) = &self.admission {
            let mut reg = adm.lock();
            if reg.slots.remove(&self.id).is_some() && self.slot.evicted.load(Ordering::Relaxed) {
                reg.closing -= 1;
            }
        }
    }
}

impl Admission {
    pub(super) fn new(limit: ConnectionLimit) -> Arc<Admission> {
        let spare = (!limit.is_off())
            .then(|| File::open("/dev/null").ok())
            .flatten();
        Arc::new(Admission {
            limit,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Registry::default()),
            spare: Mutex::new(spare),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a new connection in (its ticket), or refuses it (`None`: answered 503 and to be
    /// dropped). `stop` is the server loop's own stop signal, for connections not tracked.
    pub(super) fn admit(
        self: &Arc<Self>,
        stream: &TcpStream,
        stop: &watch::Receiver<bool>,
    ) -> Option<Ticket> {
        if self.limit.is_off() {
            return Some(Ticket {
                admission: None,
                id: 0,
                slot: Arc::new(Slot::new(self.epoch, None)),
                stop: stop.clone(),
            });
        }
        let fd = stream.as_raw_fd() as u64;
        let short_of_fds = self
            .limit
            .descriptor_limit
            .is_some_and(|l| fd + self.limit.descriptor_reserve >= l);
        let mut reg = self.lock();
        let open = reg.slots.len() - reg.closing;
        let full = self.limit.max.is_some_and(|max| open >= max);
        if short_of_fds || full {
            let made_room = self.close_idlest(&mut reg);
            if short_of_fds || !made_room {
                drop(reg);
                tracing::debug!(fd, open, short_of_fds, "refusing a client connection");
                refuse(stream);
                return None;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(*stop.borrow());
        let slot = Arc::new(Slot::new(self.epoch, Some(tx)));
        reg.slots.insert(id, slot.clone());
        Some(Ticket {
            admission: Some(self.clone()),
            id,
            slot,
            stop: rx,
        })
    }

    /// Tells the connection idle the longest to close; false if none is idle.
    fn close_idlest(&self, reg: &mut Registry) -> bool {
        let idlest = reg
            .slots
            .values()
            .filter(|s| s.active.load(Ordering::Relaxed) == 0 && !s.evicted.load(Ordering::Relaxed))
            .min_by_key(|s| s.idle_since.load(Ordering::Relaxed));
        let Some(slot) = idlest else {
            return false;
        };
        slot.evicted.store(true, Ordering::Relaxed);
        if let Some(stop) = &slot.stop {
            stop.send_replace(true);
        }
        reg.closing += 1;
        true
    }

    /// Tells every tracked connection the server is stopping.
    pub(super) fn stop_all(&self) {
        for slot in self.lock().slots.values() {
            if let Some(stop) = &slot.stop {
                stop.send_replace(true);
            }
        }
    }

    /// After an accept failed with `error`: when it is `EMFILE`/`ENFILE` (out of
    /// descriptors), frees the spare descriptor to take the waiting client and refuse it,
    /// closes the idlest connection, and takes the spare back. Returns whether a client was
    /// refused.
    pub(super) fn out_of_descriptors(
        &self,
        error: &std::io::Error,
        listener: &TcpListener,
    ) -> bool {
        // Linux's ENFILE and EMFILE.
        const OUT_OF_DESCRIPTORS: [i32; 2] = [23, 24];
        let out = error
            .raw_os_error()
            .is_some_and(|n| OUT_OF_DESCRIPTORS.contains(&n));
        if !out || self.limit.is_off() {
            return false;
        }
        self.close_idlest(&mut self.lock());
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        drop(spare.take());
        // Once, without waiting: the server loop's own accept waits for the next client.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let refused = match listener.poll_accept(&mut cx) {
            std::task::Poll::Ready(Ok((stream, _))) => {
                refuse(&stream);
                true
            }
            _ => false,
        };
        *spare = File::open("/dev/null").ok();
        refused
    }
}

/// Answers 503 without waiting (a fresh socket's send buffer takes it whole) and leaves the
/// caller to close.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(REFUSED);
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A client socket and the server's end of it.
    async fn pair(listener: &TcpListener) -> (std::net::TcpStream, TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn refused(mut client: std::net::TcpStream) -> String {
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        answer
    }

    #[tokio::test]
    async fn at_the_cap_an_idle_connection_makes_room_and_busy_ones_do_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let adm = Admission::new(ConnectionLimit {
            max: Some(2),
            ..ConnectionLimit::default()
        });
        let (_stop_tx, stop) = watch::channel(false);
        let (_c1, s1) = pair(&listener).await;
        let t1 = adm.admit(&s1, &stop).unwrap();
        let (_c2, s2) = pair(&listener).await;
        let t2 = adm.admit(&s2, &stop).unwrap();
        let busy2 = t2.slot.busy();

        // Full: the idle one is told to stop, the new one let in.
        let (_c3, s3) = pair(&listener).await;
        let t3 = adm.admit(&s3, &stop).unwrap();
        assert!(*t1.stop.borrow() && !*t2.stop.borrow() && !*t3.stop.borrow());
        drop(t1);
        let busy3 = t3.slot.busy();

        // Full and nothing idle: refused at once with a 503.
        let (c4, s4) = pair(&listener).await;
        assert!(adm.admit(&s4, &stop).is_none());
        drop(s4);
        assert!(refused(c4).starts_with("HTTP/1.1 503"));

        // A request ends: that connection is idle, and goes for the next one.
        drop(busy2);
        let (_c5, s5) = pair(&listener).await;
        let t5 = adm.admit(&s5, &stop).unwrap();
        assert!(*t2.stop.borrow() && !*t3.stop.borrow());
        drop((busy3, t2, t3, t5));
        assert!(adm.lock().slots.is_empty() && adm.lock().closing == 0);
    }

    #[tokio::test]
    async fn a_connection_too_close_to_the_descriptor_limit_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ca, sa) = pair(&listener).await;
        let (cb, sb) = pair(&listener).await;
        // The one on the higher descriptor lands within the reserve, the other does not.
        let ((_c_low, low), (c_high, high)) = if sa.as_raw_fd() < sb.as_raw_fd() {
            ((ca, sa), (cb, sb))
        } else {
            ((cb, sb), (ca, sa))
        };
        let adm = Admission::new(ConnectionLimit {
            max: None,
            descriptor_limit: Some(high.as_raw_fd() as u64 + 1),
            descriptor_reserve: 1,
        });
        let (_stop_tx, stop) = watch::channel(false);
        let t_low = adm.admit(&low, &stop).unwrap();
        assert!(adm.admit(&high, &stop).is_none());
        drop(high);
        assert!(refused(c_high).starts_with("HTTP/1.1 503"));
        // The idlest was closed to give descriptors back.
        assert!(*t_low.stop.borrow());
    }
}
