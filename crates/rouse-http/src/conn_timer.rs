//! A timer that lives as long as a client connection, for deadlines that mostly move later:
//! the next idle timeout, the next request's timeout. Moving the deadline later costs
//! nothing (the armed sleep is left alone and, if it fires first, is re-armed once for the
//! deadline then current); only an earlier deadline re-arms it at once. A busy keep-alive
//! connection so skips a timer-wheel insert and removal (and the clock reads and lock they
//! take) per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where a fresh timer is armed: far enough that it never fires for a real deadline first.
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// One connection's timer; see the module docs.
#[derive(Debug)]
pub struct ConnTimer {
    sleep: Pin<Box<Sleep>>,
    /// The instant `sleep` is armed for.
    armed: Instant,
}

impl ConnTimer {
    /// A timer armed for nothing yet (it registers with the runtime when first awaited).
    pub fn new() -> Self {
        let armed = Instant::now() + FAR;
        ConnTimer {
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }

    /// Resolves at `deadline`; never without one.
    pub fn until(&mut self, deadline: Option<Instant>) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            if deadline < self.armed {
                self.arm(deadline);
            }
            loop {
                ready!(self.sleep.as_mut().poll(cx));
                if self.armed >= deadline {
                    return Poll::Ready(());
                }
                // Fired for an older, earlier deadline: sleep on to this one.
                self.arm(deadline);
            }
        })
    }

    /// Runs `fut` until `deadline`; `None` when the deadline came first.
    pub async fn run<F: Future>(&mut self, deadline: Option<Instant>, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            () = self.until(deadline) => None,
        }
    }

    fn arm(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.armed = deadline;
    }
}

impl Default for ConnTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_each_deadline_whether_it_moves_later_or_earlier() {
        let mut timer = ConnTimer::new();
        let start = Instant::now();
        timer.until(Some(start + ms(100))).await;
        assert_eq!(start.elapsed(), ms(100));
        // Later: the timer was left armed for the old deadline and is re-armed when it fires.
        let later = Instant::now() + ms(500);
        timer.until(Some(later)).await;
        assert_eq!(Instant::now(), later);
        // Moved later without firing, then waited for: fires at the latest deadline only.
        let first = Instant::now() + ms(50);
        assert!(timer.run(Some(first), async {}).await.is_some());
        let second = first + ms(200);
        timer.until(Some(second)).await;
        assert_eq!(Instant::now(), second);
        // Earlier than what is armed: re-armed at once.
        let far = Instant::now() + ms(10_000);
        assert!(timer.run(Some(far), async {}).await.is_some());
        let near = Instant::now() + ms(20);
        timer.until(Some(near)).await;
        assert_eq!(Instant::now(), near);
    }

    #[tokio::test(start_paused = true)]
    async fn run_gives_the_output_or_none_at_the_deadline() {
        let mut timer = ConnTimer::new();
        let deadline = Instant::now() + ms(100);
        let slow = tokio::time::sleep(ms(200));
        assert_eq!(timer.run(Some(deadline), slow).await, None);
        assert_eq!(Instant::now(), deadline);
        let quick = async {
            tokio::time::sleep(ms(10)).await;
            7
        };
        let deadline = Instant::now() + ms(100);
        assert_eq!(timer.run(Some(deadline), quick).await, Some(7));
        // No deadline: waits as long as it takes.
        let long = async {
            tokio::time::sleep(ms(FAR.as_millis() as u64 / 2)).await;
            8
        };
        assert_eq!(timer.run(None, long).await, Some(8));
    }
}
