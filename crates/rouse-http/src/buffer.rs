//! Receiving a request body whole before the request takes anything scarce (a concurrency
//! slot, an app connection): a slow uploader then holds only its own bytes, as behind nginx.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{Body, BoxError, boxed};
use super::read_timeout::{BodyReadTimeout, BodyTooSlow};

/// The default most a request body is buffered before its request goes on: 1 MiB.
pub const DEFAULT_REQUEST_BODY_BUFFER: u64 = 1024 * 1024;

/// Why a body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum BodyRefused {
    /// The client stalled or sent too slowly (408).
    #[error("{0}")]
    TooSlow(BoxError),
    /// The body broke its framing (a bad chunk size, say) or the client left (400).
    #[error("malformed request body: {0}")]
    Malformed(BoxError),
}

impl BodyRefused {
    fn from_error(e: BoxError) -> Self {
        if e.downcast_ref::<BodyReadTimeout>().is_some()
            || e.downcast_ref::<BodyTooSlow>().is_some()
        {
            BodyRefused::TooSlow(e)
        } else {
            BodyRefused::Malformed(e)
        }
    }
}

/// Receives `body` whole when it is at most `limit` bytes (`0`: never), and returns it in
/// memory; a larger one comes back as what arrived so far followed by the rest as it comes.
/// A body already complete, or one that says it is larger than `limit`, is returned as is.
/// Nothing is copied: the pieces are kept as they arrived.
pub async fn buffer_body(mut body: Body, limit: u64) -> Result<Body, BodyRefused> {
    if limit == 0 || body.is_end_stream() || body.size_hint().lower() > limit {
        return Ok(body);
    }
    let mut frames = VecDeque::new();
    let mut received = 0u64;
    loop {
        match body.frame().await {
            None => return Ok(boxed(Frames::new(frames, None))),
            Some(Err(e)) => return Err(BodyRefused::from_error(e)),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                }
                frames.push_back(frame);
                if received > limit {
                    return Ok(boxed(Frames::new(frames, Some(body))));
                }
            }
        }
    }
}

/// Frames already received, then (if any) the rest of the body.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl Frames {
    fn new(frames: VecDeque<Frame<Bytes>>, rest: Option<Body>) -> Self {
        Frames { frames, rest }
    }
}

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let h = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower() + buffered);
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::full;

    #[tokio::test]
    async fn small_bodies_come_whole_large_ones_stream_on() {
        let body = buffer_body(full("hello"), 10).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let body = buffer_body(full("hello world!"), 10).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world!");
    }
}
