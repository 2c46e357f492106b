//! A request body that fails when the client stalls: the reader waits for more and the client
//! sends nothing for the read timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;

/// The error a [`ReadTimeoutBody`] fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

/// The error a [`ReadTimeoutBody`] fails with when the body arrives slower than its
/// [`MinBodyRate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client sent the request body slower than {0} bytes/s")]
pub struct BodyTooSlow(pub u64);

/// The least average rate a request body must arrive at, counted over the time its reader
/// waited for it (time nobody reads does not count), once `grace` of such waiting passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinBodyRate {
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// Waiting time before the rate is enforced.
    pub grace: Duration,
}

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyReadTimeout`] once its reader has waited `timeout` for the
    /// next piece. The timer runs only while the reader waits (a body nobody reads, say one
    /// queued behind a concurrency limit, never times out) and restarts with each piece.
    /// After failing it keeps failing.
    pub struct ReadTimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Option<Duration>,
        min_rate: Option<MinBodyRate>,
        // Body bytes received so far, and the time the reader spent waiting for them.
        received: u64,
        waited: Duration,
        wait_started: Option<Instant>,
        // Armed while the reader waits; reset, not reallocated, for each wait.
        sleep: Option<Pin<Box<Sleep>>>,
        armed: bool,
        failed: bool,
        fired: watch::Sender<bool>,
    }
}

impl<B> ReadTimeoutBody<B> {
    /// Wraps `inner`; `None` never times out.
    pub fn new(inner: B, timeout: Option<Duration>) -> Self {
        Self::with_min_rate(inner, timeout, None)
    }

    /// Wraps `inner`, failing also when it arrives slower than `min_rate` (only with a
    /// `timeout`).
    pub fn with_min_rate(
        inner: B,
        timeout: Option<Duration>,
        min_rate: Option<MinBodyRate>,
    ) -> Self {
        ReadTimeoutBody {
            inner,
            timeout,
            min_rate: min_rate.filter(|r| r.bytes_per_second > 0),
            received: 0,
            waited: Duration::ZERO,
            wait_started: None,
            sleep: None,
            armed: false,
            failed: false,
            fired: watch::channel(false).0,
        }
    }

    /// The wrapped body, without the timer.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Becomes true when the body times out; closes (without becoming true) when the body is
    /// dropped.
    pub(crate) fn timed_out(&self) -> watch::Receiver<bool> {
        self.fired.subscribe()
    }
}

impl<B> HttpBody for ReadTimeoutBody<B>
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
        let Some(timeout) = *this.timeout else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        let fail = |min_rate: &Option<MinBodyRate>, received: u64, waited: Duration| -> BoxError {
            match min_rate {
                Some(rate) if waited >= rate.grace && received < needed(rate, waited) => {
                    BodyTooSlow(rate.bytes_per_second).into()
                }
                _ => BodyReadTimeout(timeout).into(),
            }
        };
        if *this.failed {
            return Poll::Ready(Some(Err(fail(this.min_rate, *this.received, *this.waited))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(started) = this.wait_started.take() {
                    *this.waited += started.elapsed();
                }
                *this.armed = false;
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    *this.received += data.remaining() as u64;
                }
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let now = Instant::now();
        let mut deadline = now + timeout;
        if let Some(rate) = this.min_rate {
            // The waiting time at which what arrived so far falls under the rate.
            let per_byte = Duration::from_secs(1).as_nanos() / u128::from(rate.bytes_per_second);
            let earned = Duration::from_nanos(
                u64::try_from(per_byte * u128::from(*this.received)).unwrap_or(u64::MAX),
            );
            let left = earned.max(rate.grace).saturating_sub(*this.waited);
            deadline = deadline.min(now + left);
        }
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.armed {
            sleep.as_mut().reset(deadline);
            *this.armed = true;
            *this.wait_started = Some(now);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            if let Some(started) = this.wait_started.take() {
                *this.waited += started.elapsed();
            }
            *this.failed = true;
            this.fired.send_replace(true);
            return Poll::Ready(Some(Err(fail(this.min_rate, *this.received, *this.waited))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The bytes `rate` asks for after `waited`.
fn needed(rate: &MinBodyRate, waited: Duration) -> u64 {
    u64::try_from(u128::from(rate.bytes_per_second) * waited.as_millis() / 1000).unwrap_or(u64::MAX)
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

    #[tokio::test(start_paused = true)]
    async fn a_stalled_sender_fails_the_body_after_the_timeout_since_its_last_piece() {
        let (tx, inner) = channel_body();
        let mut body = Box::pin(ReadTimeoutBody::new(inner, Some(ms(300))));
        let fired = body.timed_out();
        for _ in 0..4 {
            tokio::time::sleep(ms(250)).await;
            tx.send(Bytes::from("x")).await.unwrap();
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "x");
        }
        let waiting = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(Instant::now() - waiting, ms(300));
        assert!(err.downcast_ref::<BodyReadTimeout>().is_some(), "{err}");
        assert!(*fired.borrow());
        // It keeps failing even if the client wakes up.
        tx.send(Bytes::from("late")).await.unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert!(!body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_min_rate_fails_after_the_grace() {
        let (tx, inner) = channel_body();
        let rate = MinBodyRate {
            bytes_per_second: 100,
            grace: ms(1000),
        };
        let mut body = Box::pin(ReadTimeoutBody::with_min_rate(
            inner,
            Some(ms(300)),
            Some(rate),
        ));
        let fired = body.timed_out();
        let started = Instant::now();
        // 10 bytes every 200 ms: 50 bytes/s, each piece well within the read timeout.
        let failed = loop {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ms(200)).await;
                let _ = tx.send(Bytes::from_static(b"0123456789")).await;
            });
            match body.frame().await.unwrap() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(failed.downcast_ref::<BodyTooSlow>().is_some(), "{failed}");
        assert!(*fired.borrow());
        let took = Instant::now() - started;
        assert!(took >= ms(1000) && took <= ms(1300), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_min_rate_passes() {
        let (tx, inner) = channel_body();
        let rate = MinBodyRate {
            bytes_per_second: 100,
            grace: ms(500),
        };
        let mut body = Box::pin(ReadTimeoutBody::with_min_rate(
            inner,
            Some(ms(300)),
            Some(rate),
        ));
        for _ in 0..20 {
            tokio::time::sleep(ms(100)).await;
            tx.send(Bytes::from_static(b"0123456789012345"))
                .await
                .unwrap();
            assert!(body.frame().await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_nobody_reads_does_not_count() {
        let (tx, inner) = channel_body();
        let mut body = Box::pin(ReadTimeoutBody::new(inner, Some(ms(300))));
        tx.send(Bytes::from("a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The reader is busy elsewhere for far longer than the timeout.
        tokio::time::sleep(ms(5000)).await;
        tx.send(Bytes::from("b")).await.unwrap();
        drop(tx);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn no_timeout_waits_forever_and_drop_closes_the_signal() {
        let (tx, inner) = channel_body();
        let mut body = Box::pin(ReadTimeoutBody::new(inner, None));
        let mut fired = body.timed_out();
        let waited = tokio::time::timeout(ms(60_000), body.frame()).await;
        assert!(waited.is_err(), "a body without timeout must not fail");
        drop(tx);
        drop(body);
        assert!(fired.wait_for(|f| *f).await.is_err());
    }
}
