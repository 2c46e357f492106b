//! A request's timeouts (a revision's Knative `timeoutSeconds`, `responseStartTimeoutSeconds`,
//! `idleTimeoutSeconds`), all counted from the request's arrival, so time spent queued counts.
//!
//! Before the app's response head arrives, any of them expiring answers 504 "request timeout".
//! Once the head went out, the total and idle timers cut the body off: the client keeps the
//! status it already has and sees a truncated body; nothing is rewritten.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::{Body, BoxError, text_response};

/// The body of the 504 a timed-out request gets when nothing was sent yet.
pub const TIMEOUT_BODY: &str = "request timeout";

/// Why a response body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimeout {
    /// The request ran longer than the revision's `timeoutSeconds`.
    #[error("request exceeded its total timeout")]
    Total,
    /// The app wrote nothing for the revision's `idleTimeoutSeconds`.
    #[error("the app wrote nothing for the idle timeout")]
    Idle,
}

/// One request's timers.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    total: Option<Instant>,
    response_start: Option<Instant>,
    idle: Option<Duration>,
    arrival: Instant,
}

// Small and called per request from the hops' crates: `#[inline]` keeps them inlinable there
// as they were when the engine and the queue-proxy were one crate.
impl Deadlines {
    /// The timers of a request that arrived at `arrival`, each limit counted from then (the
    /// idle limit from the last byte, once the body streams).
    #[inline]
    pub fn new(
        arrival: Instant,
        total: Option<Duration>,
        response_start: Option<Duration>,
        idle: Option<Duration>,
    ) -> Self {
        Deadlines {
            total: total.map(|d| arrival + d),
            response_start: response_start.map(|d| arrival + d),
            idle,
            arrival,
        }
    }

