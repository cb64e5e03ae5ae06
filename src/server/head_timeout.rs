//! `server.header_read_timeout` on the proxy listener, kept by one timer per connection.
//!
//! hyper's own header timeout arms a timer for every request head, and makes the connection read
//! its socket once more after every response so that the timer starts at once. On the replay path,
//! where a whole request costs about 15 us of CPU, that was 8-14% of the throughput
//! (docs/performance.md). Here the request path only notes when the connection starts to wait for
//! a head (its last response written) and when it stops (a head arrived); one timer per connection
//! wakes when the head could be late at the earliest, and closes the connection if it is.
//!
//! The rule is hyper's: from the moment a connection is accepted, or has written the last bytes of
//! a response, the next request head must arrive in full within the timeout. It covers a head
//! trickled in a byte at a time and a keep-alive connection left idle alike.

use hyper::body::{Body, Frame, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// `waiting_since` while a request is being served: no head is awaited.
const SERVING: u64 = u64::MAX;
/// `waiting_since` while an answer's bytes wait for the client to read: nor then.
const SENDING: u64 = u64::MAX - 1;

/// When one connection began to wait for a request head, in nanoseconds since `origin`.
///
/// The connection's socket, its service and its timer share it; they all run in the connection's
/// one task, so relaxed atomics are only there to make it `Sync`.
pub struct HeadClock {
    origin: Instant,
    waiting_since: AtomicU64,
}

impl HeadClock {
    /// A connection accepted now: its first head is awaited from now.
    pub fn start() -> Arc<HeadClock> {
        Arc::new(HeadClock { origin: Instant::now(), waiting_since: AtomicU64::new(0) })
    }

    /// A head has arrived: nothing is awaited until the answer is written.
    pub fn serving(&self) {
        self.waiting_since.store(SERVING, Ordering::Relaxed);
    }

    /// The answer's body is done (hyper drops it once its last frame is taken, or at once if it
    /// has none): the wait for the next head starts now. Its last bytes may still be in hyper's
    /// buffer, a few microseconds from the socket; an answer that the client is slow to take
    /// stops the wait again (see [`HeadClock::wrote`]).
    fn answered(&self) {
        if self.waiting_since.load(Ordering::Relaxed) != SENDING {
            self.waiting_since.store(self.elapsed_ns(), Ordering::Relaxed);
        }
    }

    /// After a write: a write that could not go out means the answer is still being sent, and,
    /// as with hyper's own timeout, a client that reads its answer slowly is not cut; the write
    /// that goes out after it starts the wait.
    fn wrote(&self, written: &Poll<std::io::Result<usize>>) {
        match written {
            Poll::Pending => self.waiting_since.store(SENDING, Ordering::Relaxed),
            Poll::Ready(Ok(n)) if *n > 0 && self.waiting_since.load(Ordering::Relaxed) == SENDING => {
                self.waiting_since.store(self.elapsed_ns(), Ordering::Relaxed);
            }
            Poll::Ready(_) => {}
        }
    }

    fn elapsed_ns(&self) -> u64 {
        // 584 years of connection before this saturates.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(SENDING - 1)
    }

    /// When the awaited head is late, or `None` while a request is being served.
    fn due(&self, timeout: Duration) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            SERVING | SENDING => None,
            since => Some(self.origin + Duration::from_nanos(since) + timeout),
        }
    }
}

/// Resolves once the connection has waited longer than `timeout` for a request head.
pub async fn head_late(clock: &HeadClock, timeout: Duration) {
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    loop {
        timer.as_mut().await;
        let now = Instant::now();
        let next = match clock.due(timeout) {
            Some(due) if due <= now => return,
            Some(due) => due,
            // A request is in progress or its answer going out; the wait starts after it.
            None => now + timeout,
        };
        timer.as_mut().reset(next.into());
    }
}

/// An answer's body, telling the connection's [`HeadClock`] when it is done: until then, however
/// long the app takes between two chunks of a streamed answer, no head is awaited.
pub struct AnswerBody<B> {
    inner: B,
    clock: Arc<HeadClock>,
}

impl<B> AnswerBody<B> {
    pub fn new(inner: B, clock: Arc<HeadClock>) -> AnswerBody<B> {
        AnswerBody { inner, clock }
    }
}

impl<B> Drop for AnswerBody<B> {
    fn drop(&mut self) {
        self.clock.answered();
    }
}

impl<B: Body + Unpin> Body for AnswerBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, noting in the connection's [`HeadClock`] when an answer's bytes
/// cannot go out (a slow reader) and when they go out again.
pub struct Watched<T> {
    inner: T,
    clock: Arc<HeadClock>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, clock: Arc<HeadClock>) -> Watched<T> {
        Watched { inner, clock }
    }
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.clock.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.clock.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
