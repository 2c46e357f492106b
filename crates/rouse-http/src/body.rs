//! The one body type every hop speaks, and a wrapper that holds a guard while a body streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed HTTP body of any origin (an incoming request, an upstream response, a fixed text).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into [`Body`], streaming (nothing is buffered).
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A plain-text response the platform itself answers (errors, probes).
pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pin_project_lite::pin_project! {
    /// A body that keeps `guard` alive until the body is dropped, so whatever the guard counts
    /// (in-flight requests, say) lasts as long as the response streams, not just until its
    /// headers are sent. A client hanging up drops the body and so releases the guard.
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> GuardedBody<B, G> {
    /// Wraps `inner`, holding `guard` until this body is dropped.
    pub fn new(inner: B, guard: G) -> Self {
        GuardedBody { inner, guard }
    }
}

impl<B: HttpBody, G> HttpBody for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