    /// When the request times out if the response head has not arrived by then.
    #[inline]
    pub fn head(&self) -> Option<Instant> {
        [
            self.total,
            self.response_start,
            self.idle.map(|d| self.arrival + d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Wraps a response body that starts streaming now in the total and idle timers.
    #[inline]
    pub fn body<B>(&self, body: B) -> TimedBody<B> {
        TimedBody {
            inner: body,
            total: self.total,
            idle: self.idle,
            last: if self.idle.is_some() {
                Instant::now()
            } else {
                self.arrival
            },
            timer: None,
        }
    }

    /// When the whole request must be over.
    #[inline]
    pub fn total(&self) -> Option<Instant> {
        self.total
    }

    /// The longest the app may stay silent while its body streams.
    #[inline]
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// Whether any timer that applies to a streaming body is set.
    #[inline]
    pub fn limits_body(&self) -> bool {
        self.total.is_some() || self.idle.is_some()
    }
}

/// Runs `fut` until `deadline`; `None` when the deadline came first.
pub async fn until<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The 504 for a request that timed out before anything was sent.
pub fn timeout_response() -> Response<Body> {
    text_response(StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY)
}

pin_project_lite::pin_project! {
    /// A response body cut off (it fails, so the server aborts the response) when the
    /// request's total time is up or the app stays silent for the idle timeout.
    ///
    /// A body that is ready whenever asked (a small one that came with the head) never makes
    /// a timer. Otherwise one timer, made at the first wait, stands for both limits: a frame
    /// only notes the time, and the timer, armed for an older deadline, catches up when it
    /// fires (no timer-wheel work per frame).
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        total: Option<Instant>,
        idle: Option<Duration>,
        // When the body last moved (or started), for the idle limit.
        last: Instant,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // Checked first so a body that is always ready cannot outrun the total.
        if this.total.is_some_and(|t| t <= Instant::now()) {
            return Poll::Ready(Some(Err(BodyTimeout::Total.into())));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.idle.is_some() {
                    *this.last = Instant::now();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let idle_at = this.idle.map(|d| *this.last + d);
        let Some(due) = [*this.total, idle_at].into_iter().flatten().min() else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if due < timer.deadline() {
            timer.as_mut().reset(due);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: at a limit, or early, for a deadline that has moved on since.
            let now = Instant::now();
            if this.total.is_some_and(|t| t <= now) {
                return Poll::Ready(Some(Err(BodyTimeout::Total.into())));
            }
            if idle_at.is_some_and(|i| i <= now) {
                return Poll::Ready(Some(Err(BodyTimeout::Idle.into())));
            }
            timer.as_mut().reset(due);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    fn channel_body() -> (
        mpsc::Sender<Bytes>,
        impl HttpBody<Data = Bytes, Error = Infallible>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let s = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        });
        (tx, StreamBody::new(s))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn next<B: HttpBody<Data = Bytes, Error = BoxError> + Unpin>(
        b: &mut B,
    ) -> Result<Option<Bytes>, String> {
        match b.frame().await {
            None => Ok(None),
            Some(Ok(f)) => Ok(f.into_data().ok()),
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn head_deadline_is_the_earliest_timer() {
        let t0 = Instant::now();
        let d = Deadlines::new(t0, Some(ms(300)), Some(ms(200)), Some(ms(100)));
        assert_eq!(d.head(), Some(t0 + ms(100)));
        let d = Deadlines::new(t0, Some(ms(300)), None, None);
        assert_eq!(d.head(), Some(t0 + ms(300)));
        assert_eq!(Deadlines::new(t0, None, None, None).head(), None);
        assert!(!Deadlines::new(t0, None, Some(ms(1)), None).limits_body());
    }

    #[tokio::test(start_paused = true)]
    async fn total_cuts_a_slow_body() {
        let (tx, inner) = channel_body();
        let d = Deadlines::new(Instant::now(), Some(ms(1000)), None, None);
        let mut body = Box::pin(d.body(inner));
        tx.send(Bytes::from("a")).await.unwrap();
        assert_eq!(next(&mut body).await, Ok(Some(Bytes::from("a"))));
        tokio::time::sleep(ms(900)).await;
        tx.send(Bytes::from("b")).await.unwrap();
        assert_eq!(next(&mut body).await, Ok(Some(Bytes::from("b"))));
        let err = next(&mut body).await.unwrap_err();
        assert!(err.contains("total timeout"), "{err}");
        assert_eq!(Instant::now() - d.arrival, ms(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_always_ready_is_still_cut_at_the_total() {
        let d = Deadlines::new(Instant::now(), Some(ms(100)), None, None);
        tokio::time::sleep(ms(100)).await;
        let mut body = Box::pin(d.body(http_body_util::Full::new(Bytes::from("late"))));
        assert!(next(&mut body).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_resets_on_each_chunk() {
        let (tx, inner) = channel_body();
        let d = Deadlines::new(Instant::now(), None, None, Some(ms(300)));
        let mut body = Box::pin(d.body(inner));
        for _ in 0..5 {
            tokio::time::sleep(ms(250)).await;
            tx.send(Bytes::from("x")).await.unwrap();
            assert_eq!(next(&mut body).await, Ok(Some(Bytes::from("x"))));
        }
        let started = Instant::now();
        let err = next(&mut body).await.unwrap_err();
        assert!(err.contains("idle"), "{err}");
        assert_eq!(Instant::now() - started, ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_catches_up_with_its_moving_deadlines() {
        // Polled while it waits (so its one timer is armed, and fires early, each time a chunk
        // moved the idle deadline on), the idle limit still counts from the last chunk, and
        // the total from the arrival.
        let (tx, inner) = channel_body();
        let d = Deadlines::new(Instant::now(), Some(ms(2000)), None, Some(ms(300)));
        let mut body = Box::pin(d.body(inner));
        let sender = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(ms(250)).await;
                tx.send(Bytes::from("x")).await.unwrap();
            }
            tokio::time::sleep(ms(10_000)).await;
            drop(tx);
        });
        for _ in 0..4 {
            assert_eq!(next(&mut body).await, Ok(Some(Bytes::from("x"))));
        }
        let last = Instant::now();
        let err = next(&mut body).await.unwrap_err();
        assert!(err.contains("idle"), "{err}");
        assert_eq!(Instant::now() - last, ms(300));
        sender.abort();

        // The total comes first when the chunks keep the idle limit away.
        let (tx, inner) = channel_body();
        let d = Deadlines::new(Instant::now(), Some(ms(700)), None, Some(ms(300)));
        let mut body = Box::pin(d.body(inner));
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(ms(200)).await;
                if tx.send(Bytes::from("y")).await.is_err() {
                    return;
                }
            }
        });
        let err = loop {
            match next(&mut body).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended"),
                Err(e) => break e,
            }
        };
        assert!(err.contains("total"), "{err}");
        assert_eq!(Instant::now() - d.arrival, ms(700));
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_ends_normally() {
        let (tx, inner) = channel_body();
        let d = Deadlines::new(Instant::now(), Some(ms(500)), None, Some(ms(200)));
        let mut body = Box::pin(d.body(inner));
        tx.send(Bytes::from("all")).await.unwrap();
        drop(tx);
        assert_eq!(next(&mut body).await, Ok(Some(Bytes::from("all"))));
        assert_eq!(next(&mut body).await, Ok(None));
    }
}
