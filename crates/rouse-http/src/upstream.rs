//! The raw upstream side every hop shares: keep-alive HTTP/1.1 connections to one upstream,
//! pooled, and the exchange of a request's bytes for a response head parsed in place. The
//! front's fast path ([`crate::fast`]) and the general path's bodiless requests
//! ([`crate::raw`]) both go through it.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle upstream connections kept per upstream.
const MAX_IDLE: usize = 256;
/// The read buffer of an upstream connection.
pub(crate) const UPSTREAM_BUF: usize = 8 * 1024;

/// Raw keep-alive connections to one upstream (an app, or a hop in another process).
#[derive(Debug)]
pub struct UpstreamPool {
    pub(crate) addr: SocketAddr,
    idle: Mutex<Vec<Upstream>>,
}

#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    pub(crate) buf: Vec<u8>,
}

impl UpstreamPool {
    /// Connections to `addr`, opened as needed.
    pub fn new(addr: SocketAddr) -> Self {
        UpstreamPool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that has not been closed by the app, if any.
    pub(crate) fn checkout(&self) -> Option<Upstream> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            if still_open(&conn.stream) {
                return Some(conn);
            }
        }
    }

    pub(crate) fn checkin(&self, mut conn: Upstream) {
        conn.buf.clear();
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
    }

    /// Frees the read buffers of the idle connections (they stay open): a connection takes one
    /// again when its next answer comes, as a new one does. For a server gone idle after a
    /// burst, whose pool would otherwise hold a buffer per connection the burst opened.
    pub fn release_idle_buffers(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            for conn in idle.iter_mut() {
                conn.buf = Vec::new();
            }
        }
    }

    pub(crate) async fn connect(&self) -> io::Result<Upstream> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            stream,
            buf: Vec::new(),
        })
    }
}

/// One step of parsing what an app answered.
pub(crate) enum HeadStep<T> {
    /// The final response head.
    Final(T),
    /// An interim (1xx) response of this many bytes, to skip.
    Interim(usize),
    /// More bytes are needed.
    Partial,
}

/// Why no response head came back.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The connection broke before any response byte: the app may not have seen the request.
    Unanswered(io::Error),
    /// Anything else before the head was complete.
    Bad(String),
}

/// The most a response head may take.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

impl Upstream {
    /// Sends `request`, then reads until `parse` finds the final response head, skipping
    /// interim ones. Returns what `parse` made of it and how many bytes of interim responses
    /// precede it; the head and any body bytes that came with it stay in the buffer.
    pub(crate) async fn exchange<T>(
        &mut self,
        request: &[u8],
        mut parse: impl FnMut(&[u8]) -> Result<HeadStep<T>, String>,
    ) -> Result<(T, usize), HeadError> {
        self.stream
            .write_all(request)
            .await
            .map_err(HeadError::Unanswered)?;
        self.buf.clear();
        let mut skip = 0;
        loop {
            if self.buf.len() > skip {
                match parse(&self.buf[skip..]).map_err(HeadError::Bad)? {
                    HeadStep::Final(head) => return Ok((head, skip)),
                    HeadStep::Interim(n) => {
                        skip += n;
                        continue;
                    }
                    HeadStep::Partial => {}
                }
            }
            if self.buf.len() >= MAX_RESPONSE_HEAD {
                return Err(HeadError::Bad("response head too large".into()));
            }
            if self.buf.capacity() == 0 {
                // A new connection takes room for the answer only once it comes: one that
                // waits (a request held for a revision to wake) holds no buffer.
                if let Err(e) = self.stream.readable().await {
                    return Err(HeadError::Unanswered(e));
                }
            }
            self.buf.reserve(UPSTREAM_BUF);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => {
                    return Err(HeadError::Unanswered(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(0) => return Err(HeadError::Bad("connection closed mid-head".into())),
                Ok(_) => {}
                Err(e) if self.buf.is_empty() => return Err(HeadError::Unanswered(e)),
                Err(e) => return Err(HeadError::Bad(e.to_string())),
            }
        }
    }
}

/// Whether an idle connection is still usable: nothing readable (the app would only send a
/// close or garbage), checked without a system call when the poller saw nothing.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
